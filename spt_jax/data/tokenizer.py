"""Tokenizers: OLMo's file, any `tokenizers` JSON, or a byte-level BPE trained on the run's own sources."""

import hashlib
import heapq
import json
import logging
import os
import pathlib

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from spt_jax.data import sources as sources_lib

EOS_TOKEN = '<|endoftext|>'
_EOS_CANDIDATES = (EOS_TOKEN, '</s>', '<eos>', '[EOS]')
# Text per source the BPE is trained on: enough for a stable vocabulary, small enough to take seconds.
BPE_SAMPLE_BYTES = 4 << 20
# Only documents in the upper half of the split order are sampled, so test documents (the lower end)
# never shape the vocabulary unless the held-out split exceeds half a source.
_BPE_SPLIT_FLOOR = 0.5
_BPE_VERSION = 1


def tokenizer_hash(tokenizer: tokenizers.Tokenizer) -> str:
  """Content hash of a tokenizer (its full JSON)."""
  return hashlib.sha256(tokenizer.to_str().encode('utf-8')).hexdigest()[:16]


def eos_id(tokenizer: tokenizers.Tokenizer) -> int:
  """The id appended after every document."""
  for token in _EOS_CANDIDATES:
    token_id = tokenizer.token_to_id(token)
    if token_id is not None:
      return token_id
  raise ValueError(
    f'the tokenizer has none of the EOS tokens {list(_EOS_CANDIDATES)}; add {EOS_TOKEN!r} as a '
    'special token to its JSON'
  )


def load_tokenizer(data) -> tokenizers.Tokenizer:
  """The tokenizer of a config's data section (DataConfig): data.tokenizer 'olmo', 'bpe' (trained on data.general
  + data.domain, cached) or a JSON path."""
  if data.tokenizer == 'olmo':
    from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    return _from_file(fetch.tokenizer_file(data.cache_dir))
  if data.tokenizer == 'bpe':
    specs = {'general': data.general, 'domain': data.domain}
    return train_bpe(specs, data.tokenizer_vocab_size, data.cache_dir)
  return _from_file(data.tokenizer)


def _from_file(path) -> tokenizers.Tokenizer:
  path = pathlib.Path(os.path.expanduser(str(path)))
  if not path.is_file():
    raise ValueError(
      f"tokenizer file {str(path)!r} does not exist; set --config.data.tokenizer to a tokenizers JSON, 'olmo' or 'bpe'"
    )
  try:
    return tokenizers.Tokenizer.from_file(str(path))
  except Exception as error:
    raise ValueError(
      f'{path} is not a tokenizers JSON ({str(error).splitlines()[0]}); point '
      '--config.data.tokenizer at a tokenizer.json'
    ) from None


def _sample(source: sources_lib.Source, budget: int) -> list:
  """Training-side documents in a fixed hash order, truncated to `budget` characters in all.

  Streams the source keeping only the lowest-hash documents that can still fall within the budget, so memory
  is about `budget` whatever the size of the source.
  """

  def lowest(documents) -> list:
    heap, kept = [], 0  # Max-heap on the hash (negated), holding the lowest hashes seen so far.
    for document_hash, document in documents:
      heapq.heappush(heap, (-document_hash, document))
      kept += len(document)
      while heap and kept - len(heap[0][1]) >= budget:
        kept -= len(heapq.heappop(heap)[1])
    return sorted((-negated, document) for negated, document in heap)

  upper = (
    (h, d)
    for d in source.documents()
    for h in (sources_lib.content_hash(d),)
    if sources_lib.split_unit(h) >= _BPE_SPLIT_FLOOR
  )
  ranked = lowest(upper)
  if not ranked:  # A source of one or two documents: use what there is.
    ranked = lowest((sources_lib.content_hash(d), d) for d in source.documents())
  sample, used = [], 0
  for _, document in ranked:
    if used >= budget:
      break
    sample.append(document[: budget - used])
    used += len(sample[-1])
  return sample


def train_bpe(
  specs: dict, vocab_size: int, cache_dir: str = '', sample_bytes: int = BPE_SAMPLE_BYTES
) -> tokenizers.Tokenizer:
  """Trains (or loads from cache) a byte-level BPE with `vocab_size` entries including EOS."""
  if vocab_size < 258:
    raise ValueError(
      f'tokenizer_vocab_size {vocab_size} is too small for a byte-level BPE (256 bytes + EOS); '
      'set --config.data.tokenizer_vocab_size to at least 258'
    )
  parsed = [sources_lib.parse(spec, name, cache_dir) for name, spec in sorted(specs.items()) if spec]
  token_sources = [s.name for s in parsed if s.is_tokens]
  if token_sources:
    raise ValueError(
      f'cannot train a BPE on pre-tokenized source(s) {token_sources}; set '
      '--config.data.tokenizer to the tokenizer those ids come from'
    )
  key = json.dumps(
    {
      'version': _BPE_VERSION,
      'vocab_size': vocab_size,
      'sample_bytes': sample_bytes,
      'sources': [s.fingerprint() for s in parsed],
    },
    sort_keys=True,
  )
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  path = sources_lib.cache_root(cache_dir) / 'tokenizers' / f'bpe-{vocab_size}-{digest}.json'
  if path.is_file():
    return tokenizers.Tokenizer.from_file(str(path))
  texts = [text for source in parsed for text in _sample(source, sample_bytes)]
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[EOS_TOKEN],
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_suffix(f'.tmp{os.getpid()}')
  tokenizer.save(str(partial))
  os.replace(partial, path)
  logging.info(
    'trained a byte-level BPE of %d tokens on %.1f MB: %s',
    tokenizer.get_vocab_size(),
    sum(len(t) for t in texts) / 1e6,
    path,
  )
  return tokenizer
