"""Prepare: hash split without leaks, packing, subsampling, caching, change detection, bad input."""

import json
import os
import random
import time

import ml_collections
import numpy as np
import pytest

from spt_jax.data import prepare as prepare_lib
from spt_jax.data import sources as sources_lib
from spt_jax.data import tokenize as tokenize_lib
from spt_jax.data import tokenizer as tokenizer_lib
from tests import tiny

L = 32
_WORDS = (
  'lemma proof qed intros apply the of and music chord note theorem rewrite induction simpl '
  'reflexivity exact destruct forall exists'
).split()


def _write_corpus(folder, prefix, count, seed, duplicates=0):
  rng = random.Random(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    words = ' '.join(rng.choice(_WORDS) for _ in range(rng.randint(10, 120)))
    (folder / f'{prefix}{i}.txt').write_text(f'{prefix}{i} {words}\n')
  for i in range(duplicates):  # Exact copies must land in the same split as their original.
    (folder / f'{prefix}{i}copy.txt').write_bytes((folder / f'{prefix}{i}.txt').read_bytes())


def _config(tmp_path, **data):
  if not (tmp_path / 'general').exists():
    _write_corpus(tmp_path / 'general', 'g', 200, 0)
    _write_corpus(tmp_path / 'domain', 'd', 60, 1, duplicates=20)
  defaults = dict(
    general=f'files:{tmp_path}/general',
    domain=f'files:{tmp_path}/domain/*.txt',
    tokenizer='bpe',
    test_fraction=0.2,
    domain_train_sequences=8,
  )
  return tiny.data_config(data.pop('cache_dir', tmp_path / 'cache'), **{**defaults, **data})


def _contains(stream: np.ndarray, needle: np.ndarray) -> bool:
  """Whether `needle` occurs in `stream` as a contiguous run of tokens."""
  haystack, pattern = stream.astype(np.uint32).tobytes(), needle.astype(np.uint32).tobytes()
  start = haystack.find(pattern)
  while start != -1 and start % 4:
    start = haystack.find(pattern, start + 1)
  return start != -1


def test_prepare_shapes_eval_sets_and_metadata(tmp_path):
  data = prepare_lib.prepare(_config(tmp_path))
  assert set(data.train) == {'general', 'domain'}
  assert set(data.eval_sets) == {'general_test', 'domain_test', 'domain_train'}
  for rows in list(data.train.values()) + list(data.eval_sets.values()):
    assert rows.ndim == 2 and rows.shape[1] == L + 1 and rows.dtype == np.uint16 and len(rows)
  assert len(data.eval_sets['domain_train']) == 8
  train_rows = {row.tobytes() for row in data.train['domain']}
  assert all(row.tobytes() in train_rows for row in data.eval_sets['domain_train'])  # A sample of training.
  assert data.vocab_size == 300 and all(1 < v < 12 for v in data.bytes_per_token.values())
  meta = data.metadata
  domain = meta['sources']['domain']
  assert domain['documents'] == 80 and domain['documents_train'] + domain['documents_test'] == 80
  assert domain['sequences_train'] == len(data.train['domain'])
  assert domain['tokens_train'] // (L + 1) == domain['sequences_train']  # Remainder dropped, no overlap.
  assert meta['tokenizer'] == tokenizer_lib.tokenizer_hash(data.tokenizer)
  assert len(domain['checksums']) == 80 and domain['bad_bytes'] == {}
  assert json.loads((data.path / 'metadata.json').read_text())['eval_sets'] == meta['eval_sets']


def test_no_test_document_reaches_training(tmp_path):
  config = _config(tmp_path)
  data = prepare_lib.prepare(config)
  eos = tokenizer_lib.eos_id(data.tokenizer)
  for name in ('domain', 'general'):
    held_out = set(json.loads((data.path / f'test_documents_{name}.json').read_text()))
    assert held_out
    stream = np.asarray(data.train[name]).reshape(-1)
    source = sources_lib.parse(config.data[name], name)
    seen_test = seen_train = 0
    for document in source.documents():
      tokens = np.array(data.tokenizer.encode(document).ids + [eos])
      if f'{sources_lib.content_hash(document):016x}' in held_out:
        seen_test += 1
        assert not _contains(stream, tokens), document[:20]
      elif len(tokens) < 4 * L:
        seen_train += _contains(stream, tokens)  # The check itself finds training documents.
    assert seen_test and seen_train > 10


def test_a_validation_split_is_held_out_beside_the_test_split_and_is_the_same_for_every_seed(tmp_path):
  config = _config(tmp_path, valid_tokens=800)
  data = prepare_lib.prepare(config)
  other_seed = _config(tmp_path, valid_tokens=800)
  other_seed.seed = 3
  other = prepare_lib.prepare(other_seed)
  assert set(data.eval_sets) == {'general_test', 'domain_test', 'domain_train', 'domain_valid'}
  assert np.array_equal(data.eval_sets['domain_valid'], other.eval_sets['domain_valid'])
  assert np.array_equal(data.eval_sets['domain_test'], other.eval_sets['domain_test'])
  domain = data.metadata['sources']['domain']
  assert 800 <= domain['tokens_valid'] < 800 + 2 * 400 and domain['documents_valid'] >= 2
  assert domain['documents_train'] + domain['documents_test'] + domain['documents_valid'] == domain['documents']
  assert domain['documents_kept'] == domain['documents'] and domain['documents_dropped_as_held_out_elsewhere'] == 0
  # Neither split trains, in any seed; the test split is the one prepared without a validation split.
  without = prepare_lib.prepare(_config(tmp_path))
  assert np.array_equal(without.eval_sets['domain_test'], data.eval_sets['domain_test'])
  eos = tokenizer_lib.eos_id(data.tokenizer)
  held = set(json.loads((data.path / 'test_documents_domain.json').read_text()))
  test_only = set(json.loads((without.path / 'test_documents_domain.json').read_text()))
  assert test_only < held  # The listed held-out documents: the test split's and the validation split's.
  valid_text = [
    d
    for d in sources_lib.parse(config.data.domain, 'domain').documents()
    if f'{sources_lib.content_hash(d):016x}' in held - test_only
  ]
  assert len(valid_text) == domain['documents_valid']
  assert valid_text
  valid_stream = data.eval_sets['domain_valid'].reshape(-1)
  for prepared in (data, other):
    stream = np.asarray(prepared.train['domain']).reshape(-1)
    for document in valid_text:
      tokens = np.array(data.tokenizer.encode(document).ids + [eos])
      assert not _contains(stream, tokens)
  assert any(_contains(valid_stream, np.array(data.tokenizer.encode(d).ids[:L])) for d in valid_text)


def test_a_document_held_out_in_one_source_never_trains_through_another(tmp_path):
  budgets = dict(test_fraction=0.05, test_tokens=1500)  # Token budgets: each source's split ends elsewhere.
  first = prepare_lib.prepare(_config(tmp_path, **budgets))
  held_out = json.loads((first.path / 'test_documents_domain.json').read_text())
  # The held-out domain document furthest along the split order: general's smaller budget stops before it.
  copied = max(
    (p for p in (tmp_path / 'domain').glob('*.txt') if f'{sources_lib.content_hash(p.read_text()):016x}' in held_out),
    key=lambda p: sources_lib.split_unit(sources_lib.content_hash(p.read_text())),
  )
  (tmp_path / 'general' / 'copy_of_a_domain_test_document.txt').write_bytes(copied.read_bytes())
  data = prepare_lib.prepare(_config(tmp_path, cache_dir=str(tmp_path / 'cache2'), **budgets))
  assert data.metadata['sources']['general']['documents_dropped_as_held_out_elsewhere'] == 1
  tokens = np.array(data.tokenizer.encode(copied.read_text()).ids + [tokenizer_lib.eos_id(data.tokenizer)])
  assert not _contains(np.asarray(data.train['general']).reshape(-1), tokens)


def test_same_inputs_same_arrays_in_a_fresh_cache(tmp_path):
  first = prepare_lib.prepare(_config(tmp_path))
  second = prepare_lib.prepare(_config(tmp_path, cache_dir=str(tmp_path / 'other')))
  for name in first.train:
    assert np.array_equal(first.train[name], second.train[name])
  assert first.path.name == second.path.name  # The key is the same on any machine.
  digests = prepare_lib.source_digests(first.metadata)
  assert digests == prepare_lib.source_digests(second.metadata) and set(digests) == {'general', 'domain'}


@pytest.mark.filterwarnings('ignore:This process .* is multi-threaded:DeprecationWarning')
def test_parallel_workers_give_the_same_tokens(tmp_path, monkeypatch):
  serial = prepare_lib.prepare(_config(tmp_path))
  monkeypatch.setattr(tokenize_lib, 'CHUNK_CHARS', 2000)
  texts = list(sources_lib.parse(f'files:{tmp_path}/domain/*.txt').documents())
  expected = np.concatenate([np.array(serial.tokenizer.encode(t).ids + [0]) for t in texts])
  for processes in (False, True):  # The tokenizer's threads, then forked worker processes.
    monkeypatch.setattr(tokenize_lib, '_use_processes', lambda workers, use=processes: use)
    chunks = list(prepare_lib.tokenize_documents(texts, serial.tokenizer, 0, num_workers=2))
    assert len(chunks) > 2
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), expected)
    lengths = np.concatenate([c[1] for c in chunks])
    assert len(lengths) == len(texts) and lengths.sum() == len(expected)
  early = list(prepare_lib.tokenize_documents(texts, serial.tokenizer, 0, num_workers=2, max_tokens=500))
  assert 500 <= sum(len(c[0]) for c in early) < len(expected)


