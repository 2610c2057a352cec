"""Fault injection: kills, SIGTERM at awkward moments, damaged checkpoints, two runs in one workdir, bad input.

Each case asserts what the user sees (exit code, one line) and that nothing good was lost: a resumed run logs
every metric and ends with the parameters of an uninterrupted one, bit for bit.
  python -m pytest -q tests/test_faults.py        (about two minutes on 2 cores; -m 'not slow' for the quick half)
"""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from spt_jax.evals import heldout as evaluation
from spt_jax.train import checkpoint, loop
from tests import test_loop, tiny
from tests.test_loop import _wait_for
from tests.tiny import frozen

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 12

# A run of the tiny config in a subprocess (same config and data as tests/test_loop.py), with faults to inject:
# argv: workdir, mode (plain | slow | slow_eval | slow_save), marker file. It writes its final parameters.
SCRIPT = (
  test_loop.HELPERS
  + f"""
import sys, time
import jax, numpy as np
from spt_jax.train import checkpoint
from spt_jax.evals import heldout as evaluation
from spt_jax.train import loop
from spt_jax.data import mixture as mixture_lib
workdir, mode, marker = sys.argv[1], sys.argv[2], sys.argv[3]
config = tiny_config(steps={STEPS}, checkpoint_every=2)

def mark(text):
  with open(marker, 'a') as f:
    f.write(text + '\\n')

local_batch = mixture_lib.Mixture.local_batch
def slow_local_batch(self, step, *args):
  time.sleep(0.25)
  return local_batch(self, step, *args)
if mode == 'slow':
  mixture_lib.Mixture.local_batch = slow_local_batch

evaluate = evaluation.Evaluator.heldout
def slow_evaluate(self, params, *args, **kwargs):
  mark('EVAL')
  time.sleep(1.0)
  return evaluate(self, params, *args, **kwargs)
if mode == 'slow_eval':
  evaluation.Evaluator.heldout = slow_evaluate

save = checkpoint.Checkpoints.save
def slow_save(self, step, *args, **kwargs):
  started = save(self, step, *args, **kwargs)
  mark(f'SAVING {{step}}')  # The asynchronous save is in flight now.
  time.sleep(0.5)
  return started
if mode == 'slow_save':
  checkpoint.Checkpoints.save = slow_save

runner, state, loop_state = loop.build(frozen(config), workdir, stage='pretrain', data=tiny_data())
mark(f'START {{loop_state.step}}')
summary = runner.train(state, loop_state)
checkpoints = checkpoint.Checkpoints(workdir, keep=2)
state, _ = checkpoints.restore(runner.trainer.abstract_state)
checkpoints.close()
np.savez(workdir + '/params.npz', *[np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))])
print('STOP', summary.stop_reason, summary.steps, flush=True)
"""
)


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'  # Sharded state: fsdp over 4 devices.
  return env


