"""A workdir in a bucket (--workdir=gs://BUCKET/run): a local mirror pushed at checkpoints, checkpoints in the bucket.

The mirror's logic is tested on fsspec's in-memory store. The runs are tested against a Cloud Storage stand-in
on loopback (tests/gcs_stand_in.py, the JSON API's object calls) reached by the clients a run uses on the real
service: gcsfs (the mirror, and orbax's own files through etils' fsspec backend) at STORAGE_EMULATOR_HOST, and
TensorStore (orbax's arrays) at TENSORSTORE_GCS_HTTP_URL.
"""

import importlib.util
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import fsspec
import pytest

from spt_jax.storage import bucket, layout
from tests import gcs_stand_in, test_main, tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(name='memory_url')
def memory_store():
  url = f'memory://bkt-{random.getrandbits(32):08x}/run'
  yield url
  fsspec.filesystem('memory').rm(url.removeprefix('memory://').split('/')[0], recursive=True)


def _files(folder) -> dict:
  return {
    os.path.relpath(os.path.join(root, name), folder): pathlib.Path(root, name).read_text()
    for root, _, names in os.walk(folder)
    for name in names
  }


def _remote(url) -> dict:
  fs, root = bucket.filesystem(url)
  return {path[len(root) + 1 :]: fs.cat_file(path).decode() for path in fs.find(root)}


def test_a_mirror_pulls_the_bucket_pushes_what_changed_and_leaves_checkpoints_to_the_bucket(memory_url, tmp_path):
  fs, root = bucket.filesystem(memory_url)
  for relative, text in {'config.json': '{}', 'pretrain/metrics.jsonl': '1\n', 'checkpoints/4/state/x': 'ckpt'}.items():
    fs.pipe_file(f'{root}/{relative}', text.encode())
  fs.pipe_file(f'{root}/{layout.MIRRORED}', b'first\n')
  machine = bucket.Mirror(memory_url, tmp_path / 'a')
  try:
    assert machine.pull() == 2
    assert _files(machine.local) == {'config.json': '{}', 'pretrain/metrics.jsonl': '1\n', layout.MIRRORED: 'first\n'}
    # The run appends, writes, removes; a push copies exactly that and gives both sides a new token.
    (tmp_path / 'a/pretrain/metrics.jsonl').write_text('1\n2\n')
    (tmp_path / 'a/summary.json').write_text('{"steps": 2}')
    (tmp_path / 'a/config.json').unlink()
    (tmp_path / 'a' / layout.LOCK).write_text('pid 1')
    assert machine.push() == 2
    pushed = _remote(memory_url)
    assert pushed.pop(layout.MIRRORED) == _files(machine.local)[layout.MIRRORED] != 'first\n'
    assert pushed == {
      'pretrain/metrics.jsonl': '1\n2\n',
      'summary.json': '{"steps": 2}',
      'checkpoints/4/state/x': 'ckpt',
    }
    assert machine.push() == 0  # Nothing changed since.
    # This machine, cut off after more lines: its mirror is newer than the bucket and is kept.
    (tmp_path / 'a/pretrain/metrics.jsonl').write_text('1\n2\n3\n')
    assert bucket.Mirror(memory_url, tmp_path / 'a').pull() == 0
    assert (tmp_path / 'a/pretrain/metrics.jsonl').read_text() == '1\n2\n3\n'
    # A fresh machine gets the bucket's copy; once it pushes, the first machine's mirror is stale and replaced.
    other = bucket.Mirror(memory_url, tmp_path / 'b')
    assert other.pull() == 2 and (tmp_path / 'b/pretrain/metrics.jsonl').read_text() == '1\n2\n'
    (tmp_path / 'b/report.md').write_text('# report')
    other.push()
    assert bucket.Mirror(memory_url, tmp_path / 'a').pull() == 3
    assert not (tmp_path / 'a/pretrain/metrics.jsonl').read_text().endswith('3\n')
    assert set(_files(tmp_path / 'a')) == {
      'pretrain/metrics.jsonl',
      'summary.json',
      'report.md',
      layout.MIRRORED,
      '.lock',
    }
    # Another process pushes only its own log and leaves the token to process 0.
    token = _remote(memory_url)[layout.MIRRORED]
    (tmp_path / 'b/log.1.txt').write_text('host 1')
    (tmp_path / 'b/other.txt').write_text('not its own')
    assert other.push(only='log.1.txt') == 1
    assert _remote(memory_url)['log.1.txt'] == 'host 1' and 'other.txt' not in _remote(memory_url)
    assert _remote(memory_url)[layout.MIRRORED] == token
    # Checkpoints are written where the mirror stands for: the bucket.
    assert bucket.located(str(tmp_path / 'b/pretrain/checkpoints')) == f'{memory_url}/pretrain/checkpoints'
    assert bucket.located(str(tmp_path / 'b')) == memory_url
    assert bucket.located(str(tmp_path / 'c/checkpoints')) == str(tmp_path / 'c/checkpoints')
    # What the checkpoint code asks of a store: a step's folder copied (a WSD decay's seed), folders listed.
    bucket.copy_folder(f'{memory_url}/checkpoints/4', f'{memory_url}/decay/checkpoints/4')
    assert _remote(memory_url)['decay/checkpoints/4/state/x'] == 'ckpt'
    assert bucket.listdir(f'{memory_url}/checkpoints') == ['4'] and bucket.listdir(f'{memory_url}/nothing') == []
    assert bucket.isdir(f'{memory_url}/checkpoints/4') and not bucket.exists(f'{memory_url}/checkpoints/8')
  finally:
    for mirror in list(bucket._MIRRORS):
      mirror.close()


