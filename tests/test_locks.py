"""Bad input and folders refused before anything is written; one run per workdir (stage folders included); one
preparation per shared cache. Real subprocesses of the main command, on the local files of tests/test_faults.py.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from tests import test_faults, test_loop

ROOT = test_faults.ROOT
# The command line and its helpers, shared with tests/test_faults.py.
_main, _main_args, _env, _write_documents = (
  test_faults._main,
  test_faults._main_args,
  test_faults._env,
  test_faults._write_documents,
)
_one_line_error, _wait_for = test_faults._one_line_error, test_faults._wait_for


def _snapshot(folder: pathlib.Path) -> dict:
  """Every path under folder with its size and modification time (empty when folder is absent)."""
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*')} if folder.exists() else {}


@pytest.mark.parametrize(
  'overrides, expected',
  [
    (['--config.optimizer.lr=nan'], 'optimizer.lr=nan is not a finite number; set --config.optimizer.lr'),
    (['--config.model.d_model=0'], 'model.d_model=0 must be a positive integer; set --config.model.d_model'),
    (['--config.model.n_heads=3'], 'model.n_heads=3 does not divide model.d_model=64'),
    (['--config.stage=pipeline', '--config.finetune.grid=()'], 'finetune.grid=() must be a non-empty tuple'),
  ],
)
def test_a_bad_value_is_one_line_and_writes_nothing(tmp_path, overrides, expected):
  workdir = tmp_path / 'run'
  line = _one_line_error(_main(tmp_path, workdir, *overrides))
  assert expected in line, line
  assert not workdir.exists() and not (tmp_path / 'cache').exists()


def test_bad_folders_and_config_files_are_one_line(tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  out = _main(tmp_path, tmp_path / 'file')
  line = _one_line_error(out)
  assert line == f'error: the workdir {tmp_path}/file is a file, not a folder; pass another --workdir', line
  assert (tmp_path / 'file').read_text() == 'not a folder' and not (tmp_path / 'cache').exists()
  (tmp_path / 'broken.py').write_text('def get_config(:\n')
  (tmp_path / 'raises.py').write_text('raise RuntimeError("no such dataset")\n')
  (tmp_path / 'config.yaml').write_text('batch_size: 8\n')
  for config, expected in [
    ('broken.py', 'cannot be read as Python (SyntaxError'),
    ('raises.py', 'raised RuntimeError when loaded (no such dataset)'),
    ('config.yaml', 'is not a Python file'),
    ('missing.py', 'does not exist'),
  ]:
    out = subprocess.run(
      [sys.executable, '-m', 'spt_jax.main', f'--config={tmp_path}/{config}', f'--workdir={tmp_path}/run'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env=_env(),
      timeout=900,
    )
    assert out.returncode == 2, out.stderr[-3000:]  # A --config that cannot be read is a usage error.
    line = out.stderr.strip().splitlines()[-1]
    assert 'Traceback' not in out.stderr, out.stderr[-3000:]
    assert line.startswith(f"error: config file '{tmp_path}/{config}' ") and expected in line, line
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_the_corrected_command_runs_and_library_logs_go_to_the_log_file(tmp_path):
  workdir = tmp_path / 'run'
  _one_line_error(_main(tmp_path, workdir, '--config.optimizer.lr=nan'))
  assert not workdir.exists()
  out = _main(tmp_path, workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((workdir / 'config.json').read_text())['optimizer']['lr'] == 3e-3
  terminal = out.stderr.strip().splitlines()
  assert any('step 6/6' in line for line in terminal)  # The run's own progress lines still print...
  assert not any('logging_writer.py' in line or 'local.py' in line for line in terminal), terminal
  log = (workdir / 'log.txt').read_text()
  assert 'logging_writer.py' in log and 'step 6/6' in log  # ...and the log file holds everything.


def _start(tmp_path, workdir, *overrides) -> tuple:
  """The main command, paused where it prepares its data (inside its locks); returns it and its release file."""
  hold = tmp_path / f'hold_{workdir.name}'
  hold.touch()
  args = _main_args(tmp_path, workdir, *overrides)[3:]
  process = subprocess.Popen(
    [sys.executable, '-c', test_faults.HOLD_SCRIPT, str(hold), *args],
    cwd=ROOT,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(lambda: pathlib.Path(f'{hold}.reached').exists(), process)
  return process, hold


def _stop(process, hold) -> None:
  hold.unlink()
  _, stderr = process.communicate(timeout=900)
  assert process.returncode == 0, stderr[-3000:]


@pytest.mark.slow
def test_a_run_on_a_stage_folder_of_a_live_pipeline_is_refused_and_touches_nothing(tmp_path):
  workdir = tmp_path / 'run'
  pipeline, _ = _start(tmp_path, workdir, '--config.stage=pipeline')
  try:
    in_flight = workdir / 'pretrain' / 'checkpoints' / '4.orbax-checkpoint-tmp-1700000000000000'
    (in_flight / 'state').mkdir(parents=True)  # As the live run's asynchronous save leaves it mid-write.
    (in_flight / 'state' / 'part').write_text('half')
    before = _snapshot(workdir)
    line = _one_line_error(_main(tmp_path, workdir / 'pretrain'))
    assert f'{workdir}/pretrain is in use by a live run (pid {pipeline.pid} on host ' in line, line
    assert f'running {workdir},' in line
    assert _snapshot(workdir) == before  # The in-flight checkpoint folder included.
  finally:
    pipeline.kill()
    pipeline.wait()


@pytest.mark.slow
def test_a_pipeline_is_refused_while_a_run_holds_its_pretrain_folder(tmp_path):
  workdir = tmp_path / 'run'
  stage_run, hold = _start(tmp_path, workdir / 'pretrain')
  before = _snapshot(workdir)
  line = _one_line_error(_main(tmp_path, workdir, '--config.stage=pipeline'))
  assert f'{workdir}/pretrain is in use by a live run (pid {stage_run.pid} on host ' in line, line
  assert _snapshot(workdir) == before and not (workdir / 'config.json').exists()
  _stop(stage_run, hold)  # The live run never noticed.
  assert json.loads((workdir / 'pretrain' / 'summary.json').read_text())['stop_reason'] == 'budget'


# Prepares the data of tests/test_validate.py's BPE config on argv[1]'s files into the cache argv[2]; each build
# is marked in argv[3]; the build waits while argv[4] exists; a wait for another preparation is marked too.
PREPARE_SCRIPT = (
  test_loop.HELPERS
  + """