def _start(tmp_path, workdir, mode='plain'):
  script = tmp_path / 'run_faults.py'
  script.write_text(SCRIPT)
  marker = tmp_path / f'{pathlib.Path(workdir).name}.markers'
  marker.unlink(missing_ok=True)
  process = subprocess.Popen(
    [sys.executable, str(script), str(workdir), mode, str(marker)],
    # The module's runs (its tests share one pytest base folder per worker) load what the first one compiled.
    env=dict(_env(), **tiny.compile_cache_env(tmp_path.parent / 'jax-cache-faults')),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  return process, marker


def _markers(marker) -> list:
  return marker.read_text().splitlines() if marker.exists() else []


def _finish(process) -> str:
  output = process.communicate(timeout=900)[0]
  assert process.returncode == 0, output[-3000:]
  return output


def _metrics(workdir) -> list:
  """Every logged record without the wall-clock ones (perf/*)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith('perf/')} for line in f]


def _params(workdir) -> list:
  with np.load(os.path.join(workdir, 'params.npz')) as stored:
    return [stored[name] for name in sorted(stored.files, key=lambda n: int(n.split('_')[1]))]


def _steps_logged(workdir) -> int:
  try:
    return max(r['step'] for r in _metrics(workdir))
  except (OSError, ValueError, json.JSONDecodeError):
    return -1


def _same_run(workdir, reference) -> None:
  """Every logged metric and the final parameters of workdir are those of the reference run, bit for bit."""
  assert _metrics(workdir) == _metrics(reference)
  for resumed, expected in zip(_params(workdir), _params(reference), strict=True):
    np.testing.assert_array_equal(resumed, expected)
  assert json.loads(pathlib.Path(workdir, 'summary.json').read_text())['stop_reason'] == 'budget'


@pytest.fixture(scope='module', name='reference')
def reference_run(tmp_path_factory):
  """An uninterrupted run in a subprocess (the same XLA devices as the faulty runs)."""
  tmp_path = tmp_path_factory.mktemp('reference')
  process, _ = _start(tmp_path, tmp_path / 'run')
  assert f'STOP budget {STEPS}' in _finish(process)
  return tmp_path / 'run'


@pytest.mark.slow
def test_kill_9_at_random_steps_resumes_bit_for_bit(tmp_path, reference):
  workdir = tmp_path / 'run'
  kill_after = sorted(random.Random(12).sample(range(2, STEPS - 1), 3))
  for step in kill_after:
    process, _ = _start(tmp_path, workdir, 'slow')
    _wait_for(lambda step=step: _steps_logged(workdir) >= step, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
  process, marker = _start(tmp_path, workdir)
  assert f'STOP budget {STEPS}' in _finish(process)
  assert _markers(marker)[0] != 'START 0'  # It resumed rather than starting over.
  _same_run(workdir, reference)


@pytest.mark.slow
@pytest.mark.parametrize('mode, moment', [('slow_eval', 'EVAL'), ('slow_save', 'SAVING 4')])
def test_sigterm_during_an_evaluation_or_a_save_exits_0_and_loses_nothing(tmp_path, reference, mode, moment):
  workdir = tmp_path / 'run'
  process, marker = _start(tmp_path, workdir, mode)
  # The second evaluation (at step 4; the first is the initial one) or the save of step 4.
  _wait_for(lambda: _markers(marker).count(moment) >= (2 if moment == 'EVAL' else 1), process)
  process.send_signal(signal.SIGTERM)
  output = _finish(process)
  assert 'STOP preempted' in output and 'SIGTERM: finishing this step, then saving a checkpoint.' in output
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['stop_reason'] == 'preempted' and summary['last_checkpoint'] == summary['steps'] < STEPS
  process, marker = _start(tmp_path, workdir)
  assert f'STOP budget {STEPS}' in _finish(process)
  assert _markers(marker)[0] == f'START {summary["steps"]}'  # From the checkpoint SIGTERM saved.
  _same_run(workdir, reference)


def _unfinished_copy(reference, workdir) -> None:
  """The reference run as if killed after its last checkpoint, before its summary (so a rerun resumes)."""
  shutil.copytree(reference, workdir)
  (workdir / 'summary.json').unlink()
  (workdir / 'params.npz').unlink()


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bytes(path: pathlib.Path, count: int = 3) -> None:
  """Inverts a few bytes in the middle of a file: same size, same ends (a bad disk sector, a cosmic ray)."""
  with open(path, 'r+b') as f:
    f.seek(path.stat().st_size // 2)
    middle = f.read(count)
    f.seek(-len(middle), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in middle))


def _damage(newest: pathlib.Path, damage: str) -> None:
  if damage.startswith('unverified_'):  # As a step saved before manifests, or killed just before its manifest.
    (newest / 'manifest.json').unlink()
  if damage in ('truncated', 'unverified_truncated'):  # As a full disk or a cut copy leaves it.
    largest = _largest_file(newest / 'state')
    os.truncate(largest, largest.stat().st_size // 2)
  elif damage == 'state_deleted':
    shutil.rmtree(newest / 'state')
  elif damage == 'deleted':
    shutil.rmtree(newest)
  elif damage == 'metrics_empty':
    (newest / 'metrics' / 'metrics').write_bytes(b'')
  elif damage in ('metrics_garbage', 'unverified_metrics_garbage'):  # Same size, not UTF-8.
    metrics = newest / 'metrics' / 'metrics'
    metrics.write_bytes(b'\xb8' * metrics.stat().st_size)
  elif damage == 'meta_garbage':  # The loop's state and the resolved config.
    _flip_bytes(newest / 'meta' / 'metadata', 1)
  elif damage == 'array_bytes_flipped':
    _flip_bytes(_largest_file(newest / 'state'))


@pytest.mark.slow
@pytest.mark.parametrize(
  'damage, reason',
  [
    ('truncated', 'size'),
    ('state_deleted', 'missing-file'),
    ('deleted', None),
    ('metrics_empty', 'size'),
    ('metrics_garbage', 'hash-mismatch'),
    ('meta_garbage', 'hash-mismatch'),
    ('array_bytes_flipped', 'hash-mismatch'),
    ('unverified_metrics_garbage', 'unreadable-metrics'),
    ('unverified_truncated', 'restore-error'),
  ],
)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes(tmp_path, reference, damage, reason):
  workdir = tmp_path / 'run'
  _unfinished_copy(reference, workdir)
  _damage(workdir / 'checkpoints' / str(STEPS), damage)
  process, marker = _start(tmp_path, workdir)
  output = _finish(process)
  assert f'STOP budget {STEPS}' in output and _markers(marker)[0] == 'START 10'
  warnings = [line for line in output.splitlines() if ' is damaged (' in line]
  if reason is None:
    assert not warnings  # Nothing to set aside: the previous checkpoint is simply the newest.
  else:
    set_aside = workdir / checkpoint.DAMAGED / f'{STEPS}-{reason}'
    assert len(warnings) == 1, warnings
    assert f'Checkpoint {STEPS} is damaged ({reason}: ' in warnings[0]
    # Found before orbax reads the step (the light or full check), or by orbax's own error while restoring it.
    outcome = 'resumed from step 10.' if reason == 'restore-error' else 'the newest good checkpoint is step 10.'
    assert warnings[0].endswith(f'; moved it to {set_aside}; {outcome}'), warnings[0]
    assert set_aside.is_dir() and any(set_aside.rglob('*'))  # Kept, not deleted.
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['10', '12']
    assert (workdir / 'checkpoints' / '12' / 'manifest.json').is_file()  # The step saved again is recorded.
  _same_run(workdir, reference)  # Every step logged once, none lost; the same parameters bit for bit.


@pytest.mark.slow
def test_no_checkpoint_is_usable_is_one_line_and_moves_nothing(tmp_path, reference):
  workdir = tmp_path / 'run'
  _unfinished_copy(reference, workdir)
  for step in checkpoint.Checkpoints(str(workdir), keep=2).all_steps():
    shutil.rmtree(workdir / 'checkpoints' / str(step) / 'state')
  with pytest.raises(
    ValueError, match=r'no checkpoint in .* is usable \(step 12: missing-file: .*move .* aside'
  ) as error:
    loop.build(
      frozen(test_loop.tiny_config(steps=STEPS, checkpoint_every=2)),
      str(workdir),
      stage='pretrain',
      data=test_loop.tiny_data(),
    )
  assert '\n' not in str(error.value)
  assert not (workdir / checkpoint.DAMAGED).exists()
  assert _metrics(workdir) == _metrics(reference)  # Nothing logged was dropped either.


def test_a_damaged_final_pretrain_checkpoint_hands_finetuning_the_one_before(tmp_path, caplog):
  data = test_loop.tiny_data()
  pretrain = tmp_path / 'pretrain'
  loop.run(frozen(test_loop.tiny_config(steps=4, checkpoint_every=2)), str(pretrain), stage='pretrain', data=data)
  _flip_bytes(_largest_file(pretrain / 'checkpoints' / '4' / 'state'))
  with caplog.at_level('WARNING'):
    summary = loop.run(
      frozen(test_loop.tiny_config(init_from=str(pretrain))), str(tmp_path / 'finetune'), stage='finetune', data=data
    )
  warnings = [r.getMessage() for r in caplog.records if ' is damaged (' in r.getMessage()]
  set_aside = pretrain / checkpoint.DAMAGED / '4-hash-mismatch'
  flipped = _largest_file(set_aside / 'state').relative_to(set_aside)
  expected = (
    f'Checkpoint 4 is damaged (hash-mismatch: {flipped} differs from its manifest); moved it to '
    f'{set_aside}; loading step 2 instead.'
  )
  assert warnings == [expected], warnings
  assert summary.init_step == 2 and summary.init_checkpoint == str(pretrain / 'checkpoints' / '2')
  assert summary.stop_reason in ('budget', 'early_stopping')
  steps = [r['step'] for r in _metrics(tmp_path / 'finetune')]
  assert steps == sorted(set(steps)) and steps[0] == 0


def test_non_finite_evaluations_are_written_as_null_never_nan(tmp_path, monkeypatch):
  evaluate = evaluation.Evaluator.heldout

  def nan_general(self, params, *args, **kwargs):
    results = evaluate(self, params, *args, **kwargs)
    results['general_test']['loss'] = float('nan')
    return results

  monkeypatch.setattr(evaluation.Evaluator, 'heldout', nan_general)
  data = test_loop.tiny_data()
  data.bytes_per_token = {}  # Bits per byte unknown: NaN.
  workdir = tmp_path / 'run'
  loop.run(frozen(test_loop.tiny_config(steps=4)), str(workdir), stage='pretrain', data=data)

  def strict(text):
    return json.loads(text, parse_constant=lambda token: pytest.fail(f'bare {token} in a JSON file'))

  summary = strict((workdir / 'summary.json').read_text())
  assert summary['final']['general_test'] is None and summary['final']['domain_test'] > 0
  records = [strict(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert records[0]['eval/domain_test/bpb'] is None and records[0]['eval/general_test/loss'] is None
  strict((workdir / 'config.json').read_text())


# The command line on local files: what a user sees for bad input, two runs at once and an early SIGTERM.
def _write_documents(folder: pathlib.Path, words: list, n_documents: int, seed: int) -> None:
  rng = random.Random(seed)
  folder.mkdir(exist_ok=True)
  for i in range(n_documents):
    (folder / f'doc{i:03d}.txt').write_text(' '.join(rng.choice(words) for _ in range(300)) + '.')


def _main_args(tmp_path, workdir, *overrides) -> list:
  _write_documents(tmp_path / 'general', 'the a cat dog sat on mat and ran to house tree sun rain'.split(), 30, 0)
  _write_documents(tmp_path / 'domain', 'lemma proof qed intros apply rewrite induction nat'.split(), 15, 1)
  return [
    sys.executable,
    '-m',
    'spt_jax.main',
    '--config=configs/proofpile.py:test',
    f'--workdir={workdir}',
    '--config.stage=pretrain',
    '--config.steps=6',
    f'--config.data.general=files:{tmp_path}/general/*.txt',
    f'--config.data.domain=files:{tmp_path}/domain/*.txt',
    f'--config.data.cache_dir={tmp_path}/cache',
    '--config.data.tokenizer_vocab_size=300',
    '--config.model.vocab_size=300',
    *overrides,
  ]


def _main(tmp_path, workdir, *overrides):
  return subprocess.run(
    _main_args(tmp_path, workdir, *overrides), cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=900
  )


def _one_line_error(out) -> str:
  assert out.returncode == 1, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert lines and lines[-1].startswith('error: ') and 'Traceback' not in out.stderr, out.stderr[-3000:]
  return lines[-1]


@pytest.mark.parametrize(
  'override, expected',
  [
    ('--config.batch_size=0', 'batch_size=0 must be a positive integer; set --config.batch_size'),
    ('--config.mixture.domain_fraction=1.5', 'mixture.domain_fraction (δ) is 1.5, outside [0, 1)'),
    ('--config.mixture.stages=((0, {"domain": 0.5, "general": 0.6}),)', 'sum to 1.1, not 1'),
    ('--config.data.domain=files:/no/such/folder/*.txt', "source 'domain': no files match"),
    ('--config.data.tokenizer_vocab_size=3000', 'model vocab_size 300 does not match data.tokenizer_vocab_size 3000'),
    ('--config.mesh.data=3', 'mesh'),
    ('--config.batch_size=6', 'batch_size=6 is not a multiple of the 4 data-parallel devices'),
  ],
)
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, override, expected):
  workdir = tmp_path / 'run'
  line = _one_line_error(_main(tmp_path, workdir, override))
  assert expected in line, line
  assert not workdir.exists() and not (tmp_path / 'cache').exists()  # Nothing written, nothing prepared.


@pytest.mark.slow
def test_a_rejected_config_does_not_lock_the_user_out(tmp_path):
  workdir = tmp_path / 'run'
  _one_line_error(_main(tmp_path, workdir, '--config.mixture.domain_fraction=1.5'))
  out = _main(tmp_path, workdir)  # The corrected command.
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((workdir / 'summary.json').read_text())['stop_reason'] == 'budget'
  json.loads((workdir / 'config.json').read_text(), parse_constant=pytest.fail)


# The main command, paused where it prepares its data (inside its workdir lock, before the first step) while the
# file named by argv[1] exists: a test acts at that moment however slowly the machine runs.
def hold_script(entry: str = 'from spt_jax import main; main._run()', call: int = 1) -> str:
  """A `python -c` script that runs `entry` (argv: the hold file, then its flags) and, at its `call`-th data
  preparation, touches <hold>.reached and waits while the hold file exists."""
  return f"""
import os, sys, time
hold = sys.argv.pop(1)
from spt_jax.data import prepare
prepare_data, calls = prepare.prepare, []
def held(config):
  calls.append(config)
  if len(calls) == {call}:
    open(hold + '.reached', 'w').close()
    while os.path.exists(hold):
      time.sleep(0.05)
  return prepare_data(config)
prepare.prepare = held
{entry}
"""


HOLD_SCRIPT = hold_script()  # The main command, held at its first preparation.


def _start_holding_the_lock(tmp_path, workdir) -> tuple:
  """The main command in the background, paused before its first step while it holds the workdir's lock.

  Returns the process and the file whose removal lets it go on.
  """
  hold = tmp_path / 'hold'
  hold.touch()
  process = subprocess.Popen(
    [sys.executable, '-c', HOLD_SCRIPT, str(hold), *_main_args(tmp_path, workdir)[3:]],
    cwd=ROOT,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  lock = workdir / '.lock'
  _wait_for(lambda: pathlib.Path(f'{hold}.reached').exists(), process)
  assert f'pid {process.pid} ' in lock.read_text()
  return process, hold


@pytest.mark.slow
def test_two_runs_in_one_workdir(tmp_path):
  workdir = tmp_path / 'run'
  first, hold = _start_holding_the_lock(tmp_path, workdir)
  second = _main(tmp_path, workdir)
  line = _one_line_error(second)
  assert f'is in use by a live run (pid {first.pid} on host ' in line, line
  hold.unlink()
  _, stderr = first.communicate(timeout=900)
  assert first.returncode == 0, stderr[-3000:]  # The first run never noticed.
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['stop_reason'] == 'budget' and summary['steps'] == 6
  steps = [r['step'] for r in _metrics(workdir)]
  assert steps == sorted(set(steps))  # One run's metrics: each step once, in order.


@pytest.mark.slow
def test_sigterm_before_the_first_step_exits_0_with_one_line(tmp_path):
  workdir = tmp_path / 'run'
  process, _ = _start_holding_the_lock(tmp_path, workdir)
  process.send_signal(signal.SIGTERM)  # Where the data is about to be prepared.
  _, stderr = process.communicate(timeout=900)
  assert process.returncode == 0, stderr[-3000:]
  assert 'SIGTERM outside a training step: nothing new to save' in stderr.strip().splitlines()[-1]
  assert not (workdir / 'checkpoints').exists() or not any((workdir / 'checkpoints').iterdir())
  out = _main(tmp_path, workdir)  # Rerunning the same command runs it from the start.
  assert out.returncode == 0, out.stderr[-3000:]
  assert [r['step'] for r in _metrics(workdir)] == [0, 5, 6]  # One run: the initial evaluation, log_every, the end.
