"""Every entry point follows spt_jax/cli.py's convention: --help exits 0; a wrong command line is one line, exit 2."""

import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from spt_jax import cli
from spt_jax.model import (
  attention,
  decoder,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]

# module, the arguments before the flag under test, a flag value that is refused, the flag named in the error.
ENTRY_POINTS = [
  ('spt_jax.main', [], '--devices=-1', 'devices'),
  ('spt_jax.plan', ['cost'], '--seq_len=0', 'seq_len'),
  ('spt_jax.bench', [], '--batch_size=0', 'batch_size'),
  ('spt_jax.export', ['--out=/tmp/unused'], '--checkpoint=/no/such/run', 'checkpoint'),
  ('spt_jax.sample', ['--checkpoint=.'], '--top_p=1.5', 'top_p'),
  ('spt_jax.evaluate_mcqa', ['--checkpoint=.', '--task=arc_easy'], '--batch_size=0', 'batch_size'),
  ('spt_jax.gpu_check', [], '--batch_sizes=0', 'batch_sizes'),
  ('spt_jax.crash_check', ['--config=configs/proofpile.py:test', '--workdir=W'], '--kills=0', 'kills'),
  ('spt_jax.data.fetch', [], '--only=coq,nope', 'only'),
  ('spt_jax.data.prepare', [], '--config=configs/nope.py', 'config'),
  ('spt_jax.data.bench', [], '--prepare_kind=pdf', 'prepare_kind'),
  ('experiments.budget', ['--workdir=W'], '--deltas=0,2', 'deltas'),
  ('experiments.data_size', ['--workdir=W'], '--scpt_start=1.5', 'scpt_start'),
  ('experiments.delta_sweep', ['--workdir=W'], '--checkpoints=-1', 'checkpoints'),
  ('experiments.downstream', ['--workdir=W'], '--examples=0', 'examples'),
  ('experiments.forecast_check', ['--workdir=W'], '--crossover=0.02', 'crossover'),
  ('experiments.headline', ['--workdir=W'], '--seeds=one', 'seeds'),
  ('experiments.model_size', ['--workdir=W'], '--presets=cpu-2m,olmo-9b', 'presets'),
  ('experiments.overlap', ['--workdir=W'], '--shares=0.1', 'shares'),
  ('experiments.pilots', ['--workdir=W'], '--pilot_deltas=0.01,0.02,0.05,0.1', 'pilot_deltas'),
  ('experiments.replay', ['--workdir=W'], '--replay=1', 'replay'),
  ('experiments.similarity', ['--workdir=W'], '--delta=0', 'delta'),
]


def test_every_entry_point_is_in_the_table():
  studies = {
    f'experiments.{p.stem}' for p in (ROOT / 'experiments').glob('*.py') if p.stem not in ('__init__', 'common')
  }
  top = {f'spt_jax.{p.stem}' for p in (ROOT / 'spt_jax').glob('*.py') if p.stem not in ('__init__', 'cli')}
  data = {
    f'spt_jax.data.{p.stem}'
    for p in (ROOT / 'spt_jax' / 'data').glob('*.py')
    if "__name__ == '__main__'" in p.read_text()
  }
  assert {module for module, *_ in ENTRY_POINTS} == studies | top | data


def _run(module: str, *runs: list[str]) -> list[subprocess.CompletedProcess]:
  """`python -m module ARGS` for each ARGS, the processes side by side (each spends its time importing)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  env.pop('SPT_JAX_TRACEBACK', None)
  processes = [
    subprocess.Popen(
      [sys.executable, '-m', module, *args],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for args in runs
  ]
  results = []
  for process, args in zip(processes, runs, strict=True):
    stdout, stderr = process.communicate(timeout=900)
    results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
  return results


def _usage_error(result: subprocess.CompletedProcess) -> str:
  """The one `error:` line a refused command line ends with (exit 2, no traceback)."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: ') and sum(line.startswith('error:') for line in lines) == 1, result.stderr
  return lines[-1]


@pytest.mark.parametrize('module, before, bad_value, flag', ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_a_wrong_command_line_is_one_line_and_exit_2(module, before, bad_value, flag):
  unknown, bad, shown = _run(module, [*before, '--no_such_flag=1'], [*before, bad_value], ['--help'])
  assert 'no_such_flag' in _usage_error(unknown)
  assert f'--{flag}' in _usage_error(bad)
  assert shown.returncode == 0 and f'--{flag}' in shown.stdout and 'Traceback' not in shown.stderr, shown.stderr


def test_bench_choices_are_the_models():
  from spt_jax import bench  # noqa: F401, PLC0415  defines the flags under test, in this test only

  assert flags.FLAGS['remat_policy'].parser.enum_values == list(decoder.REMAT_POLICIES)
  assert flags.FLAGS['attention_impl'].parser.enum_values == list(attention.IMPLEMENTATIONS)


def _status(main, *args: str) -> int:
  flag_values = flags.FlagValues()
  flags.DEFINE_integer('count', 1, 'A positive count.', lower_bound=1, flag_values=flag_values)
  return cli.status(main, argv=['program', *args], flag_values=flag_values)


def _raise(error: BaseException):
  def main(argv):
    raise error

  return main


def test_exit_status_by_kind(capsys, monkeypatch):
  monkeypatch.delenv('SPT_JAX_TRACEBACK', raising=False)
  assert _status(lambda argv: None) == 0 and _status(lambda argv: 3) == 3
  assert _status(lambda argv: pytest.fail('main ran'), '--count=0') == 2
  assert capsys.readouterr().err == 'error: flag --count=0: 0 is not a positive integer\n'
  assert _status(_raise(cli.UsageError('--count: too many'))) == 2
  assert _status(_raise(ValueError('the data is damaged\nrebuild it'))) == 1
  assert _status(_raise(OSError(28, 'No space left on device'))) == 1
  assert capsys.readouterr().err.splitlines() == [
    'error: --count: too many',
    'error: the data is damaged; rebuild it',
    'error: [Errno 28] No space left on device',
  ]
  with pytest.raises(KeyError):  # A bug keeps its traceback.
    _status(_raise(KeyError('x')))
  monkeypatch.setenv('SPT_JAX_TRACEBACK', '1')
  with pytest.raises(ValueError, match='damaged'):
    _status(_raise(ValueError('damaged')))