import logging, os, sys, time
from spt_jax.data import prepare, prepare_build
docs, cache, marker, hold = sys.argv[1:5]
def mark(text):
  with open(marker, 'a') as f:
    f.write(text + '\\n')
class Waits(logging.Handler):
  def emit(self, record):
    if 'waiting for another process preparing' in record.getMessage():
      mark('WAITING')
logging.getLogger().addHandler(Waits())
logging.getLogger().setLevel(logging.INFO)
build = prepare_build.build
def held_build(*args, **kwargs):
  mark('BUILD')
  while os.path.exists(hold):
    time.sleep(0.05)
  return build(*args, **kwargs)
prepare_build.build = held_build
config = tiny_config()
config.data.general = config.data.domain = f'files:{docs}/*.txt'
config.data.tokenizer, config.data.tokenizer_vocab_size, config.data.cache_dir = 'bpe', 512, cache
data = prepare.prepare(config)
print(data.path, {name: rows.shape for name, rows in data.train.items()}, flush=True)
"""
)


def test_two_preparations_sharing_a_cache_prepare_once(tmp_path):
  _write_documents(tmp_path / 'docs', 'lemma proof qed intros apply the a cat dog'.split(), 20, 0)
  marker, hold = tmp_path / 'markers', tmp_path / 'hold'
  hold.touch()

  def start():
    return subprocess.Popen(
      [sys.executable, '-c', PREPARE_SCRIPT, str(tmp_path / 'docs'), str(tmp_path / 'cache'), str(marker), str(hold)],
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )

  first = start()
  _wait_for(lambda: marker.exists() and 'BUILD' in marker.read_text(), first)
  second = start()
  _wait_for(lambda: 'WAITING' in marker.read_text(), second)
  hold.unlink()
  outputs = [process.communicate(timeout=900)[0] for process in (first, second)]
  assert [process.returncode for process in (first, second)] == [0, 0], outputs
  assert marker.read_text().split() == ['BUILD', 'WAITING']  # Prepared once; the second reused it.
  assert outputs[0].strip().splitlines()[-1] == outputs[1].strip().splitlines()[-1]
