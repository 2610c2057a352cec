"""Runs trained together over a leading run axis (loop.run_many) against the same runs trained alone."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from spt_jax.evals import heldout as evaluation
from spt_jax.model import sharding
from spt_jax.storage import records
from spt_jax.train import loop, pipeline
from spt_jax.train import step as train
from tests import tiny
from tests.test_loop import _losses, _wait_for
from tests.tiny import frozen, tiny_config, tiny_data

# Together and alone differ only by how XLA orders the float sums of a batched matmul: every logged float of a
# run agrees to this relative tolerance after 12 steps (measured: at most 4e-6).
RTOL = 2e-5
# Logged values that measure the machine, not the run.
_MACHINE = ('perf/', 'steps_per_sec', 'uptime')


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _assert_same_run(alone: str, together: str) -> None:
  """The same steps logged with the same values (to RTOL), the same checkpoints and the same summary."""
  a, b = _records(alone), _records(together)
  assert [r['step'] for r in a] == [r['step'] for r in b]
  for x, y in zip(a, b, strict=True):
    keys = {k for k in x if not k.startswith(_MACHINE)}
    assert keys == {k for k in y if not k.startswith(_MACHINE)}
    for key in keys:
      if isinstance(x[key], float):
        assert math.isclose(x[key], y[key], rel_tol=RTOL), (x['step'], key, x[key], y[key])
      else:
        assert x[key] == y[key], (x['step'], key)
  assert sorted(os.listdir(os.path.join(alone, 'checkpoints'))) == sorted(
    os.listdir(os.path.join(together, 'checkpoints'))
  )
  sa, sb = (json.load(open(os.path.join(w, 'summary.json'))) for w in (alone, together))
  assert set(sa) == set(sb)
  for key in ('stage', 'steps', 'tokens', 'stop_reason', 'data', 'last_checkpoint', 'lr', 'warmup_steps'):
    assert sa[key] == sb[key], key
  assert (sa['best'] or {}).get('step') == (sb['best'] or {}).get('step')
  for name, loss in sa['final'].items():
    assert math.isclose(loss, sb['final'][name], rel_tol=RTOL), name


def test_pretraining_runs_together_equal_the_runs_alone(tmp_path):
  data = tiny_data()
  # Different seeds (initialisation and data order), δs, learning rates and lengths.
  configs = [
    tiny_config(seed=0, **{'mixture.domain_fraction': 0.1}),
    tiny_config(seed=1, **{'mixture.domain_fraction': 0.3, 'optimizer.lr': 1e-3}),
    tiny_config(seed=2, steps=8, **{'mixture.domain_fraction': 0.5}),
  ]
  alone = [loop.run(frozen(c), str(tmp_path / f'alone{i}'), data=data) for i, c in enumerate(configs)]
  runs = [loop.Run(frozen(c), str(tmp_path / f'together{i}'), data=data) for i, c in enumerate(configs)]
  together = loop.run_many(runs, together=3)
  assert [s.steps for s in together] == [s.steps for s in alone] == [12, 12, 8]
  for i in range(3):
    _assert_same_run(str(tmp_path / f'alone{i}'), str(tmp_path / f'together{i}'))
  # Finished runs are not trained again, together or not.
  again = loop.run_many(runs, together=3)
  assert [s.wall_time_s for s in again] == [s.wall_time_s for s in together]


def test_a_finetuning_grid_together_stops_each_point_as_alone(tmp_path, monkeypatch):
  """Early stopping per run: a point that stops keeps its state, the stack shrinks, the others go on."""
  shrinks, select = [], train.Trainer.select
  monkeypatch.setattr(
    train.Trainer, 'select', lambda self, stacked, runs: shrinks.append(runs) or select(self, stacked, runs)
  )
  data = tiny_data()
  base = tiny_config()
  pretrain = str(tmp_path / 'pretrain')
  loop.run(frozen(base), pretrain, data=data)
  grid = records.grid_points(((1e-3, 2), (3e-2, 2), (1e-1, 0)))  # The high learning rates overfit and stop early.
  config = tiny_config(stage='pipeline', init_from=pretrain, **{'finetune.grid': tuple(grid), 'finetune.patience': 1})
  alone, together = {}, {}
  for name, results, count in (('alone', alone, 1), ('together', together, 3)):
    runs = [loop.Run(frozen(config), str(tmp_path / name / point.folder()), 'finetune', point, data) for point in grid]
    for point, summary in zip(grid, loop.run_many(runs, together=count), strict=True):
      results[point] = summary
  steps = [together[point].steps for point in grid]
  assert [alone[point].steps for point in grid] == steps
  assert min(steps) < max(steps) == 12, steps  # Some point stopped early while another trained to the end.
  assert [together[point].stop_reason for point in grid] == ['budget', 'early_stopping', 'early_stopping']
  assert shrinks == [[0]]  # Once two of three stopped, the stack kept only the first point.
  for point in grid:
    _assert_same_run(str(tmp_path / 'alone' / point.folder()), str(tmp_path / 'together' / point.folder()))


def test_a_pipeline_with_runs_together_reports_as_one_without(tmp_path):
  data = tiny_data()
  grid = ((1e-3, 2), (3e-3, 2))
  results = [
    pipeline.run_pipeline(
      frozen(tiny_config(stage='pipeline', runs_together=count, **{'finetune.grid': grid})), str(tmp_path / name), data
    )
    for name, count in (('one', 1), ('two', 2))
  ]
  assert [f.name for f in results[0].finetunes] == [f.name for f in results[1].finetunes]
  for a, b in zip(results[0].finetunes, results[1].finetunes, strict=True):
    assert (a.steps, a.best_step) == (b.steps, b.best_step)
    assert math.isclose(a.best_domain_test_loss, b.best_domain_test_loss, rel_tol=RTOL)
  assert results[0].best.name == results[1].best.name


def test_runs_together_0_is_one_at_a_time_on_this_cpu_and_other_values_as_given():
  assert loop.runs_at_once(0) == 1 and loop.runs_at_once(1) == 1 and loop.runs_at_once(3) == 3


def test_a_stack_evaluates_each_run_as_alone_whatever_its_partners():
  c = tiny_config()
  mesh = sharding.make_mesh(c.mesh)
  trainer = loop._trainer(c, mesh)
  data, other = tiny_data(), tiny_data()
  other.eval_sets = {name: rows[::-1][:12] for name, rows in other.eval_sets.items()}  # Other rows, a short batch.
  evaluators = [evaluation.Evaluator(c, trainer, d) for d in (data, other)]
  states = [trainer.init_state(seed) for seed in (0, 1, 2)]
  names = [None, None, ['domain_test']]
  alone = [evaluators[0].heldout(states[0].params), evaluators[1].heldout(states[2].params, ['domain_test'])]
  stacked = evaluation.heldout_stacked(
    [evaluators[0], None, evaluators[1]], trainer, trainer.stack(states).params, names
  )
  assert stacked[1] is None and sorted(stacked[0]) == sorted(alone[0]) and sorted(stacked[2]) == ['domain_test']
  for results, expected in ((stacked[0], alone[0]), (stacked[2], alone[1])):
    for name, values in expected.items():
      for key, value in values.items():
        assert math.isclose(results[name][key], value, rel_tol=RTOL), (name, key)
  # Another partner in the middle slot and the other idle: slot 0's results bit for bit.
  partners = trainer.stack([states[0], states[2], states[1]]).params
  again = evaluation.heldout_stacked([evaluators[0], evaluators[1], None], trainer, partners, names)
  assert again[0] == stacked[0]


def test_stack_width_halves_while_the_runs_fit():
  assert [loop.stack_width(n, 8) for n in range(8, 0, -1)] == [8, 8, 8, 8, 4, 4, 2, 1]
  assert [loop.stack_width(n, 3) for n in (3, 2, 1)] == [3, 3, 1]


def test_a_stack_resumed_from_different_steps_reproduces_every_loss_bit_for_bit(tmp_path):
  """Runs resumed from different checkpoints, and runs that had finished, leave each step at its first width."""
  data = tiny_data()
  configs = [tiny_config(seed=seed, steps=steps, checkpoint_every=2) for seed, steps in enumerate((6, 6, 12, 12))]

  def run_all(root):
    return loop.run_many(
      [loop.Run(frozen(c), str(root / f'run{i}'), data=data) for i, c in enumerate(configs)], together=4
    )

  run_all(tmp_path / 'reference')  # Four wide until two runs end at step 6, then two wide.
  resumed = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'reference', resumed)
  for run, keep_until in (('run1', 4), ('run2', 4), ('run3', 8)):  # As if killed before these later saves.
    (resumed / run / 'summary.json').unlink()
    for folder in (resumed / run / 'checkpoints').iterdir():
      if folder.name.isdigit() and int(folder.name) > keep_until:
        shutil.rmtree(folder)
  summaries = run_all(resumed)
  assert [s.steps for s in summaries] == [6, 6, 12, 12]
  for i in range(4):
    expected, got = _records(tmp_path / 'reference' / f'run{i}'), _records(resumed / f'run{i}')
    assert [{k: v for k, v in r.items() if not k.startswith(_MACHINE)} for r in got] == [
      {k: v for k, v in r.items() if not k.startswith(_MACHINE)} for r in expected
    ]


SCRIPT = """
import sys, time
from spt_jax.train import loop
from spt_jax.data import mixture as mixture_lib
from tests.tiny import tiny_config, tiny_data, frozen
root, delay_after = sys.argv[1], int(sys.argv[2])
local_batch = mixture_lib.Mixture.local_batch

