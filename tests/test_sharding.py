"""Meshes from config, and the same step on 8 simulated devices under different meshes.

Run in a subprocess so that the 8-device XLA flag never leaks into (or depends on) other tests.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import pytest

from spt_jax.model import sharding

# (data, fsdp, tensor, microbatches): gradient accumulation must not change the step either.
_MESHES = [(1, 1, 1, 1), (8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1), (2, 4, 1, 2), (1, 1, 1, 4)]

_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np, optax, ml_collections
    from spt_jax.train import config as config_lib
    from spt_jax.model import sharding
    from spt_jax.train import step as train
    config = config_lib.base_config('cpu-160k')
    config.model.d_model, config.model.n_heads = 128, 4  # Divisible by every mesh axis below.
    batch = np.random.RandomState(0).randint(0, config.model.vocab_size, (16, 33)).astype(np.int32)
    results = []
    for data, fsdp, tensor, microbatches in json.loads(sys.argv[1]):
      mesh_cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
      mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:data * fsdp * tensor])
      schedule = optax.constant_schedule(1e-3)
      trainer = train.Trainer(config.model, mesh, train.make_optimizer(config, schedule), schedule,
                              microbatches=microbatches)
      state = trainer.init_state(seed=0)
      shards = {k: len(v['kernel'].addressable_shards[0].data.flatten()) / v['kernel'].size
                for k, v in state.params['blocks'].items()}
      state, metrics = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
      state, metrics2 = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
      results.append(dict(mesh=[data, fsdp, tensor, microbatches], loss=float(metrics['loss']),
                          grad_norm=float(metrics['grad_norm']), loss2=float(metrics2['loss']),
                          shard_fraction=min(shards.values()),
                          spec=str(state.params['blocks']['q']['kernel'].sharding.spec)))
    print(json.dumps(results))
''')


def test_same_loss_and_grad_norm_on_every_mesh_and_with_microbatches():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _SCRIPT, json.dumps(_MESHES)], env=env, capture_output=True,
                       text=True, check=True)
  results = json.loads(out.stdout.strip().splitlines()[-1])
  reference = results[0]
  for r in results[1:]:
    for key in ('loss', 'grad_norm', 'loss2'):
      assert r[key] == pytest.approx(reference[key], rel=1e-5), (r['mesh'], key)
  by_mesh = {tuple(r['mesh'][:3]): r for r in results if r['mesh'][3] == 1}
  # Parameters are really sharded: each device holds a quarter (fsdp=4) or an eighth (fsdp=2 x tensor=2)... of q.
  assert by_mesh[(2, 4, 1)]['shard_fraction'] == pytest.approx(1 / 4)
  assert by_mesh[(2, 2, 2)]['shard_fraction'] == pytest.approx(1 / 4)
  assert 'fsdp' in by_mesh[(2, 4, 1)]['spec'] and 'tensor' in by_mesh[(2, 2, 2)]['spec']
  assert by_mesh[(8, 1, 1)]['shard_fraction'] == 1.0  # Pure data parallelism replicates parameters.


def test_mesh_shape_fills_minus_one():
  cfg = ml_collections.ConfigDict(dict(data=2, fsdp=-1, tensor=2))
  assert sharding.mesh_shape(cfg, 16) == (2, 4, 2)


@pytest.mark.parametrize('data, fsdp, tensor, message', [
    (3, -1, 1, 'does not divide'),
    (2, 2, 1, 'devices but'),
    (-1, -1, 1, 'at most one -1'),
])
def test_bad_mesh_is_a_one_line_error(data, fsdp, tensor, message):
  cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  with pytest.raises(ValueError, match=message) as error:
    sharding.mesh_shape(cfg, 8)
  assert '\n' not in str(error.value)


def test_undividable_dimension_stays_unsharded():
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  assert sharding.spec(('embed', 'mlp'), (6, 10), mesh) == jax.sharding.PartitionSpec(None, None)
