"""hub: sources on a loopback server in the Hub's layout: the paper's datasets as hub_datasets.py records them."""

import functools
import gzip
import hashlib
import http.server
import json
import os
import pathlib
import re
import sys
import threading
import types
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import chempile, musicpile, proofpile
from spt_jax.data import hub_datasets, paper_data
from spt_jax.data import prepare as prepare_lib
from spt_jax.data import sources as sources_lib
from spt_jax.data import tokenizer as tokenizer_lib
from tests import tiny

L = 32
PAGE = 4  # Tree listings come in pages this long, as the Hub pages them (a Link header to the next).
IRISHMAN = 'https://huggingface.co/data_file/sander-wood/irishman'
MUSIC_CHAT = 'constructed from OpenChat, IrishMAN and KernScores'
GENERAL = ('pile', 'Wikipedia', 'GPT4-Alpaca')


class _HubHandler(http.server.SimpleHTTPRequestHandler):
  """The Hub's endpoints over a folder: tree and revision APIs, resolve (parquet redirected to a CDN path), Range."""

  def log_message(self, *args):
    pass

  def do_GET(self):
    path = urllib.parse.urlsplit(self.path)
    match = re.fullmatch(r'/api/datasets/([^/]+/[^/]+)/(tree|revision)/([^/]+)(?:/(.*))?', path.path)
    if match:
      return self._api(*match.groups(), urllib.parse.parse_qs(path.query))
    match = re.fullmatch(r'/datasets/(.+)', urllib.parse.unquote(path.path))
    if match and match.group(1).endswith('.parquet'):
      self.send_response(302)
      self.send_header('Location', f'/cdn/{match.group(1)}')
      self.end_headers()
      return None
    self.server.log.append(urllib.parse.unquote(path.path))
    return self._ranged_file(self.translate_path(path.path.replace('/cdn/', '/datasets/', 1)))

  def _api(self, repo, endpoint, revision, folder, query):
    revision, folder = urllib.parse.unquote(revision), urllib.parse.unquote(folder or '')
    base = pathlib.Path(self.directory) / 'datasets' / repo
    if not base.is_dir():
      return self._json(404, {'error': 'Repository not found'}, 'RepoNotFound')
    refs = base / 'refs' / revision
    commit = refs.read_text().strip() if refs.is_file() else revision
    root = base / 'resolve' / commit
    if not root.is_dir():
      return self._json(404, {'error': 'Invalid rev id'}, 'RevisionNotFound')
    if endpoint == 'revision':
      return self._json(200, {'id': repo, 'sha': commit})
    where = root / folder
    if not where.is_dir():
      return self._json(404, {'error': 'Entry not found'}, 'EntryNotFound')
    entries = []
    for child in sorted(where.iterdir()):
      entry = {'type': 'directory' if child.is_dir() else 'file', 'path': str(child.relative_to(root)), 'oid': '0' * 40}
      if child.is_file():
        data = child.read_bytes()
        entry.update(size=len(data), oid=hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest())
        if child.suffix in ('.gz', '.parquet'):
          entry['lfs'] = {'oid': hashlib.sha256(data).hexdigest(), 'size': len(data), 'pointerSize': 134}
      entries.append(entry)
    start = int(query.get('cursor', ['0'])[0])
    link = {}
    if start + PAGE < len(entries):
      link['Link'] = f'<{self.path.split("?")[0]}?cursor={start + PAGE}>; rel="next"'
    return self._json(200, entries[start : start + PAGE], headers=link)

  def _json(self, status, body, error_code='', headers=None):
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header('Content-Type', 'application/json')
    self.send_header('Content-Length', str(len(data)))
    if error_code:
      self.send_header('X-Error-Code', error_code)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(data)

  def _ranged_file(self, path):
    if not os.path.isfile(path):
      return self.send_error(404)
    data = pathlib.Path(path).read_bytes()
    match = re.fullmatch(r'bytes=(\d+)-(\d*)', self.headers.get('Range', ''))
    start, end = (
      (int(match.group(1)), min(int(match.group(2) or len(data) - 1), len(data) - 1)) if match else (0, len(data) - 1)
    )
    self.send_response(206 if match else 200)
    self.send_header('Content-Length', str(end - start + 1))
    if match:
      self.send_header('Content-Range', f'bytes {start}-{end}/{len(data)}')
    self.end_headers()
    self.wfile.write(data[start : end + 1])
    return None


def _resolve(root, part, commit=None):
  folder = root / 'datasets' / part.repo / 'resolve' / (commit or part.revision)
  folder.mkdir(parents=True, exist_ok=True)
  return folder


def _words(rng, count):
  return ' '.join(rng.choice('the of a proof lemma tune note bond acid X: K: |: :| abc'.split(), count))


