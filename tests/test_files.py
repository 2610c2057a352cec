"""Atomic writes, strict JSON, the metrics clean-up on resume and the one-run-per-workdir lock."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from spt_jax.storage import files, layout, markdown


def test_json_never_holds_nan_or_infinity(tmp_path):
  value = {
    'loss': float('nan'),
    'best': [1.5, float('inf'), -float('inf')],
    'x': np.float32('nan'),
    'n': 3,
    'array': np.array([0.5, np.nan]),
  }
  text = files.dumps(value)
  assert 'NaN' not in text and 'Infinity' not in text
  assert json.loads(text) == {'loss': None, 'best': [1.5, None, None], 'x': None, 'n': 3, 'array': [0.5, None]}
  files.write_json(str(tmp_path / 'summary.json'), value)
  json.loads((tmp_path / 'summary.json').read_text(), parse_constant=pytest.fail)  # Strict: no bare tokens.


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
  path = tmp_path / 'report.md'
  files.write_text(str(path), 'old')

  def full_disk(*args):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'replace', full_disk)
  with pytest.raises(OSError):
    files.write_text(str(path), 'new')
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['report.md']  # No temporary file left behind.


def test_clean_metrics_drops_duplicated_out_of_order_and_cut_lines(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [{'step': 0}, {'step': 5}, {'step': 10}, {'step': 5}, {'step': 10}, {'step': 15}, {'step': 20}, {'step': 25}]
  path.write_text(''.join(json.dumps(line) + '\n' for line in lines) + '{"step": 30, "train/lo')
  assert files.clean_metrics(str(path), 20) == 4  # 5 and 10 again, 25, the cut line.
  assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [0, 5, 10, 15, 20]


_HOLD = """
import sys
from spt_jax.storage import files
with files.WorkdirLock(sys.argv[1:]):
  print('LOCKED', flush=True)
  sys.stdin.readline()  # Holds the lock until the test writes a line (or dies).
"""


def _holder(*workdirs) -> subprocess.Popen:
  """A process holding the lock of workdirs, once this returns."""
  env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get('PYTHONPATH', ''))
  holder = subprocess.Popen(
    [sys.executable, '-c', _HOLD, *map(str, workdirs)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    env=env,
  )
  assert holder.stdout.readline().strip() == 'LOCKED'
  return holder


def _refused(workdir) -> str:
  with pytest.raises(ValueError, match=r'is in use by a live run \(') as error:
    with files.WorkdirLock(str(workdir)):
      pass
  assert '\n' not in str(error.value)
  return str(error.value)


def test_one_live_run_per_workdir_and_a_dead_one_holds_nothing(tmp_path):
  workdir = tmp_path / 'run'
  holder = _holder(workdir)
  try:
    assert f'(pid {holder.pid} on host ' in _refused(workdir)
    (workdir / layout.LOCK).unlink()  # Deleted by hand: the lock is on the folder, so it still holds.
    assert 'another process; .lock was removed' in _refused(workdir)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with files.WorkdirLock(str(workdir)):  # The kernel released the dead process's lock: no stale file to delete.
    with files.WorkdirLock(str(workdir)):  # This process re-enters what it holds (a pipeline's stages).
      pass
    assert f'pid {os.getpid()} ' in (workdir / layout.LOCK).read_text()
  holder = _holder(workdir)  # Released on exit, the nested entry's included.
  holder.communicate('\n')
  assert holder.returncode == 0


def test_a_pipeline_holds_its_stage_folders_and_a_stage_run_blocks_the_pipeline(tmp_path):
  workdir, stage = tmp_path / 'run', tmp_path / 'run' / 'pretrain'
  holder = _holder(workdir, stage)
  try:
    line = _refused(stage)
    assert f'(pid {holder.pid} on host ' in line and f'running {workdir}' in line
  finally:
    holder.communicate('\n')
  holder = _holder(stage)
  try:
    before = sorted(p.name for p in workdir.rglob('*'))
    with pytest.raises(ValueError, match=rf'{stage} is in use by a live run \(pid {holder.pid} '):
      with files.WorkdirLock([str(workdir), str(stage), str(workdir / 'finetune' / 'point')]):
        pass
    assert sorted(p.name for p in workdir.rglob('*')) == before  # Refused: nothing written, nothing made.
    with files.WorkdirLock(str(workdir)):  # W alone is free (W's and W/pretrain's own runs do not meet).
      pass
  finally:
    holder.communicate('\n')


def test_a_markdown_table_is_its_header_rule_and_rows_with_cells_as_text():
  assert markdown.table(['a', 'b'], [[1, 'x'], [2.5, '']]) == ['| a | b |', '|---|---|', '| 1 | x |', '| 2.5 |  |']
  assert markdown.row(['only']) == '| only |'
