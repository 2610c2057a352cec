"""Tokenizer: BPE trained on the run's sources (cached), JSON files, EOS, and the vocabulary check."""

import random
import time

import pytest
import tokenizers

from spt_jax.data import tokenizer as tokenizer_lib
from spt_jax.data.data_config import DataConfig

_WORDS = (
  'lemma proof qed intros apply the of and music chord note theorem rewrite induction '
  'simpl reflexivity exact destruct forall exists'
).split()


def _write_corpus(folder, prefix, count, seed):
  rng = random.Random(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    words = ' '.join(rng.choice(_WORDS) for _ in range(rng.randint(30, 200)))
    (folder / f'{prefix}{i}.txt').write_text(f'{prefix}{i} {words}\n')


def _config(tmp_path, tokenizer='bpe', vocab_size=300):
  _write_corpus(tmp_path / 'general', 'g', 80, 0)
  _write_corpus(tmp_path / 'domain', 'd', 20, 1)
  return DataConfig(
    general=f'files:{tmp_path}/general',
    domain=f'files:{tmp_path}/domain/*.txt',
    tokenizer=tokenizer,
    tokenizer_vocab_size=vocab_size,
    cache_dir=str(tmp_path / 'cache'),
  )


def test_bpe_trains_with_eos_and_round_trips(tmp_path):
  tokenizer = tokenizer_lib.load_tokenizer(_config(tmp_path))
  assert tokenizer.get_vocab_size() == 300
  assert tokenizer_lib.eos_id(tokenizer) == tokenizer.token_to_id('<|endoftext|>')
  text = 'lemma proof: intros; apply (x ≤ y). ünïcode'
  assert tokenizer.decode(tokenizer.encode(text).ids) == text  # Byte-level: any text round-trips.
  assert len(tokenizer.encode('reflexivity').ids) < len('reflexivity')  # Merges were learned.


def test_bpe_is_cached_by_inputs(tmp_path):
  config = _config(tmp_path)
  first = tokenizer_lib.load_tokenizer(config)
  cached = list((tmp_path / 'cache' / 'tokenizers').glob('bpe-300-*.json'))
  assert len(cached) == 1
  start = time.perf_counter()
  again = tokenizer_lib.load_tokenizer(config)
  assert time.perf_counter() - start < 1.0
  assert tokenizer_lib.tokenizer_hash(again) == tokenizer_lib.tokenizer_hash(first)
  (tmp_path / 'domain' / 'd0.txt').write_text('changed text, so a new tokenizer')
  tokenizer_lib.load_tokenizer(config)
  assert len(list((tmp_path / 'cache' / 'tokenizers').glob('bpe-300-*.json'))) == 2


def test_tokenizer_from_json_path(tmp_path):
  trained = tokenizer_lib.load_tokenizer(_config(tmp_path))
  path = tmp_path / 'mine.json'
  trained.save(str(path))
  loaded = tokenizer_lib.load_tokenizer(_config(tmp_path, tokenizer=str(path)))
  assert tokenizer_lib.tokenizer_hash(loaded) == tokenizer_lib.tokenizer_hash(trained)


def test_missing_or_invalid_tokenizer_file(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    tokenizer_lib.load_tokenizer(_config(tmp_path, tokenizer=str(tmp_path / 'missing.json')))
  (tmp_path / 'bad.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(ValueError, match='is not a tokenizers JSON') as error:
    tokenizer_lib.load_tokenizer(_config(tmp_path, tokenizer=str(tmp_path / 'bad.json')))
  assert '\n' not in str(error.value)


def test_vocab_too_small_for_bytes(tmp_path):
  with pytest.raises(ValueError, match='at least 258'):
    tokenizer_lib.load_tokenizer(_config(tmp_path, vocab_size=100))


def test_eos_missing(tmp_path):

  bare = tokenizers.Tokenizer(tokenizers.models.BPE())
  with pytest.raises(ValueError, match='none of the EOS tokens'):
    tokenizer_lib.eos_id(bare)
