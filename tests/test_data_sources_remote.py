"""Remote and hub-style sources on local stand-ins: token files over a loopback HTTP server, a datasets folder."""

import collections
import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from spt_jax.data import mixture as mixture_lib
from spt_jax.data import paper_data, remote
from spt_jax.data import prepare as prepare_lib
from spt_jax.data import sources as sources_lib
from spt_jax.data import tokenizer as tokenizer_lib
from spt_jax.train import validate
from tests import tiny

L = 32
EOS = 0


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
  """A static file server that honours Range requests (as object stores do) and logs what it sends."""

  def log_message(self, *args):
    pass

  def send_head(self):
    path = self.translate_path(self.path)
    match = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range', ''))
    if os.path.isdir(path) or not match:
      if self.command == 'GET' and not os.path.isdir(path) and os.path.isfile(path):
        self.server.log.append((self.path, 0, os.path.getsize(path), False))
      return super().send_head()
    size = os.path.getsize(path)
    start = int(match.group(1))
    end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
    file = open(path, 'rb')
    file.seek(start)
    self.send_response(206)
    self.send_header('Content-Type', 'application/octet-stream')
    self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
    self.send_header('Content-Length', str(end - start + 1))
    self.send_header('Accept-Ranges', 'bytes')
    self.end_headers()
    self.server.log.append((self.path, start, end - start + 1, True))
    self._left = end - start + 1
    return file

  def copyfile(self, source, outputfile):
    left = getattr(self, '_left', None)
    if left is None:
      return super().copyfile(source, outputfile)
    outputfile.write(source.read(left))


@pytest.fixture
def server(tmp_path):
  root = tmp_path / 'served'
  root.mkdir()
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_RangeHandler, directory=str(root)))
  httpd.log = []
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield root, f'http://127.0.0.1:{httpd.server_address[1]}', httpd.log
  httpd.shutdown()


def _token_files(folder, sizes=(400, 400, 400)):
  rng = np.random.default_rng(1)
  files = []
  for number, count in enumerate(sizes):
    documents = [np.append(rng.integers(1, 250, rng.integers(5, 60)), EOS) for _ in range(count)]
    files.append(np.concatenate(documents).astype(np.uint16))
    files[-1].tofile(folder / f'part-{number:03d}-00000.npy')  # OLMo's names; raw arrays despite the suffix.
  return files


def _tokenizer(tmp_path):
  """A byte-level BPE whose EOS is id 0, saved as a file (token sources name their tokenizer)."""
  corpus = tmp_path / 'corpus'
  corpus.mkdir(exist_ok=True)
  for i in range(20):
    (corpus / f'{i}.txt').write_text(f'lemma {i} proof qed the cat sat on the mat ' * 20)
  tokenizer = tokenizer_lib.train_bpe({'general': f'files:{corpus}'}, 300, str(tmp_path / 'cache'))
  assert tokenizer_lib.eos_id(tokenizer) == EOS
  tokenizer.save(str(tmp_path / 'tok.json'))
  return str(tmp_path / 'tok.json'), f'files:{corpus}'


def _config(tmp_path, general, domain):
  tokenizer, _ = _tokenizer(tmp_path)
  return tiny.data_config(
    tmp_path / 'cache',
    general=general,
    domain=domain,
    tokenizer=tokenizer,
    test_fraction=0.0,
    test_tokens=300,
    domain_train_sequences=4,
  )


def _sent(log, ranged=None) -> int:
  return sum(length for _, _, length, was_ranged in log if ranged is None or was_ranged == ranged)