def test_reuse_and_new_key_on_changed_inputs(tmp_path):
  config = _config(tmp_path)
  first = prepare_lib.prepare(config)
  start = time.perf_counter()
  again = prepare_lib.prepare(config)
  assert again.path == first.path and time.perf_counter() - start < 2
  config.data.seq_len = 16
  assert prepare_lib.prepare(config).path != first.path
  assert not list(first.path.parent.glob('.*tmp*'))  # Written atomically: no partial folders left.


def test_a_source_is_tokenized_once_for_every_seed_and_a_damaged_pass_is_redone(tmp_path, monkeypatch, caplog):
  (tmp_path / 'domain').mkdir(parents=True)
  (tmp_path / 'domain' / 'latin1.txt').write_bytes('d99 caf\xe9 na\xefve lemma proof\n'.encode('latin-1'))
  first = prepare_lib.prepare(_config(tmp_path))
  assert {s['tokenized'] for s in first.metadata['sources'].values()} == {'now'}
  kept = sorted((tmp_path / 'cache' / 'tokenized').glob('[0-9a-f]*'))
  assert len(kept) == 2 and not list(first.path.glob('spill_*'))  # Domain and general, kept outside the set.

  def no_tokenizing(*args, **kwargs):
    raise AssertionError('tokenized again')

  def seeded(seed, **data):
    config = _config(tmp_path, **data)
    config.seed = seed
    return config

  fresh = prepare_lib.prepare(seeded(1, keep_tokenized=False, cache_dir=str(tmp_path / 'fresh')))
  with monkeypatch.context() as patch:
    patch.setattr(tokenize_lib, 'encode_chunks', no_tokenizing)
    reused = prepare_lib.prepare(seeded(1))
  assert {s['tokenized'] for s in reused.metadata['sources'].values()} == {'reused'}
  assert reused.path.name == fresh.path.name != first.path.name
  for name in reused.train:  # What another seed draws from the kept tokens is what it draws from the text.
    assert np.array_equal(reused.train[name], fresh.train[name])
  for name in reused.eval_sets:
    assert np.array_equal(reused.eval_sets[name], fresh.eval_sets[name])
  for name in ('domain', 'general'):
    for key in ('bad_bytes', 'checksums', 'documents', 'documents_train', 'tokens_train'):
      assert reused.metadata['sources'][name][key] == fresh.metadata['sources'][name][key], (name, key)
  assert not list((tmp_path / 'fresh').glob('tokenized/[0-9a-f]*'))  # keep_tokenized=False keeps none.
  # A damaged pass is set aside with one warning and the source tokenized again.
  with open(kept[0] / 'tokens.bin', 'r+b') as f:
    f.seek(7)
    byte = f.read(1)
    f.seek(7)
    f.write(bytes([byte[0] ^ 0xFF]))
  again = prepare_lib.prepare(seeded(2))
  assert sorted(s['tokenized'] for s in again.metadata['sources'].values()) == ['now', 'reused']
  assert len(list(kept[0].parent.glob(f'{kept[0].name}.damaged-*'))) == 1 and 'tokens.bin does not match' in caplog.text
  fresh = prepare_lib.prepare(seeded(2, keep_tokenized=False, cache_dir=str(tmp_path / 'fresh')))
  for name in again.train:
    assert np.array_equal(again.train[name], fresh.train[name])


