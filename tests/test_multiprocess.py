"""Two processes × 4 simulated CPU devices against one × 8, through `python -m spt_jax.main` and jax.distributed.

Processes find each other with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID on 127.0.0.1, as
on a cluster JAX does not detect by itself. A small wrapper around the command records which mixture rows each
process reads (and can slow steps down so that a test can kill a run between checkpoints).
"""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from spt_jax.model import sharding
from tests import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, BATCH = 8, 8

_WRAPPER = """
import json, os, runpy, sys, time
from spt_jax.data import mixture
log_path, delay = os.environ['SPT_TEST_ROWS'], float(os.environ.get('SPT_TEST_DELAY', '0'))
examples = mixture.Mixture.examples
def recorded(self, indices):
  indices = [int(i) for i in indices]
  with open(log_path, 'a') as f:
    f.write(json.dumps(indices) + '\\n')
  if delay and indices and indices[0] >= 2 * self.batch_size:
    time.sleep(delay)
  return examples(self, indices)
mixture.Mixture.examples = recorded
sys.argv = ['spt_jax.main'] + sys.argv[1:]
runpy.run_module('spt_jax.main', run_name='__main__')
"""


def _documents(folder: pathlib.Path, words: str, count: int, seed: int) -> None:
  rng = random.Random(seed)
  folder.mkdir()
  for i in range(count):
    (folder / f'{i:03d}.txt').write_text(
      ' '.join(' '.join(rng.choice(words.split()) for _ in range(rng.randint(4, 12))) + '.' for _ in range(30))
    )


@pytest.fixture(scope='module')
def corpora(tmp_path_factory):
  root = tmp_path_factory.mktemp('multiprocess')
  _documents(root / 'general', 'the a cat dog sat on mat and ran to house tree sun rain', 40, 0)
  _documents(root / 'domain', 'lemma proof qed intros apply rewrite induction nat', 20, 1)
  (root / 'wrapper.py').write_text(_WRAPPER)
  return root


def _start(corpora, workdir, processes: int, cache: str, delay: float = 0.0) -> list:
  """Starts the run as `processes` processes sharing 8 simulated devices; returns the Popen objects."""
  port = tiny.free_port()
  args = [
    sys.executable,
    str(corpora / 'wrapper.py'),
    '--config=configs/proofpile.py:test',
    '--config.stage=pretrain',
    f'--config.steps={STEPS}',
    '--config.checkpoint_every=2',
    '--config.eval_every=4',
    '--config.log_every=1',
    '--config.peak_flops=-1',
    f'--config.data.general=files:{corpora}/general/*.txt',
    f'--config.data.domain=files:{corpora}/domain/*.txt',
    f'--config.data.cache_dir={corpora}/{cache}',
    '--config.data.tokenizer_vocab_size=300',
    '--config.model.vocab_size=300',
    f'--workdir={workdir}',
  ]
  started = []
  for index in range(processes):
    env = dict(
      os.environ,
      PYTHONPATH=str(ROOT),
      JAX_PLATFORMS='cpu',
      SPT_TEST_DELAY=str(delay),
      **tiny.compile_cache_env(corpora / 'jax-cache'),  # Resumed runs reuse compiled steps.
      XLA_FLAGS=f'--xla_force_host_platform_device_count={8 // processes}',
      SPT_TEST_ROWS=str(workdir) + f'.rows-{index}-of-{processes}.jsonl',
    )
    if processes > 1:
      env.update(
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index)
      )
    log = open(str(workdir) + f'.log-{index}-of-{processes}', 'a')
    started.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return started


def _wait(processes, timeout=900) -> list:
  deadline = time.time() + timeout
  codes = []
  for process in processes:
    try:
      codes.append(process.wait(max(deadline - time.time(), 1)))
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
  return codes


def _run(corpora, workdir, processes: int, cache: str = 'cache') -> None:
  codes = _wait(_start(corpora, workdir, processes, cache))
  assert codes == [0] * processes, _tail(workdir)


def _tail(workdir) -> str:
  return '\n'.join(
    p.read_text()[-2500:] for p in sorted(pathlib.Path(workdir).parent.glob(pathlib.Path(workdir).name + '.log-*'))
  )


def _losses(workdir) -> dict:
  records = [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  steps = [r['step'] for r in records if 'train/loss' in r]
  assert steps == sorted(set(steps)), steps  # Each step logged once, in order, across restarts.
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}


