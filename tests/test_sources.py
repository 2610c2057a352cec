"""Source specs: every kind reads its documents; bad specs and files give one-line errors."""

import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spt_jax.data import (
  corpora,
  fetch,
  sources,
)


def _one_line_error(spec, match, **kwargs):
  with pytest.raises(ValueError, match=match) as error:
    source = sources.parse(spec, 'domain', **kwargs)
    list(source.documents())
  assert '\n' not in str(error.value)
  return str(error.value)


def test_files_one_document_per_file_and_folder(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'a.txt').write_text('alpha')
  (tmp_path / 'sub' / 'b.txt').write_text('beta')
  (tmp_path / 'empty.txt').write_text('')
  assert list(sources.parse(f'files:{tmp_path}/*.txt').documents()) == ['alpha']
  assert list(sources.parse(f'files:{tmp_path}/**/*.txt').documents()) == ['alpha', 'beta']
  assert list(sources.parse(f'files:{tmp_path}').documents()) == ['alpha', 'beta']
  assert list(sources.parse(str(tmp_path)).documents()) == ['alpha', 'beta']  # A bare folder is files:.


def test_files_with_separator(tmp_path):
  (tmp_path / 'tunes.abc').write_text('X:1\nabc\n\nX:2\ndef\n\n\n')
  source = sources.parse(f'files:{tmp_path}/*.abc?separator=\\n\\n')
  assert list(source.documents()) == ['X:1\nabc', 'X:2\ndef']
  percent = sources.parse(f'files:{tmp_path}/*.abc?separator=%0A%0A')
  assert list(percent.documents()) == ['X:1\nabc', 'X:2\ndef']


def test_jsonl_field_and_dotted_field(tmp_path):
  lines = [{'text': 'one', 'meta': {'body': 'x'}}, {'text': 'two', 'meta': {'body': 'y'}}]
  (tmp_path / 'd.jsonl').write_text('\n'.join(json.dumps(line) for line in lines) + '\n\n')
  assert list(sources.parse(f'jsonl:{tmp_path}/*.jsonl').documents()) == ['one', 'two']
  assert list(sources.parse(f'jsonl:{tmp_path}/*.jsonl?field=meta.body').documents()) == ['x', 'y']
  _one_line_error(f'jsonl:{tmp_path}/*.jsonl?field=body', r'd.jsonl:1 is not a JSON object with field')
  (tmp_path / 'd.jsonl').write_text('{"text": "ok"}\nnot json\n')
  _one_line_error(f'jsonl:{tmp_path}/*.jsonl', r'd.jsonl:2 is not a JSON object')


def test_parquet_column(tmp_path):

  pq.write_table(pa.table({'body': ['p1', 'p2', ''], 'id': [1, 2, 3]}), tmp_path / 'd.parquet')
  assert list(sources.parse(f'parquet:{tmp_path}/*.parquet?column=body').documents()) == ['p1', 'p2']
  _one_line_error(f'parquet:{tmp_path}/*.parquet', r"has no column 'text'")
  (tmp_path / 'broken.parquet').write_text('not parquet')
  _one_line_error(f'parquet:{tmp_path}/broken.parquet?column=body', 'cannot read .* as Parquet')


def test_tokens_split_at_eos(tmp_path):
  np.array([5, 6, 9, 7, 9, 8], dtype=np.uint16).tofile(tmp_path / 'part-0.npy')
  np.save(tmp_path / 'saved.npy', np.array([1, 2, 9], dtype=np.uint16))
  raw = sources.parse(f'tokens:{tmp_path}/part-*.npy?dtype=uint16', 'general')
  assert [d.tolist() for d in raw.token_documents(eos_id=9)] == [[5, 6, 9], [7, 9], [8]]
  assert raw.is_tokens and raw.checksums
  override = sources.parse(f'tokens:{tmp_path}/part-*.npy?dtype=uint16&eos=7', 'general')
  assert [d.tolist() for d in override.token_documents(eos_id=9)] == [[5, 6, 9, 7], [9, 8]]
  saved = sources.parse(f'tokens:{tmp_path}/saved.npy?dtype=uint16', 'general')
  assert [d.tolist() for d in saved.token_documents(eos_id=9)] == [[1, 2, 9]]
  with pytest.raises(ValueError, match='not a flat uint32'):
    list(sources.parse(f'tokens:{tmp_path}/saved.npy?dtype=uint32').token_documents(9))
  np.array([1, 2, 3], dtype=np.uint16).tofile(tmp_path / 'odd.bin')
  with pytest.raises(ValueError, match='not a multiple of 4'):
    list(sources.parse(f'tokens:{tmp_path}/odd.bin?dtype=uint32').token_documents(9))
  _one_line_error(f'tokens:{tmp_path}/part-*.npy', r'needs \?dtype=uint16 or \?dtype=uint32')