def test_changed_source_under_cache_is_an_error(tmp_path):
  config = _config(tmp_path)
  data = prepare_lib.prepare(config)
  path = tmp_path / 'domain' / 'd3.txt'
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  prepare_lib.prepare(config)  # Touched, same content: still valid.
  path.write_text('new content of the same file')
  with pytest.raises(ValueError, match=r"source 'domain' .* changed since .* delete that folder") as error:
    prepare_lib.prepare(config)
  assert '\n' not in str(error.value) and str(data.path) in str(error.value)
  # Prepared afresh elsewhere, the changed source has another digest in the run's summary; the other, the same.
  changed = prepare_lib.source_digests(prepare_lib.prepare(_config(tmp_path, cache_dir=str(tmp_path / 'b'))).metadata)
  before = prepare_lib.source_digests(data.metadata)
  assert changed['domain'] != before['domain'] and changed['general'] == before['general']
  path.unlink()
  with pytest.raises(ValueError, match='changed since'):
    prepare_lib.prepare(config)


def test_subsample_by_whole_documents(tmp_path):
  data = prepare_lib.prepare(_config(tmp_path, domain_max_tokens=1500, general_max_tokens=3000))
  domain, general = data.metadata['sources']['domain'], data.metadata['sources']['general']
  assert domain['documents_kept'] < domain['documents']
  # Training documents in seeded order up to the one that crosses the budget (documents have < 400 tokens).
  assert 1500 <= domain['tokens_train'] < 1500 + 400
  assert 3000 <= general['tokens_train'] < 3000 + 400
  # The held-out split is drawn before subsampling: the same documents whatever the budget.
  whole = prepare_lib.prepare(_config(tmp_path))
  for name in ('domain', 'general'):
    assert (data.path / f'test_documents_{name}.json').read_text() == (
      whole.path / f'test_documents_{name}.json'
    ).read_text()
    np.testing.assert_array_equal(data.eval_sets[f'{name}_test'], whole.eval_sets[f'{name}_test'])
  other_seed = _config(tmp_path, domain_max_tokens=1500, general_max_tokens=3000)
  other_seed.seed = 1
  assert not np.array_equal(prepare_lib.prepare(other_seed).train['domain'][:4], data.train['domain'][:4])