def test_a_push_that_fails_during_a_run_warns_and_the_next_one_catches_up(memory_url, tmp_path, monkeypatch, caplog):
  mirror = bucket.Mirror(memory_url, tmp_path / 'm')
  try:
    mirror.pull()
    (tmp_path / 'm/metrics.jsonl').write_text('1\n')
    fs = bucket.filesystem(memory_url)[0]
    monkeypatch.setattr(
      type(fs), 'put_file', lambda *args, **kwargs: (_ for _ in ()).throw(OSError('503 from the store'))
    )
    bucket.push_all()  # At a checkpoint: a warning, the run goes on.
    assert 'Could not copy' in caplog.text and '503 from the store' in caplog.text
    assert 'metrics.jsonl' not in _remote(memory_url)
    with pytest.raises(OSError, match='503'):  # At the end of the run: the error itself.
      bucket.push_all(final=True)
    monkeypatch.undo()  # The store answers again.
    bucket.push_all()
    assert _remote(memory_url)['metrics.jsonl'] == '1\n'
  finally:
    mirror.close()


def test_a_bucket_that_cannot_be_written_is_one_line(tmp_path):
  with pytest.raises(ValueError, match=r'^nosuchscheme://b/run: Protocol not known: nosuchscheme; a store URL starts'):
    bucket.check('nosuchscheme://b/run')
  if importlib.util.find_spec('s3fs') is None:
    with pytest.raises(ValueError, match=r'^reading s3://b/run needs a package that is not installed'):
      bucket.check('s3://b/run')
  (tmp_path / 'a-file').write_text('not a folder')
  with pytest.raises(
    ValueError, match=r'^the workdir local://.*/a-file/run cannot be written \((NotADirectory|FileNotFound)'
  ):
    bucket.check(f'local://{tmp_path}/a-file/run')
  bucket.check(f'local://{tmp_path}')  # A store that can be written passes and keeps nothing of the probe.
  assert [p.name for p in tmp_path.iterdir()] == ['a-file']
  assert bucket.mirror_folder('gs://bkt/a/../run/', '/cache') == '/cache/workdirs/gs/bkt/a/run'


# Runs against the Cloud Storage stand-in.


