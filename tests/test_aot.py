"""The TPU plan: topology names, ahead-of-time compiles for small TPU topologies (need libtpu), the knob search."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from configs import common
from spt_jax.hardware import aot
from spt_jax.model import sharding
from spt_jax.train import step as train
from tests.tiny import frozen

ROOT = pathlib.Path(__file__).resolve().parents[1]
_MISSING = aot.libtpu_missing()
needs_libtpu = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)


@pytest.mark.parametrize(
  'name, chips, shape, libtpu_name, hosts',
  [  # Hosts as Cloud TPU's slice tables give them: v5e 16x16 on 32 hosts, 8x8 on 8; v5p 4x4x4 on 16.
    ('v5e-256', 256, (16, 16), 'v5e:16x16', 32),
    ('v5litepod-8', 8, (2, 4), 'v5e:2x4', 1),
    ('v5e-1', 1, (1, 1), 'v5e:1x1', 1),
    ('v4-8', 4, (2, 2, 1), 'v4:2x2x1', 1),
    ('v4-32', 16, (2, 2, 4), 'v4:2x2x4', 4),
    ('v5p-128', 64, (4, 4, 4), 'v5p:4x4x4', 16),
    ('v6e-128', 128, (8, 16), 'v6e:8x16', 16),
    ('V4-512', 256, (4, 8, 8), 'v4:4x8x8', 64),
  ],
)
def test_topology_names(name, chips, shape, libtpu_name, hosts):
  topology = aot.parse_topology(name)
  assert (topology.chips, topology.shape, topology.libtpu_name, topology.hosts) == (chips, shape, libtpu_name, hosts)


@pytest.mark.parametrize('name', ['v9-8', 'v5e', 'v5e-3', 'v4-2', 'v4-7', 'tpu-256', ''])
def test_unknown_topology_is_an_error(name):
  with pytest.raises(ValueError, match='unknown topology'):
    aot.parse_topology(name)


def test_unknown_topology_from_the_command_line_is_one_line():
  out = subprocess.run(
    [sys.executable, '-m', 'spt_jax.main', '--config=configs/proofpile.py:test', '--dry_run', '--topology=v9-8'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    timeout=900,
  )
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and 'unknown topology' in lines[0], out.stderr


def _config(seq_len=128, batch_size=16):
  c = common.sized('test')
  c.data.domain = 'builtin:coq'
  c.data.seq_len, c.batch_size, c.eval_sequences = seq_len, batch_size, batch_size
  c.model.update(vocab_size=2048, loss_chunk_length=0)
  c.tokens = c.schedule.horizon_tokens = 40 * batch_size * seq_len
  return c


@needs_libtpu
def test_plan_for_a_small_topology():
  plan = aot.plan(_config(), 'v5e-4', mfu=0.5, log=lambda line: None)
  record = json.loads(json.dumps(plan.to_json()))  # The dry run's last line: one flat record.
  assert record['chips'] == 4 and record['params'] == plan.summary.params
  assert record['compiled']['train']['peak_bytes'] == plan.compiled.train.peak_bytes
  compiled = plan.compiled
  assert plan.fits and plan.chips == 4 and plan.recommendation is None
  assert compiled.train.peak_bytes > compiled.state_bytes > 0
  assert compiled.train.temporaries_bytes > 0
  assert plan.step_flops == plan.summary.train_flops_per_token * 16 * 128
  assert plan.step_seconds_floor == pytest.approx(plan.step_flops / (4 * 197e12))
  assert plan.chip_hours == pytest.approx(plan.summary.steps * plan.step_seconds_floor * 4 / 0.5 / 3600)
  assert 'fits' in plan.format()
  assert plan.data.hosts == 1 and [s.name for s in plan.data.sources] == ['general', 'domain']
  assert 'prepared once' in plan.format()  # Built-in corpora: no remote token files to read by range.


@needs_libtpu
def test_search_names_the_fewest_microbatches_that_fit(monkeypatch):
  config, devices = _config(batch_size=64), aot.topology_devices(aot.parse_topology('v5e-1'))
  peaks = {m: aot.compile_steps(frozen(config), devices, m, 'none').train.peak_bytes for m in (1, 4)}
  assert peaks[4] < peaks[1]
  hbm = (peaks[1] + peaks[4]) // 2  # A chip on which one microbatch does not fit but four do.
  monkeypatch.setitem(aot.CHIPS, 'v5e', aot.Chip('v5e', 2, 1, hbm, 197e12, 8))
  lines = []
  plan = aot.plan(config, 'v5e-1', log=lines.append)
  assert not plan.fits
  r = plan.recommendation
  assert r.remat_policy == 'none' and r.grad_accum_steps in (2, 4) and r.peak_bytes <= hbm
  assert 'fits with        --config.grad_accum_steps=' in plan.format()
  monkeypatch.setitem(aot.CHIPS, 'v5e', aot.Chip('v5e', 2, 1, 1024, 197e12, 8))  # Nothing fits in 1 KiB.
  plan = aot.plan(config, 'v5e-1', log=lines.append)
  assert plan.recommendation is None and 'nothing fits' in plan.format()


@needs_libtpu
def test_knobs_left_to_the_run_are_chosen_to_fit_and_explicit_ones_that_do_not_fit_stop(monkeypatch):
  config, devices = _config(batch_size=64), aot.topology_devices(aot.parse_topology('v5e-1'))
  peaks = {m: aot.compile_steps(frozen(config), devices, m, 'none').train.peak_bytes for m in (1, 4)}
  hbm = (peaks[1] + peaks[4]) // 2  # One microbatch does not fit, four do.
  config.grad_accum_steps, config.model.remat_policy = 0, 'auto'  # As the paper presets leave them.
  lines = []
  fitted = aot.fit_to_devices(frozen(config), devices, hbm=hbm, log=lines.append)
  assert fitted.grad_accum_steps in (2, 4) and fitted.model.remat_policy == 'none'
  assert len(lines) == 1 and f'grad_accum_steps={fitted.grad_accum_steps}' in lines[0] and 'chosen' in lines[0]
  # The dry run for such a chip shows that choice, fitting.
  monkeypatch.setitem(aot.CHIPS, 'v5e', aot.Chip('v5e', 2, 1, hbm, 197e12, 8))
  plan = aot.plan(config, 'v5e-1', log=lambda line: None)
  assert plan.fits and plan.chosen and plan.recommendation is None
  assert plan.compiled.microbatches == plan.summary.grad_accum_steps == fitted.grad_accum_steps
  assert 'chosen           grad_accum_steps=' in plan.format() and plan.to_json()['fits'] is True
  # An explicit setting that does not fit: one line naming the memory per device and the fix.
  config.grad_accum_steps, config.model.remat_policy = 1, 'none'
  with pytest.raises(ValueError, match=r'does not fit the [\d.]+ GiB per device .*grad_accum_steps=0') as error:
    aot.fit_to_devices(frozen(config), devices, hbm=hbm)
  assert '\n' not in str(error.value)
  # On a CPU nothing is compiled: one microbatch, no remat.
  config.grad_accum_steps, config.model.remat_policy = 0, 'auto'
  on_cpu = aot.fit_to_devices(frozen(config), jax.devices('cpu'))
  assert (on_cpu.grad_accum_steps, on_cpu.model.remat_policy) == (1, 'none')


@needs_libtpu
def test_splash_attention_compiles_for_tpu():
  """On a TPU mesh 'auto' attention is the Pallas splash kernel: the compiled step holds a Mosaic custom call."""
  config = _config(seq_len=256, batch_size=8)
  mesh = sharding.make_mesh(config.mesh, aot.topology_devices(aot.parse_topology('v5e-4')))
  schedule = optax.constant_schedule(1e-3)
  trainer = train.Trainer(config.model, mesh, train.make_optimizer(config, schedule), schedule)
  batch = jax.ShapeDtypeStruct((8, 257), jnp.int32, sharding=trainer.batch_sharding)
  lowered = trainer.train_step.lower(trainer.abstract_state, batch)
  assert 'tpu_custom_call' in lowered.as_text()
  assert lowered.compile().memory_analysis().temp_size_in_bytes > 0
  config.model.attention_impl = 'xla'
  trainer = train.Trainer(config.model, mesh, train.make_optimizer(config, schedule), schedule)
  assert 'tpu_custom_call' not in trainer.train_step.lower(trainer.abstract_state, batch).as_text()