def test_test_token_budget(tmp_path):
  data = prepare_lib.prepare(_config(tmp_path, test_fraction=0.05, test_tokens=600))
  for name in ('domain', 'general'):
    info = data.metadata['sources'][name]
    assert 600 <= info['tokens_test'] < 600 + 2 * 400  # Whole documents (and their duplicates) to the budget.


def test_non_utf8_counted_in_metadata(tmp_path, caplog):
  config = _config(tmp_path)
  (tmp_path / 'domain' / 'latin1.txt').write_bytes('d99 caf\xe9 na\xefve lemma proof\n'.encode('latin-1'))
  data = prepare_lib.prepare(config)
  assert data.metadata['sources']['domain']['bad_bytes'] == {str(tmp_path / 'domain' / 'latin1.txt'): 2}
  assert 'replaced 2 non-UTF-8 bytes' in caplog.text


def _token_files(tmp_path, eos, sizes=(300, 200)):
  """Flat uint16 token files of random EOS-terminated documents (OLMo's raw layout)."""
  rng = np.random.default_rng(0)
  files = []
  for number, count in enumerate(sizes):
    documents = [np.append(rng.integers(1, 300, rng.integers(5, 60)), eos) for _ in range(count)]
    files.append(np.concatenate(documents).astype(np.uint16))
    files[-1].tofile(tmp_path / f'part-{number}.bin')
  return files