def _kill_after_checkpoint(processes, workdir, step: int, sig=signal.SIGKILL) -> None:
  deadline = time.time() + 400
  while not (pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state').is_dir():
    assert time.time() < deadline and all(p.poll() is None for p in processes), _tail(workdir)
    time.sleep(0.2)
  for process in processes:  # The step folder appears when its asynchronous save has committed.
    process.send_signal(sig)
  _wait(processes)


def _same_losses(losses: dict, reference: dict) -> None:
  """Step for step; two processes sum gradients through gloo in another order: float32 rounding, no more."""
  assert sorted(losses) == sorted(reference)
  for step, loss in reference.items():
    assert abs(losses[step] - loss) <= 1e-6 * abs(loss), (step, losses[step], loss)


def _rows_read(workdir, processes: int) -> list:
  """Each process's example indices (one list per call of the mixture)."""
  return [
    [
      json.loads(line)
      for line in pathlib.Path(str(workdir) + f'.rows-{i}-of-{processes}.jsonl').read_text().splitlines()
    ]
    for i in range(processes)
  ]


@pytest.fixture(scope='module')
def reference(corpora):
  """One process × 8 devices, uninterrupted."""
  workdir = corpora / 'one'
  _run(corpora, workdir, 1)
  return _losses(workdir)


@pytest.mark.slow
def test_two_processes_match_one_and_each_reads_only_its_rows_and_resume_after_sigkill(corpora, reference):
  assert sorted(reference) == list(range(1, STEPS + 1))
  workdir = corpora / 'two'
  running = _start(corpora, workdir, 2, 'cache-two', delay=2.5)
  _kill_after_checkpoint(running, workdir, 4)
  assert not (workdir / 'summary.json').exists()
  _run(corpora, workdir, 2, 'cache-two')
  _same_losses(_losses(workdir), reference)
  for index, calls in enumerate(_rows_read(workdir, 2)):
    for indices in calls:
      assert len(indices) == BATCH // 2 and indices == list(range(indices[0], indices[0] + BATCH // 2))
      assert indices[0] % BATCH == index * BATCH // 2, (index, indices)  # Only its own half of each batch.
  # Process 1 waited for process 0's preparation; the result is the one a single process makes (own cache).
  one = json.loads(next((corpora / 'cache' / 'prepared').glob('*/metadata.json')).read_text())
  two = json.loads(next((corpora / 'cache-two' / 'prepared').glob('*/metadata.json')).read_text())
  assert one['shards'] == two['shards']
  assert 'waits for process 0 to prepare' in (corpora / 'two.log-1-of-2').read_text()


@pytest.mark.slow
def test_checkpoints_move_between_one_and_two_processes(corpora, reference):
  # Written by one process, resumed by two.
  workdir = corpora / 'one-then-two'
  running = _start(corpora, workdir, 1, 'cache', delay=2.5)
  _kill_after_checkpoint(running, workdir, 4)
  _run(corpora, workdir, 2)
  _same_losses(_losses(workdir), reference)
  # SIGTERM to one of two processes: both save the same step and exit 0; one process resumes.
  workdir = corpora / 'two-then-one'
  running = _start(corpora, workdir, 2, 'cache', delay=2.5)
  deadline = time.time() + 400
  while not (workdir / 'checkpoints' / '2' / 'state').is_dir():
    assert time.time() < deadline and all(p.poll() is None for p in running), _tail(workdir)
    time.sleep(0.2)
  running[1].send_signal(signal.SIGTERM)
  assert _wait(running) == [0, 0], _tail(workdir)
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['stop_reason'] == 'preempted' and 2 < summary['steps'] < STEPS, summary
  saved = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved[-1] == summary['steps']
  for index in range(2):  # Both processes took part in saving that step, and no later one.
    log = pathlib.Path(str(workdir) + f'.log-{index}-of-2').read_text()
    assert re.findall(r'Checkpoint (\d+) started', log)[-1] == str(summary['steps']), index
  _run(corpora, workdir, 1)
  _same_losses(_losses(workdir), reference)


_SHARED_SCRIPT = """
import sys
from spt_jax import cli
from spt_jax.model import sharding
def main(argv):
  sharding.initialize_distributed()
  sharding.check_shared_folder(sys.argv[1], 'workdir', wait_seconds=2)
  print('shared', flush=True)
cli.run(main)
"""


def test_a_workdir_that_processes_do_not_share_is_refused_on_every_process(tmp_path):
  """Two processes given different folders (as two hosts see two local disks) both stop with one line."""
  assert sharding_default('configs/proofpile.py:1b') == os.path.join('runs', 'proofpile_1b')
  assert sharding_default(str(ROOT / 'configs/proofpile.py')) == os.path.join('runs', 'proofpile_1b')  # Its default.
  script = tmp_path / 'shared.py'
  script.write_text(_SHARED_SCRIPT)
  for shared in (True, False):
    port = tiny.free_port()
    running = []
    for index in range(2):
      folder = tmp_path / ('same' if shared else f'host{index}')
      env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS='cpu',
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
        JAX_NUM_PROCESSES='2',
        JAX_PROCESS_ID=str(index),
      )
      running.append(
        subprocess.Popen(
          [sys.executable, str(script), str(folder)], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
      )
    outputs = [p.communicate(timeout=900) for p in running]
    if shared:
      assert [p.returncode for p in running] == [0, 0] and all('shared' in out for out, _ in outputs), outputs
    else:
      assert [p.returncode for p in running] == [1, 1], outputs
      for _, err in outputs:
        assert err.strip().splitlines()[-1].startswith('error: the workdir ') and 'not shared' in err
  # A relative workdir (here the default, runs/proofpile_test) would be a folder per host: refused at once.
  port, running = tiny.free_port(), []
  for index in range(2):
    env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
      JAX_NUM_PROCESSES='2',
      JAX_PROCESS_ID=str(index),
    )
    command = [sys.executable, '-m', 'spt_jax.main', f'--config={ROOT}/configs/proofpile.py:test']
    running.append(subprocess.Popen(command, cwd=tmp_path, env=dict(env, PYTHONPATH=str(ROOT)), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
  outputs = [p.communicate(timeout=900) for p in running]
  assert [p.returncode for p in running] == [1, 1], outputs
  for _, err in outputs:
    assert err.strip().splitlines()[-1] == (
      "error: the workdir 'runs/proofpile_test' is relative, so each of the 2 hosts would write its own; pass "
      '--workdir=gs://BUCKET/run (or an absolute path on a mount every host sees)'
    ), err[-2000:]
  assert not (tmp_path / 'runs').exists()


def sharding_default(config_arg):

  return sharding.default_workdir(config_arg)