def _build_hub(root):
  """The paper's datasets in their Hub layouts, small: file names, formats, fields and configs as recorded."""
  rng = np.random.default_rng(0)
  proof = _resolve(root, hub_datasets.PROOF_PILE)
  (proof / 'proof-pile.py').write_text('raise SystemExit("the loading script ran")\n')  # Must never be fetched.
  (proof / 'README.md').write_text('---\nlicense: apache-2.0\n---\n')
  metas = [
    {'config': 'arxiv', 'file': '1812.02537/v5 arxiv/sections/5.tex'},
    {'set_name': 'stack_exchange'},
    {'set_name': 'MATH'},
    {'subset_name': 'curated'},
  ]
  for folder, names in (
    ('train', [f'proofpile_train_{i}' for i in range(21)]),
    ('dev', ['proofpile_dev']),
    ('test', ['proofpile_test']),
  ):
    (proof / folder).mkdir()
    for number, name in enumerate(names):
      lines = [
        json.dumps({'text': f'{name} doc {j}: {_words(rng, 30)}', 'meta': metas[(number + j) % 4]}) for j in range(4)
      ]
      (proof / folder / f'{name}.jsonl.gz').write_bytes(gzip.compress(('\n'.join(lines) + '\n').encode()))
  music = _resolve(root, hub_datasets.MUSIC_PILE) / 'data'
  music.mkdir()
  row = 0
  for shard in range(3):
    sources = (
      [GENERAL[i % 3] for i in range(30)]
      if shard == 0
      else [  # General rows first, as the viewer shows.
        (IRISHMAN, MUSIC_CHAT, 'Generated with GPT-4', GENERAL[i % 3])[i % 4] for i in range(40)
      ]
    )
    texts = [f'row {row + i} X:1 K:D {_words(rng, 25)}' for i in range(len(sources))]
    pq.write_table(
      pa.table({'id': pa.array(range(row, row + len(texts)), pa.int64()), 'text': texts, 'src': sources}),
      music / f'train-{shard:05d}-of-00003.parquet',
      row_group_size=10,
    )
    row += len(texts)
  chem = {
    hub_datasets.CHEMPILE_REASONING: {
      'chemistry_stackexchange-raw_data': lambda i: {
        'title': 't',
        'q': 'q',
        'a': 'a',
        'split': 'train',
        'text': f'acid question {i} {_words(rng, 20)}',
      },
      'physics_stackexchange-raw_data': lambda i: {
        'title': 't',
        'q': 'q',
        'a': 'a',
        'split': 'train',
        'text': f'physics question {i} {_words(rng, 20)}',
      },
    },
    hub_datasets.CHEMPILE_EDUCATION: {
      'LibreText_Chemistry-default': lambda i: {'text': f'textbook page {i} {_words(rng, 40)}'}
    },
    hub_datasets.CHEMPILE_INSTRUCTION: {
      'chempile-reasoning': lambda i: {
        'messages': [
          {'role': 'user', 'content': f'What is bond {i}?'},
          {'role': 'assistant', 'content': f'A bond {_words(rng, 15)}'},
        ],
        'first_tag': ['chem'],
        'second_tag': ['bond'],
        'origin': {'dataset': 'chempile-reasoning', 'config': 'x', 'split': 'train', 'prompt_type': 'qa'},
      }
    },
  }
  for part, configs in chem.items():
    commit = 'c' * 40 if part.revision == 'main' else part.revision
    if part.revision == 'main':
      (root / 'datasets' / part.repo / 'refs').mkdir(parents=True)
      (root / 'datasets' / part.repo / 'refs' / 'main').write_text(commit)
    base = _resolve(root, part, commit)
    (base / 'README.md').write_text('---\n---\n')
    for config, make in configs.items():
      (base / config).mkdir()
      for split, count in (('train', 12), ('val', 3), ('test', 3)):
        pq.write_table(
          pa.Table.from_pylist([make(i) for i in range(count)]), base / config / f'{split}-00000-of-00001.parquet'
        )


@pytest.fixture
def hub(tmp_path, monkeypatch):
  root = tmp_path / 'hub'
  _build_hub(root)
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_HubHandler, directory=str(root)))
  server.log = []
  threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
  monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{server.server_address[1]}')
  monkeypatch.delenv('HF_TOKEN', raising=False)
  yield server.log
  server.shutdown()


def _parse(spec, tmp_path):
  return sources_lib.parse(spec, 'domain', str(tmp_path / 'cache'))