def test_remote_token_files_are_read_by_range_only_as_far_as_the_budget_needs(tmp_path, server):
  root, url, log = server
  files = _token_files(root)
  _, corpus = _tokenizer(tmp_path)
  config = _config(tmp_path, f'tokens:{url}/part-*.npy?dtype=uint16', corpus)
  config.data.general_max_tokens = len(files[0]) + 100  # Needs two of the three files.
  data = prepare_lib.prepare(config)
  assert sorted({entry[0] for entry in log}) == ['/part-000-00000.npy', '/part-001-00000.npy']
  assert _sent(log, ranged=False) == 0  # Every read is a ranged read...
  assert _sent(log) < (files[0].nbytes + files[1].nbytes) / 2  # ...of a small part of the files: nothing whole.
  info = data.metadata['sources']['general']
  assert info['files_used'] == 2 and info['files_listed'] == 3
  entries = data.metadata['in_place']['general']['files']
  assert [e['path'] for e in entries] == [f'{url}/part-000-00000.npy', f'{url}/part-001-00000.npy']
  assert [e['pin']['size'] for e in entries] == [files[0].nbytes, files[1].nbytes]
  assert not (tmp_path / 'cache' / 'remote').exists()  # No file was fetched whole.
  rows = data.train['general']
  assert np.array_equal(np.asarray(rows[0]), files[0][: L + 1])
  last = len(files[0]) // (L + 1) - 1
  assert np.array_equal(rows[[last, last + 1]], [files[0][last * (L + 1) :][: L + 1], files[1][: L + 1]])
  # Another budget is another prepared set over the same files, read by range again.
  log.clear()
  config.data.general_max_tokens = len(files[0]) + 200
  prepare_lib.prepare(config)
  assert _sent(log, ranged=False) == 0 and _sent(log) < (files[0].nbytes + files[1].nbytes) / 2
  # With no budget, every listed file is used.
  config.data.general_max_tokens = 0
  assert prepare_lib.prepare(config).metadata['sources']['general']['files_used'] == 3


def test_a_host_reads_only_its_share_by_range_and_the_cache_keeps_its_bound(tmp_path, server, monkeypatch):
  """Two hosts of a job (processes 0 and 1 of 2) read their local batches of a Dolma-style general set: each
  transfers exactly the rows its batches hold, never a whole file, and the row cache stays within its bound."""
  root, url, log = server
  files = _token_files(root, sizes=(500, 500))
  _, corpus = _tokenizer(tmp_path)
  config = _config(tmp_path, f'tokens:{url}/part-*.npy?dtype=uint16', corpus)
  row_bytes = (L + 1) * 2
  config.data.remote_cache_bytes = 10 * row_bytes
  prepare_lib.prepare(config)
  read = collections.defaultdict(list)  # (url, row) of every row a host asks for.
  original = remote.RemoteTokens.read_rows

  def recorded(self, numbers):
    read[host].extend((self.url, int(n)) for n in numbers)
    return original(self, numbers)

  monkeypatch.setattr(remote.RemoteTokens, 'read_rows', recorded)
  caches, steps, batch = {}, 6, 8
  for host in (0, 1):
    shutil.rmtree(tmp_path / 'cache' / 'remote-rows')  # Each host has its own disk.
    data = prepare_lib.prepare(config)  # Opening checks each file's pin: its two end rows, past the cache.
    cache = data.train['general']._views[0].tokens.cache
    assert data.train['general'].remote  # The loop reads more steps at once from such a source.
    mixture = mixture_lib.Mixture(data.train, [(0, {'domain': 0.25, 'general': 0.75})], batch, L, seed=3)
    log.clear()
    opened = cache.fetched_bytes
    for step in range(steps):
      mixture.local_batch(step, host, 2)
      assert sum(p.stat().st_size for p in cache.folder.rglob('*') if p.is_file()) <= config.data.remote_cache_bytes
    share = len(set(read[host])) * row_bytes
    assert len(read[host]) == len(set(read[host])) > steps  # This host's general rows (each once in an epoch)...
    assert _sent(log) == share and _sent(log, ranged=False) == 0  # ...are all it transferred, by ranged reads.
    assert cache.fetched_bytes - opened == share
    log.clear()
    mixture.local_batch(steps - 1, host, 2)  # Its last step again: every row from the cache.
    assert _sent(log) == 0
    caches[host] = cache
  assert not set(read[0]) & set(read[1])  # Disjoint shares: together the hosts read each row once.
  assert sum(c.fetched_bytes for c in caches.values()) < sum(f.nbytes for f in files) / 4