def test_token_sources_are_used_in_place(tmp_path):
  config = _config(tmp_path)
  text = prepare_lib.prepare(config)
  eos = tokenizer_lib.eos_id(text.tokenizer)
  files = _token_files(tmp_path, eos)
  config.data.general = f'tokens:{tmp_path}/part-*.bin?dtype=uint16'
  config.data.tokenizer = str(tmp_path / 'tok.json')
  config.data.test_fraction, config.data.test_tokens = 0.0, 400
  text.tokenizer.save(config.data.tokenizer)
  data = prepare_lib.prepare(config)
  assert not (data.path / 'train_general.npy').exists()  # Nothing copied: rows are views of the files.
  info, entry = data.metadata['sources']['general'], data.metadata['in_place']['general']
  assert info['files_used'] == 2 and [f['path'] for f in entry['files']] == [
    str(tmp_path / 'part-0.bin'),
    str(tmp_path / 'part-1.bin'),
  ]
  row = L + 1
  start = info['tokens_in_files_used'] - len(files[0]) - info['tokens_test']  # Held-out tail of the last file.
  assert files[1][start - 1] == eos and len(files[1]) - start >= 400  # Whole documents, at least the budget.
  expected = np.concatenate(
    [files[0][: len(files[0]) // row * row].reshape(-1, row), files[1][: start // row * row].reshape(-1, row)]
  )
  assert np.array_equal(np.asarray(data.train['general']), expected)
  assert np.array_equal(data.train['general'][[len(expected) - 1, 0]], expected[[-1, 0]])
  held = files[1][start : start + len(data.eval_sets['general_test']) * row]
  assert np.array_equal(np.asarray(data.eval_sets['general_test']).ravel(), held)
  assert data.bytes_per_token['general_test'] > 0
  # A token budget uses only the files it needs.
  config.data.general_max_tokens = 500
  small = prepare_lib.prepare(config)
  assert small.metadata['sources']['general']['files_used'] == 1
  assert len(small.train['general']) == -(-500 // row)


def test_extra_eval_sets(tmp_path):
  config = _config(tmp_path)
  config.extra_eval = ml_collections.ConfigDict({'shakespeare': f'files:{tmp_path}/general/g1*.txt'})
  data = prepare_lib.prepare(config)
  assert set(data.eval_sets) == {'general_test', 'domain_test', 'domain_train', 'shakespeare'}
  assert data.bytes_per_token['shakespeare'] > 0


def test_domain_smaller_than_one_sequence(tmp_path):
  (tmp_path / 'tiny').mkdir()
  (tmp_path / 'tiny' / 'a.txt').write_text('lemma')
  config = _config(tmp_path, domain=f'files:{tmp_path}/tiny/*.txt', test_fraction=0.01)
  with pytest.raises(ValueError, match='domain .* fewer than seq_len \\+ 1 = 33 tokens') as error:
    prepare_lib.prepare(config)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize(
  'data, match',
  [
    (dict(domain=''), "source 'domain' is empty"),
    (dict(general='files:/nonexistent/spt_jax/*.txt'), 'no files match'),
  ],
)
def test_bad_inputs_fail_before_work(tmp_path, data, match):
  with pytest.raises(ValueError, match=match) as error:
    prepare_lib.prepare(_config(tmp_path, **data))
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'cache' / 'prepared').exists()