@pytest.fixture(scope='module', name='gcs')
def cloud_storage_stand_in(tmp_path_factory):
  """(environment that points the clients at the stand-in, the test's own gcsfs on it, a folder of documents)."""
  pytest.importorskip('gcsfs', reason='pip install gcsfs (the test extra has it)')
  from gcsfs import core  # noqa: PLC0415  after importorskip; the plain client (the default one probes by gRPC)

  root = tmp_path_factory.mktemp('gcs')
  server, _ = gcs_stand_in.serve()
  address = f'http://127.0.0.1:{server.server_address[1]}'
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    STORAGE_EMULATOR_HOST=address,  # gcsfs
    TENSORSTORE_GCS_HTTP_URL=address,
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',  # Its bucket-type probe speaks gRPC.
    NO_GCE_CHECK='True',  # No metadata server to ask for credentials: anonymous, as the stand-in expects.
    GCE_METADATA_HOST='127.0.0.1:1',
    GCE_METADATA_IP='127.0.0.1:1',
  )
  test_main._write_documents(root / 'general', 'the a cat dog sat on mat and ran to house tree sun rain'.split(), 30, 0)
  test_main._write_documents(root / 'domain', 'lemma proof qed intros apply rewrite induction nat'.split(), 15, 1)
  yield env, core.GCSFileSystem(endpoint_url=address, token='anon'), root
  server.shutdown()


def _command(root, workdir, *overrides) -> list:
  return [
    sys.executable,
    '-m',
    'spt_jax.main',
    *test_main.local_files_run(root, workdir),
    '--config.steps=6',
    *overrides,
  ]