def test_a_remote_file_that_changed_stops_the_run_with_one_line(tmp_path, server):
  root, url, _ = server
  files = _token_files(root, sizes=(300, 300))
  _, corpus = _tokenizer(tmp_path)
  config = _config(tmp_path, f'tokens:{url}/part-*.npy?dtype=uint16', corpus)
  prepare_lib.prepare(config)
  first = root / 'part-000-00000.npy'
  np.append(files[0], [7, EOS]).astype(np.uint16).tofile(first)  # Grown by a document.
  with pytest.raises(ValueError, match='changed since the data was prepared') as error:
    prepare_lib.prepare(config)
  assert '\n' not in str(error.value) and f'{url}/part-000-00000.npy' in str(error.value)
  changed = files[0].copy()
  changed[3] += 1  # Same size, another first row.
  changed.tofile(first)
  with pytest.raises(ValueError, match='first and last rows differ'):
    prepare_lib.prepare(config)
  files[0].tofile(first)
  assert len(prepare_lib.prepare(config).train['general']) > 0  # Restored: the same files open again.


def test_a_row_cache_smaller_than_one_row_is_refused_before_anything_is_read(tmp_path):
  config = tiny.tiny_config(**{'data.general': 'tokens:http://127.0.0.1:9/part-000.npy?dtype=uint16'})
  config.data.remote_cache_bytes = 10
  with pytest.raises(ValueError, match=r'remote_cache_bytes=10 is smaller than one row .* \(17 tokens: 34 bytes\)'):
    validate.check(config)
  config.data.remote_cache_bytes = 1 << 20  # Then the file itself: one line before anything is compiled.
  with pytest.raises(ValueError, match=r"source 'general': cannot reach http://127.0.0.1:9/part-000.npy") as error:
    validate.check(config)
  assert '\n' not in str(error.value)


def test_an_interrupted_fetch_resumes_where_it_stopped(tmp_path, server):
  root, url, log = server
  files = _token_files(root, sizes=(600,))
  source = f'{url}/part-000-00000.npy'
  cache_root = tmp_path / 'cache'
  target = remote.local_path(source, cache_root)
  target.parent.mkdir(parents=True)
  half = files[0].nbytes // 2
  target.with_name(target.name + '.part').write_bytes(files[0].tobytes()[:half])  # What a killed fetch left.
  path = remote.fetch(source, cache_root)
  assert any(entry[:2] == ('/part-000-00000.npy', half) for entry in log)
  assert not any(entry[1] == 0 for entry in log)
  assert path.read_bytes() == files[0].tobytes()
  assert json.loads(path.with_name(path.name + '.json').read_text())['size'] == files[0].nbytes


def test_a_list_file_with_a_wrong_checksum_is_a_one_line_error(tmp_path, server):
  root, url, _ = server
  _token_files(root, sizes=(50,))
  listing = tmp_path / 'files.txt'
  listing.write_text(f'# Dolma stand-in\n{url}/part-000-00000.npy {"0" * 64}\n')
  source = sources_lib.parse(f'tokens:@{listing}?dtype=uint16', 'general')
  assert source.paths == [f'{url}/part-000-00000.npy']
  with pytest.raises(ValueError, match='has sha256 .* not the 0000') as error:
    remote.fetch(source.paths[0], tmp_path / 'cache', source.expected_sha256[source.paths[0]])
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='cannot reach'):
    remote.fetch(f'{url}/missing.npy', tmp_path / 'cache')


def _hub_folder(tmp_path):
  """A folder `datasets` loads like a hub dataset: data/train-*.jsonl with a text and a source field."""
  folder = tmp_path / 'music-pile'
  (folder / 'data').mkdir(parents=True)
  rng = np.random.default_rng(0)
  words = 'X: T: M: K: abc cde |: :| fga ga'.split()
  for shard in range(2):
    with open(folder / 'data' / f'train-0000{shard}-of-00002.jsonl', 'w') as f:
      for i in range(60):
        text = ' '.join(rng.choice(words, rng.integers(20, 80)))
        f.write(json.dumps({'text': f'tune {shard}-{i} {text}', 'src': ['irishman', 'wiki'][i % 2]}) + '\n')
  return folder


