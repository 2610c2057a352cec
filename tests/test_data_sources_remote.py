"""Remote and hub-style sources on local stand-ins: token files over a loopback HTTP server, a datasets folder."""

import functools
import hashlib
import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import threading

import ml_collections
import numpy as np
import pytest

from spt_jax.data import paper_data, remote
from spt_jax.data import prepare as prepare_lib
from spt_jax.data import sources as sources_lib
from spt_jax.data import tokenizer as tokenizer_lib

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
      if self.command == 'GET' and not os.path.isdir(path):
        self.server.log.append((self.path, 0))
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
    self.server.log.append((self.path, start))
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
  config = ml_collections.ConfigDict()
  config.seed, config.steps, config.batch_size, config.tokens = 0, 0, 8, 20_000
  config.data = ml_collections.ConfigDict(
    dict(
      seq_len=L,
      general=general,
      domain=domain,
      domain_max_tokens=0,
      general_max_tokens=0,
      tokenizer=tokenizer,
      tokenizer_vocab_size=300,
      test_fraction=0.0,
      test_tokens=300,
      domain_train_sequences=4,
      valid_tokens=0,
      cache_dir=str(tmp_path / 'cache'),
      num_workers=1,
      keep_tokenized=True,
    )
  )
  config.extra_eval = ml_collections.ConfigDict()
  return config


def test_remote_token_files_fetched_once_only_as_many_as_the_budget_needs(tmp_path, server):
  root, url, log = server
  files = _token_files(root)
  _, corpus = _tokenizer(tmp_path)
  config = _config(tmp_path, f'tokens:{url}/part-*.npy?dtype=uint16', corpus)
  config.data.general_max_tokens = len(files[0]) + 100  # Needs two of the three files.
  data = prepare_lib.prepare(config)
  fetched = sorted({path for path, _ in log})
  assert fetched == ['/part-000-00000.npy', '/part-001-00000.npy']
  info = data.metadata['sources']['general']
  assert info['files_used'] == 2 and info['files_listed'] == 3
  assert np.array_equal(np.asarray(data.train['general'][0]), files[0][: L + 1])
  for path in data.metadata['in_place']['general']['files']:
    record = json.loads(open(path['path'] + '.json').read())
    assert record['sha256'] == hashlib.sha256(open(path['path'], 'rb').read()).hexdigest()
  # Another budget is another prepared set, over the same fetched files: nothing is fetched again.
  log.clear()
  config.data.general_max_tokens = len(files[0]) + 200
  prepare_lib.prepare(config)
  assert not log
  # With no budget, every listed file is used.
  config.data.general_max_tokens = 0
  assert prepare_lib.prepare(config).metadata['sources']['general']['files_used'] == 3


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
  assert ('/part-000-00000.npy', half) in log and not any(start == 0 for _, start in log)
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
  assert sorted({path for path, _ in log}) == ['/part-000-00000.npy']  # 768 training tokens need one file.