def _config(tmp_path, domain):
  """Prepare's config: a byte-level BPE and a local general set beside the domain set under test."""
  corpus = tmp_path / 'general'
  corpus.mkdir(exist_ok=True)
  for i in range(20):
    (corpus / f'{i}.txt').write_text(f'the cat sat on the mat {i} ' * 30)
  tokenizer = tmp_path / 'tokenizer.json'
  if not tokenizer.exists():
    tokenizer_lib.train_bpe({'general': f'files:{corpus}'}, 300, str(tmp_path / 'cache')).save(str(tokenizer))
  return tiny.data_config(
    tmp_path / 'cache',
    general=f'files:{corpus}',
    domain=domain,
    tokenizer=str(tokenizer),
    test_fraction=0.0,
    test_tokens=200,
    domain_train_sequences=4,
  )


def test_the_paper_presets_read_the_hub_datasets():

  assert [m.get_config('1b').data.domain for m in (proofpile, musicpile, chempile)] == [
    'hub:proof-pile',
    'hub:musicpile',
    'hub:chempile',
  ]
  assert (paper_data.PROOFPILE, paper_data.MUSICPILE, paper_data.CHEMPILE) == (
    'hub:proof-pile',
    'hub:musicpile',
    'hub:chempile',
  )
  for dataset in hub_datasets.DATASETS.values():
    for part in dataset.parts:
      assert part.revision == 'main' or re.fullmatch(r'[0-9a-f]{40}', part.revision), part


def test_proof_pile_reads_its_21_train_files_and_never_the_loading_script(tmp_path, hub):
  source = _parse(paper_data.PROOFPILE, tmp_path)
  assert not hub  # Parsing lists files and downloads none.
  assert [p.rsplit('/', 1)[-1] for p in source.paths] == sorted(f'proofpile_train_{i}.jsonl.gz' for i in range(21))
  documents = list(source.documents())
  assert len(documents) == 84 and documents[0].startswith('proofpile_train_0 doc 0: ')
  assert sorted(hub) == sorted(
    f'/datasets/hoskinson-center/proof-pile/resolve/{hub_datasets.PROOF_PILE.revision}/'
    f'train/proofpile_train_{i}.jsonl.gz'
    for i in range(21)
  )
  assert sorted(source.group_names) == ['MATH', 'arxiv', 'curated', 'stack_exchange']
  assert np.bincount(np.asarray(source.document_groups)).tolist() == [21, 21, 21, 21]


def test_musicpile_keeps_its_music_sources_and_skips_general_row_groups(tmp_path, hub):
  source = _parse(paper_data.MUSICPILE, tmp_path)
  documents = list(source.documents())
  # Shards 1 and 2 hold 40 rows each, a quarter of them general: 60 music rows.
  assert len(documents) == 60 and all(d.startswith('row ') for d in documents)
  assert sorted(source.group_names) == sorted([IRISHMAN, MUSIC_CHAT, 'Generated with GPT-4'])
  assert all(p.startswith('/cdn/') for p in hub)  # Parquet is read from where the Hub redirects.


def test_chempile_reads_every_config_and_turns_messages_into_text(tmp_path, hub):
  source = _parse(paper_data.CHEMPILE, tmp_path)
  assert all('/train-' in p for p in source.paths) and len(source.paths) == 4
  documents = list(source.documents())
  assert len(documents) == 48
  assert any(d.startswith('User: What is bond 0?\n\nAssistant: A bond ') for d in documents)
  assert source.group_names == [
    'chempile-reasoning/chemistry_stackexchange-raw_data',
    'chempile-reasoning/physics_stackexchange-raw_data',
    'chempile-instruction/chempile-reasoning',
    'chempile-education/LibreText_Chemistry-default',
  ]
  only = _parse('hub:chempile?configs=LibreText_Chemistry-default', tmp_path)
  assert len(only.paths) == 1 and len(list(only.documents())) == 12


def test_messages_template():
  text = hub_datasets.messages_text(
    [
      {'role': 'system', 'content': 'Be brief. '},
      {'role': 'user', 'content': 'Name an acid.'},
      {'role': 'assistant', 'content': ''},
      {'role': 'assistant', 'content': 'HCl'},
    ]
  )
  assert text == 'System: Be brief.\n\nUser: Name an acid.\n\nAssistant: HCl'
  with pytest.raises(ValueError, match='not a list'):
    hub_datasets.messages_text('User: hi')
  with pytest.raises(ValueError, match='role, content'):
    hub_datasets.messages_text([{'text': 'hi'}])