def test_hf_source_streams_a_local_hub_style_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  folder = _hub_folder(tmp_path)
  source = sources_lib.parse(f'hf:{folder}?split=train&field=text&where=src=irishman', 'domain')
  documents = list(source.documents())
  assert len(documents) == 60 and all(d.startswith('tune ') for d in documents)
  assert documents[0].startswith('tune 0-0 ') and documents[1].startswith('tune 0-2 ')
  with pytest.raises(ValueError, match="no field 'body'"):
    list(sources_lib.parse(f'hf:{folder}?field=body', 'domain').documents())
  with pytest.raises(ValueError, match='FIELD=VALUE'):
    sources_lib.parse(f'hf:{folder}?where=src', 'domain')
  # Prepared as a domain set next to a token general set, like the paper presets.
  (tmp_path / 'tokens').mkdir()
  _token_files(tmp_path / 'tokens', sizes=(300,))
  config = _config(tmp_path, f'tokens:{tmp_path}/tokens/*.npy?dtype=uint16', f'hf:{folder}?split=train&field=text')
  data = prepare_lib.prepare(config)
  assert data.metadata['sources']['domain']['documents'] == 120 and len(data.train['domain']) > 0


@pytest.mark.slow
def test_the_paper_preset_runs_end_to_end_on_stand_ins_of_its_data(tmp_path, server, monkeypatch):
  """`python -m spt_jax.main --config=configs/proofpile.py` without --workdir: Dolma-style token files over HTTP,
  a hub-style domain folder through `datasets`; only the model is shrunk (a CPU cannot run OLMo-1B)."""

  root, url, log = server
  _token_files(root)
  folder = _hub_folder(tmp_path)
  tokenizer, _ = _tokenizer(tmp_path)
  vocab = tokenizer_lib.tokenizers.Tokenizer.from_file(tokenizer).get_vocab_size()
  repo = pathlib.Path(__file__).resolve().parents[1]
  assert paper_data.PROOFPILE.startswith('hub:') and paper_data.DOLMA_OLMO_1B.startswith('tokens:@')
  overrides = dict(
    stage='pretrain',
    steps=3,
    tokens=3 * 8 * L,
    batch_size=8,
    eval_every=0,
    eval_sequences=8,
    log_every=1,
    checkpoint_every=3,
    peak_flops=-1,
    **{
      'data.general_max_tokens': 3 * 8 * L,
      'data.general': f'tokens:{url}/part-*.npy?dtype=uint16',
      'data.domain': f'hf:{folder}?split=train&field=text',
      'data.tokenizer': tokenizer,
      'data.seq_len': L,
      'data.test_tokens': 300,
      'data.cache_dir': str(tmp_path / 'cache'),
      'schedule.warmup_steps': 1,
      'schedule.horizon_tokens': 3 * 8 * L,
      'model.d_model': 64,
      'model.mlp_dim': 256,
      'model.n_heads': 4,
      'model.n_layers': 2,
      'model.vocab_size': vocab,
      'model.dtype': 'float32',
      'model.remat_policy': 'none',
    },
  )
  env = dict(
    os.environ, PYTHONPATH=str(repo), JAX_PLATFORMS='cpu', HF_DATASETS_OFFLINE='1', HF_HOME=str(tmp_path / 'hf')
  )
  result = subprocess.run(
    [sys.executable, '-m', 'spt_jax.main', f'--config={repo}/configs/proofpile.py']
    + [f'--config.{k}={v}' for k, v in overrides.items()],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'the run writes to runs/proofpile_1b' in result.stdout
  summary = json.loads((tmp_path / 'runs' / 'proofpile_1b' / 'summary.json').read_text())
  assert summary['steps'] == 3 and summary['stop_reason'] == 'budget'
  assert sorted({entry[0] for entry in log}) == ['/part-000-00000.npy']  # 768 training tokens need one file.