def _run(env, root, workdir, *overrides):
  out = subprocess.run(
    _command(root, workdir, *overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out


_SLOW = """
import runpy, sys, time
from spt_jax.data import mixture
examples = mixture.Mixture.examples
def slow(self, indices):
  time.sleep(0.3)  # Each batch: a step or so for the test to kill the run in.
  return examples(self, indices)
mixture.Mixture.examples = slow
sys.argv = ['spt_jax.main'] + sys.argv[1:]
runpy.run_module('spt_jax.main', run_name='__main__')
"""


def _mirror(root, name) -> pathlib.Path:
  return root / 'cache' / 'workdirs' / 'gs' / 'bkt' / name


def _metrics(text: str) -> list:
  return [{k: v for k, v in json.loads(line).items() if not k.startswith('perf/')} for line in text.splitlines()]


@pytest.mark.slow
def test_a_pipeline_in_a_bucket_writes_everything_there_and_a_fresh_machine_carries_on(gcs):
  env, store, root = gcs
  out = _run(env, root, 'gs://bkt/pipeline', '--config.stage=pipeline')
  assert 'report: gs://bkt/pipeline/report.md' in out.stderr
  names = {path.removeprefix('bkt/pipeline/') for path in store.find('bkt/pipeline')}
  (point,) = {name.split('/')[1] for name in names if name.startswith('finetune/')}
  for stage in ('pretrain', f'finetune/{point}'):
    assert {f'{stage}/{name}' for name in ('metrics.jsonl', 'summary.json', 'config.json', 'tokenizer.json')} <= names
    assert any(name.startswith(f'{stage}/events.out.tfevents') for name in names)  # TensorBoard.
    assert any(name.startswith(f'{stage}/checkpoints/') and name.endswith('/commit_success.txt') for name in names)
  assert {'summary.json', 'report.md', 'report.png', 'config.json', 'log.txt'} <= names
  mirror = _mirror(root, 'pipeline')
  assert not list(mirror.rglob(layout.CHECKPOINTS))  # Checkpoints only in the bucket.
  for name in ('summary.json', 'pretrain/metrics.jsonl', f'finetune/{point}/summary.json', 'report.md'):
    assert store.cat_file(f'bkt/pipeline/{name}') == (mirror / name).read_bytes(), name
  finetune = json.loads(store.cat_file(f'bkt/pipeline/finetune/{point}/summary.json'))
  assert finetune['workdir'] == f'gs://bkt/pipeline/finetune/{point}'
  assert finetune['init_checkpoint'].startswith('gs://bkt/pipeline/pretrain/checkpoints/')  # Read from the bucket.
  # The finetuned model sampled straight from the bucket (its best checkpoint, the run's tokenizer).
  sampled = subprocess.run(
    [sys.executable, '-m', 'spt_jax.sample', f'--checkpoint=gs://bkt/pipeline/finetune/{point}', '--prompt=lemma',
     '--max_new_tokens=4'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
  )  # fmt: skip
  assert sampled.returncode == 0 and '--- sample 0 (4 tokens)' in sampled.stdout, sampled.stderr[-3000:]
  # A fresh machine (no mirror): the bucket's files come back and every stage is seen finished.
  before = {name: store.cat_file(f'bkt/pipeline/{name}') for name in ('summary.json', 'pretrain/metrics.jsonl')}
  os.rename(mirror, mirror.with_name('old'))
  again = _run(env, root, 'gs://bkt/pipeline', '--config.stage=pipeline')
  assert 'files of gs://bkt/pipeline copied to its local mirror' in again.stdout
  assert again.stderr.count('already finished') == 2, again.stderr[-3000:]
  assert json.loads(store.cat_file('bkt/pipeline/summary.json'))['stop_reason'] == 'budget'
  assert store.cat_file('bkt/pipeline/pretrain/metrics.jsonl') == before['pretrain/metrics.jsonl']


_STEPS = ('--config.stage=pretrain', '--config.steps=12', '--config.checkpoint_every=4')


@pytest.fixture(scope='module', name='reference')
def uninterrupted_run(gcs) -> list:
  """The metrics of one process run uninterrupted in the bucket."""
  env, store, root = gcs
  _run(env, root, 'gs://bkt/reference', *_STEPS)
  reference = _metrics(store.cat_file('bkt/reference/metrics.jsonl').decode())
  assert [record['step'] for record in reference][-1] == 12
  return reference


@pytest.mark.slow
def test_a_run_killed_in_a_bucket_resumes_on_a_fresh_machine_as_if_never_stopped(gcs, reference):
  env, store, root = gcs
  (root / 'slow.py').write_text(_SLOW)
  running = subprocess.Popen(
    [sys.executable, str(root / 'slow.py'), *_command(root, 'gs://bkt/killed', *_STEPS)[3:]],
    cwd=ROOT,
    env=dict(env, PYTHONPATH=str(ROOT)),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 600
  while not store.exists('bkt/killed/checkpoints/4/commit_success.txt'):
    assert running.poll() is None and time.time() < deadline
    time.sleep(0.05)
  running.send_signal(signal.SIGKILL)
  running.wait()
  assert not store.exists('bkt/killed/summary.json')  # Killed before its end (each step waits 0.3 s for data).
  os.rename(_mirror(root, 'killed'), _mirror(root, 'killed-machine'))  # A fresh machine.
  out = _run(env, root, 'gs://bkt/killed', *_STEPS)
  assert re.search(r'Resumed gs://bkt/killed at step (4|8)\b', out.stderr), out.stderr[-3000:]  # From the bucket.
  assert _metrics(store.cat_file('bkt/killed/metrics.jsonl').decode()) == reference


@pytest.mark.slow
def test_two_processes_share_the_bucket_each_writes_its_shards_and_its_log(gcs, reference):
  """Two processes × 4 simulated devices (two hosts of a pod, each with its own mirror) against one process."""
  env, store, root = gcs
  port = tiny.free_port()
  running = [
    subprocess.Popen(
      _command(root, 'gs://bkt/two', *_STEPS),
      cwd=ROOT,
      env=dict(
        env,
        XLA_FLAGS='--xla_force_host_platform_device_count=4',
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
        JAX_NUM_PROCESSES='2',
        JAX_PROCESS_ID=str(index),
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index in range(2)
  ]
  outputs = [process.communicate(timeout=900) for process in running]
  assert [process.returncode for process in running] == [0, 0], [err[-2000:] for _, err in outputs]
  names = {path.removeprefix('bkt/two/') for path in store.find('bkt/two')}
  for index in range(2):  # Each host's shards of the last step, and each host's own log with its progress lines.
    assert any(name.startswith(f'checkpoints/12/state/ocdbt.process_{index}/') for name in names), index
    assert 'step 12/12' in store.cat_file(f'bkt/two/log.{index}.txt').decode()
  losses = {record['step']: record['train/loss'] for record in reference if 'train/loss' in record}
  two = {record['step']: record['train/loss'] for record in _metrics(store.cat_file('bkt/two/metrics.jsonl').decode())
         if 'train/loss' in record}  # fmt: skip
  assert sorted(two) == sorted(losses)
  for step, loss in losses.items():  # Gradients summed in another order over 8 devices: float32 rounding.
    assert two[step] == pytest.approx(loss, rel=1e-5), step
