"""Meshes from config, the specs the logical rules give every preset, and the same step under different meshes.

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
from spt_jax.model.flops import PRESETS

# (data, fsdp, tensor, microbatches): gradient accumulation must not change the step either.
_MESHES = [(1, 1, 1, 1), (8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1), (2, 4, 1, 2)]

_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
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
""")


def test_same_loss_and_grad_norm_on_every_mesh_and_with_microbatches():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, '-c', _SCRIPT, json.dumps(_MESHES)], env=env, capture_output=True, text=True, check=True
  )
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


@pytest.mark.parametrize(
  'data, fsdp, tensor, message',
  [
    (3, -1, 1, 'does not divide'),
    (2, 2, 1, 'devices but'),
    (-1, -1, 1, 'at most one -1'),
  ],
)
def test_bad_mesh_is_a_one_line_error(data, fsdp, tensor, message):
  cfg = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  with pytest.raises(ValueError, match=message) as error:
    sharding.mesh_shape(cfg, 8)
  assert '\n' not in str(error.value)


def test_undividable_dimension_stays_unsharded():
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  assert sharding.spec(('embed', 'mlp'), (6, 10), mesh) == jax.sharding.PartitionSpec(None, None)


_SPECS_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    import jax, ml_collections
    from spt_jax.model import decoder, sharding
    from spt_jax.model.flops import PRESETS
    results = {}
    for data, fsdp, tensor in json.loads(sys.argv[1]):
      mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)))
      for preset in PRESETS:
        model_cfg = dataclasses.replace(decoder.preset_config(preset), tie_embeddings=False)  # The head too.
        shardings = sharding.tree_shardings(decoder.abstract_params(model_cfg), mesh)
        results[f'{preset} {data} {fsdp} {tensor}'] = {
            jax.tree_util.keystr(path, simple=True, separator='/'): list(s.spec)
            for path, s in jax.tree_util.tree_leaves_with_path(shardings)}
      # Activations of a batch of 2: data divides it, data x fsdp does not.
      results[f'activations {data} {fsdp} {tensor}'] = list(sharding.spec(
          ('activation_batch', 'activation_length', 'activation_embed'), (2, 8, 64), mesh))
    print(json.dumps(results))
""")

# What each kernel's spec is on each 8-device mesh when every mesh axis divides its dimension ([..] is a tuple).
_FULL_SPECS = {
  (1, 8, 1): {
    'embed/embedding': [None, 'fsdp'],
    'lm_head/kernel': ['fsdp', None],
    'blocks/q/kernel': [None, 'fsdp', None, None],
    'blocks/o/kernel': [None, None, None, 'fsdp'],
    'blocks/gate/kernel': [None, 'fsdp', None],
    'blocks/down/kernel': [None, None, 'fsdp'],
  },
  (2, 2, 2): {
    'embed/embedding': ['tensor', 'fsdp'],
    'lm_head/kernel': ['fsdp', 'tensor'],
    'blocks/q/kernel': [None, 'fsdp', 'tensor', None],
    'blocks/o/kernel': [None, 'tensor', None, 'fsdp'],
    'blocks/gate/kernel': [None, 'fsdp', 'tensor'],
    'blocks/down/kernel': [None, 'tensor', 'fsdp'],
  },
  (1, 2, 4): {
    'embed/embedding': ['tensor', 'fsdp'],
    'lm_head/kernel': ['fsdp', 'tensor'],
    'blocks/q/kernel': [None, 'fsdp', 'tensor', None],
    'blocks/o/kernel': [None, 'tensor', None, 'fsdp'],
    'blocks/gate/kernel': [None, 'fsdp', 'tensor'],
    'blocks/down/kernel': [None, 'tensor', 'fsdp'],
  },
  (8, 1, 1): {
    'embed/embedding': [None, None],
    'lm_head/kernel': [None, None],
    'blocks/q/kernel': [None, None, None, None],
    'blocks/o/kernel': [None, None, None, None],
    'blocks/gate/kernel': [None, None, None],
    'blocks/down/kernel': [None, None, None],
  },
}
# olmo-600m has 15 heads, olmo-300m 10, cpu-40k and cpu-25k 2: a tensor axis that does not divide them leaves the
# heads whole.
_HEADS_WHOLE = {
  ('olmo-600m', 2): {'blocks/q/kernel': [None, 'fsdp', None, None], 'blocks/o/kernel': [None, None, None, 'fsdp']},
  ('olmo-600m', 4): {'blocks/q/kernel': [None, 'fsdp', None, None], 'blocks/o/kernel': [None, None, None, 'fsdp']},
  ('olmo-300m', 4): {'blocks/q/kernel': [None, 'fsdp', None, None], 'blocks/o/kernel': [None, None, None, 'fsdp']},
  ('cpu-40k', 4): {'blocks/q/kernel': [None, 'fsdp', None, None], 'blocks/o/kernel': [None, None, None, 'fsdp']},
  ('cpu-25k', 4): {'blocks/q/kernel': [None, 'fsdp', None, None], 'blocks/o/kernel': [None, None, None, 'fsdp']},
}
_ACTIVATION_SPECS = {
  (1, 8, 1): [None, None, None],
  (2, 2, 2): ['data', None, None],
  (1, 2, 4): ['fsdp', None, None],
  (8, 1, 1): [None, None, None],
}


def test_flax_rules_give_the_expected_spec_of_every_preset_on_8_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  out = subprocess.run(
    [sys.executable, '-c', _SPECS_SCRIPT, json.dumps(list(_FULL_SPECS))],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  results = json.loads(out.stdout.strip().splitlines()[-1])
  for mesh_sizes, full in _FULL_SPECS.items():
    for preset in PRESETS:
      expected = dict(full, **_HEADS_WHOLE.get((preset, mesh_sizes[2]), {}))
      # k and v are named as q; up as gate.
      expected.update(
        {
          'blocks/k/kernel': expected['blocks/q/kernel'],
          'blocks/v/kernel': expected['blocks/q/kernel'],
          'blocks/up/kernel': expected['blocks/gate/kernel'],
        }
      )
      assert results[f'{preset} {" ".join(map(str, mesh_sizes))}'] == expected, (preset, mesh_sizes)
    assert results[f'activations {" ".join(map(str, mesh_sizes))}'] == _ACTIVATION_SPECS[mesh_sizes], mesh_sizes


def test_a_logical_axis_without_a_rule_is_a_one_line_error():
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  with pytest.raises(ValueError, match="'embedding' has no sharding rule") as error:
    sharding.spec(('embedding', 'mlp'), (6, 10), mesh)
  assert '\n' not in str(error.value)