def test_non_utf8_bytes_replaced_counted_reported(tmp_path, caplog):
  (tmp_path / 'bad.txt').write_bytes(b'caf\xe9 \xff\xfe ok')
  (tmp_path / 'good.txt').write_text('fine \ufffd already')
  source = sources.parse(f'files:{tmp_path}/*.txt', 'domain')
  with caplog.at_level(logging.WARNING):
    documents = list(source.documents())
  assert documents[0] == 'caf\ufffd \ufffd\ufffd ok'
  assert documents[1] == 'fine \ufffd already'  # A real U+FFFD is not a bad byte.
  bad_path = str(tmp_path / 'bad.txt')
  assert source.bad_bytes == {bad_path: 3}
  assert any('replaced 3 non-UTF-8 bytes' in r.getMessage() and bad_path in r.getMessage() for r in caplog.records)


def test_tfds_data_source(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')

  class SptJaxTinyText(tfds.core.GeneratorBasedBuilder):
    """Ten short texts."""

    __module__ = 'spt_jax_test_datasets'  # One-part module: TFDS then skips a package-resource lookup.
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(10):
        yield i, {'text': f'document {i}'}

  try:
    SptJaxTinyText(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  except Exception as error:
    pytest.skip(f'cannot build a TFDS dataset here: {error}')
  source = sources.parse(f'tfds:spt_jax_tiny_text?split=train&data_dir={tmp_path}', 'general')
  assert sorted(source.documents()) == sorted(f'document {i}' for i in range(10))
  _one_line_error(f'tfds:spt_jax_tiny_text?split=train&field=body&data_dir={tmp_path}', "no field 'body'")


@pytest.mark.parametrize(
  'spec, match',
  [
    ('', 'is empty'),
    ('   ', 'is empty'),
    ('mystery:/x', "unknown kind 'mystery'"),
    ('files:', 'names no files target'),
    ('files:/nonexistent/spt_jax/*.txt', 'no files match'),
    ('jsonl:/nonexistent/spt_jax/x.jsonl', 'no files match'),
    ('files:/tmp?colour=red', r"unknown option\(s\) \['colour'\]"),
  ],
)
def test_bad_specs(spec, match):
  _one_line_error(spec, match)


def test_empty_files(tmp_path):
  (tmp_path / 'a.txt').write_text('')
  (tmp_path / 'b.txt').write_text('')
  message = _one_line_error(f'files:{tmp_path}/*.txt', 'are empty')
  assert "source 'domain'" in message


def test_whitespace_only_files_have_no_documents(tmp_path):
  (tmp_path / 'a.txt').write_text('  \n')
  assert not list(sources.parse(f'files:{tmp_path}/*.txt').documents())


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads files without read permission')
def test_unreadable_file(tmp_path):
  path = tmp_path / 'secret.txt'
  path.write_text('text')
  path.chmod(0)
  _one_line_error(f'files:{tmp_path}/*.txt', 'unreadable')


def test_unreadable_at_read_time(tmp_path):
  path = tmp_path / 'gone.txt'
  path.write_text('text')
  source = sources.parse(f'files:{tmp_path}/*.txt', 'domain')
  path.unlink()  # Removed between parsing and reading.
  with pytest.raises(ValueError, match='cannot read .*gone.txt') as error:
    list(source.documents())
  assert '\n' not in str(error.value)


def test_fingerprint_tracks_size_and_mtime(tmp_path):
  path = tmp_path / 'a.txt'
  path.write_text('one')
  source = sources.parse(f'files:{tmp_path}/*.txt')
  before = source.fingerprint()
  assert source.fingerprint() == before
  path.write_text('three')
  assert source.fingerprint() != before


def test_hashes_are_stable():
  assert sources.content_hash('abc') == sources.content_hash('abc') != sources.content_hash('abd')
  assert sources.content_hash('abc') == 0x5995D533D814BBD8  # The split must not move between versions.
  assert 0 <= sources.split_unit(sources.content_hash('abc')) < 1
  assert sources.seeded_order_key(1, 0) != sources.seeded_order_key(1, 1)


def test_builtin_groups_and_names(tmp_path, monkeypatch):

  texts = {'brown': ['b1', 'b2'], 'austen': ['a1'], 'coq': ['c1']}
  for name in texts:
    (tmp_path / name).mkdir()
    (tmp_path / name / 'manifest.json').write_text(json.dumps({'name': name}))
  monkeypatch.setattr(corpora, 'GROUPS', {'english': ('brown', 'austen'), 'proofs': ('coq',)})
  monkeypatch.setattr(fetch, 'ensure', lambda names, cache_dir='': {n: tmp_path / n for n in names})
  monkeypatch.setattr(fetch, 'documents', lambda name, cache_dir='': iter(texts[name]))
  source = sources.parse('builtin:english,coq,brown', 'general')
  assert list(source.documents()) == ['b1', 'b2', 'a1', 'c1']
  before = source.fingerprint()
  (tmp_path / 'coq' / 'manifest.json').write_text(json.dumps({'name': 'coq', 'version': 2}))
  assert source.fingerprint() != before  # A re-fetched corpus changes the manifest's hash.