@pytest.mark.parametrize(
  'domain, documents, by_source',
  [
    (paper_data.PROOFPILE, 84, 'arxiv'),
    (paper_data.MUSICPILE, 60, IRISHMAN),
    (paper_data.CHEMPILE, 48, 'chempile-instruction/chempile-reasoning'),
  ],
)
def test_each_paper_domain_prepares_from_the_hub_layout(tmp_path, hub, domain, documents, by_source):
  config = _config(tmp_path, domain)
  config.data.domain_max_tokens = 1000  # Subsampled by whole documents, after the held-out split.
  data = prepare_lib.prepare(config)
  info = data.metadata['sources']['domain']
  assert info['documents'] == documents and info['documents_test'] > 0
  assert 1000 <= info['tokens_train'] < 1200  # Up to and including the document that crosses the budget.
  counts = info['by_source'][by_source]
  assert counts['documents'] > 0 and counts['tokens'] >= counts['tokens_train'] > 0
  assert sum(c['documents_train'] for c in info['by_source'].values()) == info['documents_train']
  assert sum(c['tokens_train'] for c in info['by_source'].values()) == info['tokens_train']
  assert not any(p.endswith(('.py', 'README.md')) or '/dev/' in p or '/val-' in p or '/test' in p for p in hub)
  # A second run finds the prepared set, its listings cached on disk: nothing is downloaded again.
  hub.clear()
  assert prepare_lib.prepare(config).path == data.path and not hub
  # Another seed subsamples the same tokens: nothing is downloaded or tokenized again, and what reading recorded
  # (the files' checksums, each document's source) comes back with them.
  config.seed += 1
  other = prepare_lib.prepare(config)
  again = other.metadata['sources']['domain']
  assert other.path != data.path and not hub and (info['tokenized'], again['tokenized']) == ('now', 'reused')
  assert again['checksums'] == info['checksums']
  assert {k: c['documents'] for k, c in again['by_source'].items()} == {
    k: c['documents'] for k, c in info['by_source'].items()
  }


def test_a_filter_that_matches_nothing_stops_with_the_values_it_saw(tmp_path, hub):
  source = _parse('hub:musicpile?where=src=irishman|kernscores&check_records=25', tmp_path)
  with pytest.raises(
    ValueError,
    match=r"matched none of the first 25 records; the src values seen: 'pile' "
    r"\(9\); 'Wikipedia' \(8\); 'GPT4-Alpaca' \(8\)",
  ) as error:
    list(source.documents())
  assert '\n' not in str(error.value)
  assert not any('/train-00000' not in p for p in hub)  # It stopped in the first shard.
  with pytest.raises(ValueError, match='matched none of the first 110 records'):  # Fewer records than the check.
    list(_parse('hub:musicpile?where=src=nothing', tmp_path).documents())


@pytest.mark.parametrize(
  'spec, message',
  [
    ('hub:proofpile', "unknown hub dataset 'proofpile'.*use one of proof-pile, musicpile, chempile"),
    (
      f'hub:musicpile?revision={"0" * 40}',
      (
        f"revision '{'0' * 40}' of m-a-p/MusicPile was not found at "
        r'http://127.0.0.1:\d+ \(HTTP 404, RevisionNotFound\)'
      ),
    ),
    ('hub:musicpile?revision=v2', "revision 'v2' of m-a-p/MusicPile was not found"),
    (
      'hub:chempile-reasoning?configs=organic_chemistry',
      (
        r"config\(s\) \['organic_chemistry'\] are not in "
        r"chempile-reasoning \(configs: \['chemistry_stackexchange"
      ),
    ),
    ('hub:musicpile?field=body', r"records of m-a-p/MusicPile have no field 'body' \(fields: \['id', 'text', 'src'"),
    ('hub:musicpile?where=genre=folk', "records of m-a-p/MusicPile have no field 'genre'"),
    ('hub:musicpile?where=src', 'FIELD=V1|V2'),
    ('hub:chempile?revision=main', 'needs a single repository'),
    ('hub:proof-pile?split=validation', "has no folder 'validation'"),
    ('hub:musicpile?shards=2', r"unknown option\(s\) \['shards'\]"),
  ],
)
def test_bad_input_is_one_line_before_any_download(tmp_path, hub, spec, message):
  with pytest.raises(ValueError, match=message) as error:
    _parse(spec, tmp_path)
  assert '\n' not in str(error.value)
  assert not hub


def test_a_field_the_records_lack_stops_on_first_contact(tmp_path, hub):
  source = _parse('hub:chempile-education?field=body', tmp_path)  # Its fields are unverified: checked on reading.
  with pytest.raises(ValueError, match=r"the records have no field 'body' \(columns: \['text'\]\)") as error:
    list(source.documents())
  assert '\n' not in str(error.value)


def test_hf_names_the_hub_source_of_a_paper_dataset_it_cannot_load(tmp_path, monkeypatch):
  def refuse(name, *args, **kwargs):
    raise RuntimeError(f'Dataset scripts are no longer supported, but found proof-pile.py ({name})')

  monkeypatch.setitem(sys.modules, 'datasets', types.SimpleNamespace(load_dataset=refuse))  # As datasets 4 answers.
  source = _parse('hf:hoskinson-center/proof-pile?split=train', tmp_path)
  with pytest.raises(ValueError, match='no longer supported.*reads as hub:proof-pile$') as error:
    list(source.documents())
  assert '\n' not in str(error.value)