def delayed(self, step, *args):
  if step >= delay_after:
    time.sleep(0.3)
  return local_batch(self, step, *args)

mixture_lib.Mixture.local_batch = delayed
data = tiny_data()
configs = [tiny_config(seed=seed, **{'mixture.domain_fraction': delta}) for seed, delta in ((0, 0.1), (1, 0.4))]
summaries = loop.run_many([loop.Run(frozen(c), f'{root}/run{i}', data=data) for i, c in enumerate(configs)], together=2)
print('STOP', [s.stop_reason for s in summaries])
"""


def _start(tmp_path, root, delay_after):
  script = tmp_path / 'together.py'
  script.write_text(SCRIPT)
  env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get('PYTHONPATH', ''))
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'  # Sharded state (fsdp over 4) under the run axis.
  env.update(tiny.compile_cache_env(tmp_path / 'jax-cache'))  # The killed and resumed runs load the reference's.
  return subprocess.Popen(
    [sys.executable, str(script), root, str(delay_after)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


@pytest.mark.slow
def test_runs_together_killed_and_resumed_reproduce_the_losses(tmp_path):
  reference = str(tmp_path / 'reference')
  process = _start(tmp_path, reference, 10_000)
  assert process.wait(timeout=900) == 0, process.stdout.read()[-3000:]
  killed = str(tmp_path / 'killed')
  process = _start(tmp_path, killed, 6)  # Slow from step 6 on, so that it is killed mid-run.

  def committed():
    return all(
      os.path.exists(os.path.join(killed, f'run{i}', 'checkpoints', '4', '_CHECKPOINT_METADATA'))
      and max(_losses(os.path.join(killed, f'run{i}')), default=0) >= 6
      for i in range(2)
    )

  _wait_for(committed, process)
  process.kill()
  process.wait()
  assert max(_losses(os.path.join(killed, 'run0'))) < 12
  process = _start(tmp_path, killed, 10_000)
  output = process.communicate(timeout=900)[0]
  assert process.returncode == 0, output[-3000:]
  assert "STOP ['budget', 'budget']" in output, output[-3000:]
  for i in range(2):
    expected, resumed = _losses(os.path.join(reference, f'run{i}')), _losses(os.path.join(killed, f'run{i}'))
    assert sorted(resumed) == list(range(1, 13))
    assert resumed == expected  # Exactly, step for step.
  # The two runs of the stack are different runs.
  assert not np.allclose(list(_losses(os.path.join(reference, 'run0')).values()), list(expected.values()))
