"""Tokenize, split by document hash, pack and write each source once; later runs reuse the result.

Layout: `<cache_root>/prepared/<key>/` holds `train_<source>.npy` and `eval_<set>.npy` ([N, seq_len+1],
uint16 when the vocabulary fits, else uint32; read memory-mapped), `test_documents_<source>.json` (content
hashes of every held-out document), `tokenizer.json` (the tokenizer the ids belong to) and `metadata.json`.
The held-out split is drawn over all of a source's documents before any subsampling (so it does not depend on
the budgets), and a document held out in any source is kept out of every training split.
Ahead of training: `python -m spt_jax.data.prepare --config=configs/proofpile.py:tiny`. The key hashes the
inputs (source specs, tokenizer, seq_len, seed, budgets, split), not the source contents: when a source's files change under an existing prepared set
(sizes, mtimes or manifests differ and the checksums confirm it), `prepare` raises a one-line error naming the
source and the folder to delete, so a resumed run never silently trains on different data.
"""

import collections
import contextlib
from concurrent import futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import socket
import sys
import time

import numpy as np
import tokenizers

from spt_jax.data import sources as sources_lib
from spt_jax.data import tokenizer as tokenizer_lib

FORMAT_VERSION = 2  # 2: held-out split before subsampling, across sources.
MAX_EVAL_SEQUENCES = 4096  # Cap of each held-out eval set; more adds eval time, not precision that matters.
_CHUNK_CHARS = 1 << 20  # Text per tokenizer task: large enough to amortise pickling, small enough to balance.
_MIN_PROCESSES = 8  # Below this many cores, the tokenizer's threads in one process are as fast.
TRAIN_SOURCES = ('general', 'domain')


@dataclasses.dataclass
class PreparedData:
  """Packed sequences per training source and per eval set, plus what is needed to read them."""
  train: dict
  eval_sets: dict
  bytes_per_token: dict
  vocab_size: int
  tokenizer: tokenizers.Tokenizer
  metadata: dict
  path: pathlib.Path


# Tokenizer worker state (one tokenizer per process).
_worker_tokenizer = None


def _init_worker(tokenizer_json: str) -> None:
  global _worker_tokenizer
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # One process per core already: no nested threads.
  _worker_tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)


def _encode(tokenizer, texts: list, eos: int) -> tuple:
  """Token ids of texts, each followed by EOS, concatenated; and the per-document lengths."""
  encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
  lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(texts))
  ids = np.empty(int(lengths.sum()), dtype=np.uint32)
  ends = np.cumsum(lengths)
  for encoding, end, length in zip(encodings, ends.tolist(), lengths.tolist()):
    ids[end - length:end - 1] = encoding.ids
  ids[ends - 1] = eos
  return ids, lengths


def _encode_in_worker(task: tuple) -> tuple:
  texts, eos = task
  return _encode(_worker_tokenizer, texts, eos)


def _chunks(texts: list) -> list:
  chunks, current, size = [], [], 0
  for text in texts:
    current.append(text)
    size += len(text)
    if size >= _CHUNK_CHARS:
      chunks.append(current)
      current, size = [], 0
  if current:
    chunks.append(current)
  return chunks


def _use_processes(workers: int) -> bool:
  """Worker processes pay off only on many cores; forking is unsafe once JAX's threads exist."""
  return (workers >= _MIN_PROCESSES and 'jax' not in sys.modules
          and 'fork' in multiprocessing.get_all_start_methods())


def tokenize_documents(texts: list, tokenizer, eos: int, num_workers: int = 0, max_tokens: int = 0):
  """Yields (ids, lengths) per chunk, in order, on num_workers cores; stops after max_tokens (0: all).

  Few cores: one process, the tokenizer's own threads encode each batch in parallel. Many cores: forked
  worker processes, one single-threaded tokenizer each, so that turning ids into arrays runs in parallel too.
  """
  workers = num_workers or os.cpu_count() or 1
  chunks = _chunks(texts)
  if workers > 1 and len(chunks) > 1 and _use_processes(workers):
    results = _encode_in_pool(chunks, tokenizer, eos, min(workers, len(chunks)))
  else:
    results = _encode_in_process(chunks, tokenizer, eos, threads=workers > 1)
  total = 0
  for ids, lengths in results:
    yield ids, lengths
    total += len(ids)
    if max_tokens and total >= max_tokens:
      results.close()
      return


@contextlib.contextmanager
def _tokenizer_threads(enabled: bool):
  """Turns the tokenizer's thread pool on or off for a while (it reads the variable at every call)."""
  previous = os.environ.get('TOKENIZERS_PARALLELISM')
  os.environ['TOKENIZERS_PARALLELISM'] = 'true' if enabled else 'false'
  try:
    yield
  finally:
    if previous is None:
      os.environ.pop('TOKENIZERS_PARALLELISM', None)
    else:
      os.environ['TOKENIZERS_PARALLELISM'] = previous


def _encode_in_process(chunks: list, tokenizer, eos: int, threads: bool):
  with _tokenizer_threads(threads):
    for chunk in chunks:
      yield _encode(tokenizer, chunk, eos)


def _encode_in_pool(chunks: list, tokenizer, eos: int, workers: int):
  """Encodes chunks in forked worker processes, in order, with a bounded number of chunks in flight."""
  with _tokenizer_threads(False):  # Forked children must not inherit a thread pool.
    executor = futures.ProcessPoolExecutor(workers, multiprocessing.get_context('fork'), _init_worker,
                                           (tokenizer.to_str(),))
    pending = collections.deque()
    try:
      for chunk in chunks:
        pending.append(executor.submit(_encode_in_worker, (chunk, eos)))
        if len(pending) >= 2 * workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      executor.shutdown(wait=True, cancel_futures=True)


def _documents(source, eos: int) -> tuple[list, list, list]:
  """Every document of a source with its content hash and UTF-8 size (None for already-tokenized sources)."""
  if source.is_tokens:
    documents = [d if d[-1] == eos else np.append(d, eos) for d in source.token_documents(eos)]
    hashes = [sources_lib.content_hash(d) for d in documents]
    sizes = [None] * len(documents)
  else:
    documents = list(source.documents())
    encoded = [d.encode('utf-8', errors='replace') for d in documents]
    hashes = [int.from_bytes(hashlib.blake2b(e, digest_size=8).digest(), 'little') for e in encoded]
    sizes = [len(e) for e in encoded]
    del encoded
  if not documents:
    raise ValueError(f'source {source.name!r} ({source.spec}) has no documents; point it at non-empty text')
  return documents, hashes, sizes


def _tokenized(source, documents: list, indices: list, tokenizer, eos: int, workers: int,
               max_tokens: int = 0) -> list:
  """Token arrays of documents[indices], in that order, up to (and including) the one crossing max_tokens."""
  if source.is_tokens:
    arrays = [documents[i] for i in indices]
  else:
    arrays = []
    for ids, lengths in tokenize_documents([documents[i] for i in indices], tokenizer, eos, workers, max_tokens):
      arrays.extend(np.split(ids, np.cumsum(lengths)[:-1]))
  if max_tokens and arrays:
    ends = np.cumsum([len(a) for a in arrays])
    arrays = arrays[:int(np.searchsorted(ends, max_tokens)) + 1]
  return arrays


def _held_out(source, documents, hashes, tokenizer, eos, workers, test_fraction: float, test_tokens: int):
  """Indices of the held-out documents, in split order: the lowest split positions, by fraction or budget.

  The split depends on the documents alone (never on subsampling), and duplicates share their split.
  """
  units = [sources_lib.split_unit(h) for h in hashes]
  by_unit = sorted(range(len(documents)), key=units.__getitem__)
  if test_tokens > 0:
    budget = _tokenized(source, documents, by_unit, tokenizer, eos, workers, test_tokens)
    threshold = units[by_unit[len(budget) - 1]]
    return [i for i in by_unit if units[i] <= threshold]
  return [i for i in by_unit if units[i] < test_fraction]


def _pack(arrays: list, seq_len: int, dtype) -> np.ndarray:
  """Concatenates documents and cuts [N, seq_len + 1] sequences without overlap; drops the remainder."""
  stream = np.concatenate(arrays) if arrays else np.zeros(0, dtype)
  count = len(stream) // (seq_len + 1)
  return stream[:count * (seq_len + 1)].astype(dtype).reshape(count, seq_len + 1)


def _bytes_per_token(tokenizer, sizes: list, arrays: list) -> float:
  tokens = sum(len(a) for a in arrays)
  if not tokens:
    return float('nan')
  if sizes and sizes[0] is not None:
    return sum(sizes) / tokens
  sample, used = [], 0  # Token sources: decode up to a million tokens to measure it.
  for array in arrays:
    sample.append(array.tolist())
    used += len(array)
    if used >= 1_000_000:
      break
  text = tokenizer.decode_batch(sample)
  return sum(len(t.encode('utf-8')) for t in text) / used


def _tokenizer_identity(config) -> str:
  """What fixes the tokenizer, cheaply: its file's content, or the BPE recipe (its sources are in the key)."""
  name = config.data.tokenizer
  if name == 'bpe':
    return f'bpe:{config.data.tokenizer_vocab_size}:{tokenizer_lib.BPE_SAMPLE_BYTES}'
  if name == 'olmo':
    from spt_jax.data import fetch  # pylint: disable=g-import-not-at-top
    path = pathlib.Path(fetch.tokenizer_file(config.data.cache_dir))
  else:
    path = pathlib.Path(os.path.expanduser(name))
  if not path.is_file():
    raise ValueError(f'tokenizer file {str(path)!r} does not exist; set --config.data.tokenizer to a '
                     "tokenizers JSON, 'olmo' or 'bpe'")
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_key(config, tokenizer_identity: str, specs: dict) -> str:
  data = config.data
  inputs = dict(version=FORMAT_VERSION, specs=specs, tokenizer=tokenizer_identity, seq_len=data.seq_len,
                seed=config.seed, domain_max_tokens=data.domain_max_tokens,
                general_max_tokens=data.general_max_tokens, test_fraction=data.test_fraction,
                test_tokens=data.test_tokens, domain_train_sequences=data.domain_train_sequences)
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _check_unchanged(source, stored: dict, folder: pathlib.Path) -> None:
  """Raises if a source's files differ from those the prepared folder was made from."""
  current = source.fingerprint()
  if current == stored['fingerprint']:
    return
  changed = sorted(set(current) ^ set(stored['fingerprint']))
  suspects = [p for p in set(current) & set(stored['fingerprint'])
              if p != 'spec' and current[p] != stored['fingerprint'][p]]
  for path in sorted(suspects):
    old = stored['checksums'].get(path)
    checksum = sources_lib._file_checksum(pathlib.Path(path), sampled=source.is_tokens)  # pylint: disable=protected-access
    if old is None or checksum != old:
      changed.append(path)
  if changed:
    raise ValueError(f'source {source.name!r} ({source.spec}) changed since {folder} was prepared '
                     f'({len(changed)} file(s) differ, e.g. {changed[0]}); delete that folder to re-prepare')


def prepare(config) -> PreparedData:
  """Returns the packed train and eval sequences for config.data, preparing them on first use."""
  data = config.data
  if data.seq_len < 1:
    raise ValueError(f'data.seq_len must be positive, got {data.seq_len}; set --config.data.seq_len')
  if not 0 <= data.test_fraction < 1:
    raise ValueError(f'data.test_fraction {data.test_fraction} is outside [0, 1); set --config.data.test_fraction')
  if data.test_fraction == 0 and data.test_tokens <= 0:
    raise ValueError('data.test_fraction and data.test_tokens are both 0, so there is no held-out set; set one')
  extra = dict(config.get('extra_eval', {}) or {})
  clash = sorted(set(extra) & {'domain_test', 'domain_train', 'general_test'})
  if clash:
    raise ValueError(f'extra_eval names {clash} clash with the built-in eval sets; rename them')
  specs = {'domain': data.domain, 'general': data.general}  # The small domain first: its errors come early.
  specs.update({f'extra:{name}': spec for name, spec in sorted(extra.items())})
  parsed = {name: sources_lib.parse(spec, name, data.cache_dir) for name, spec in specs.items()}
  key = _cache_key(config, _tokenizer_identity(config), specs)
  folder = sources_lib.cache_root(data.cache_dir) / 'prepared' / key
  if (folder / 'metadata.json').is_file():
    metadata = json.loads((folder / 'metadata.json').read_text())
    for name, source in parsed.items():
      _check_unchanged(source, metadata['sources'][name], folder)
    # The tokenizer the sequences were made with travels with them (a BPE may since have been retrained).
    return _load(folder, metadata, tokenizers.Tokenizer.from_file(str(folder / 'tokenizer.json')))
  tokenizer = tokenizer_lib.load_tokenizer(config)
  metadata = _build(config, parsed, tokenizer, tokenizer_lib.tokenizer_hash(tokenizer), folder)
  return _load(folder, metadata, tokenizer)


def _build(config, parsed: dict, tokenizer, digest: str, folder: pathlib.Path) -> dict:
  """Prepares every source into a temporary folder and renames it into place."""
  data, start = config.data, time.time()
  eos = tokenizer_lib.eos_id(tokenizer)
  vocab_size = tokenizer.get_vocab_size()
  dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
  workers = data.num_workers or os.cpu_count() or 1
  # Unique per host and process: on a shared cache, hosts may prepare the same folder at once.
  partial = folder.parent / f'.{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}'
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  metadata = dict(version=FORMAT_VERSION, tokenizer=digest, vocab_size=vocab_size, eos=eos,
                  seq_len=data.seq_len, dtype=np.dtype(dtype).name, seed=config.seed, sources={},
                  eval_sets={}, bytes_per_token={})
  text_bytes = 0
  eval_cap = MAX_EVAL_SEQUENCES * (data.seq_len + 1)
  # First every source's held-out documents, so that none of them reaches training through any source.
  read = {}
  for name, source in parsed.items():
    documents, hashes, sizes = _documents(source, eos)
    held = (list(range(len(documents))) if name.startswith('extra:') else
            _held_out(source, documents, hashes, tokenizer, eos, workers, data.test_fraction, data.test_tokens))
    read[name] = (documents, hashes, sizes, held)
  held_out_hashes = {read[name][1][i] for name in read for i in read[name][3]}
  pick = lambda items, indices: [items[i] for i in indices]
  for name, source in parsed.items():
    documents, hashes, sizes, held = read.pop(name)
    test_arrays = _tokenized(source, documents, held, tokenizer, eos, workers, eval_cap)
    test_sizes = pick(sizes, held[:len(test_arrays)])
    info = dict(spec=source.spec, fingerprint=source.fingerprint(), bad_bytes=source.bad_bytes,
                checksums=source.checksums or source.content_checksums(), documents=len(documents))
    if name.startswith('extra:'):
      text_bytes += sum(s for s in test_sizes if s is not None)
      _write(partial, f'eval_{name[6:]}', _pack(test_arrays, data.seq_len, dtype)[:MAX_EVAL_SEQUENCES], metadata,
             bytes_per_token=_bytes_per_token(tokenizer, test_sizes, test_arrays))
      info.update(tokens=int(sum(len(a) for a in test_arrays)))
      metadata['sources'][name] = info
      continue
    # Training documents: the rest, in a seeded order, subsampled by whole documents to max_tokens.
    candidates = [i for i in range(len(documents)) if hashes[i] not in held_out_hashes]
    candidates.sort(key=lambda i: sources_lib.seeded_order_key(hashes[i], config.seed))
    train_arrays = _tokenized(source, documents, candidates, tokenizer, eos, workers,
                              data.get(f'{name}_max_tokens', 0))
    train_sizes = pick(sizes, candidates[:len(train_arrays)])
    text_bytes += sum(s for s in train_sizes + test_sizes if s is not None)
    train = _pack(train_arrays, data.seq_len, dtype)
    held_out = _pack(test_arrays, data.seq_len, dtype)
    for split, rows in (('training', train), ('held-out', held_out)):
      if not len(rows):
        raise ValueError(f'the {name} {split} split has fewer than seq_len + 1 = {data.seq_len + 1} tokens; '
                         'add documents, lower --config.data.seq_len or adjust test_fraction/test_tokens')
    _write(partial, f'train_{name}', train, metadata)
    _write(partial, f'eval_{name}_test', held_out[:MAX_EVAL_SEQUENCES], metadata,
           bytes_per_token=_bytes_per_token(tokenizer, test_sizes, test_arrays))
    if name == 'domain':
      count = min(data.domain_train_sequences, len(train))
      rows = np.sort(np.random.default_rng([config.seed, 7]).choice(len(train), count, replace=False))
      _write(partial, 'eval_domain_train', train[rows], metadata,
             bytes_per_token=_bytes_per_token(tokenizer, train_sizes, train_arrays))
    info.update(documents_kept=len(train_arrays) + len(held), documents_train=len(train_arrays),
                documents_test=len(held), documents_dropped_as_held_out_elsewhere=(
                    len(documents) - len(held) - len(candidates)),
                tokens_train=int(sum(map(len, train_arrays))), tokens_test=int(sum(map(len, test_arrays))),
                sequences_train=len(train), sequences_test=len(held_out))
    metadata['sources'][name] = info
    (partial / f'test_documents_{name}.json').write_text(json.dumps(
        sorted(f'{h:016x}' for h in pick(hashes, held))))
  seconds = time.time() - start
  metadata.update(seconds=round(seconds, 2), text_bytes=text_bytes, workers=workers,
                  megabytes_per_second_per_worker=round(text_bytes / 1e6 / seconds / workers, 3))
  tokenizer.save(str(partial / 'tokenizer.json'))
  (partial / 'metadata.json').write_text(json.dumps(metadata, indent=1, sort_keys=True))
  try:
    partial.rename(folder)
  except OSError:  # Another process finished the same folder first: theirs is identical.
    shutil.rmtree(partial, ignore_errors=True)
    return json.loads((folder / 'metadata.json').read_text())
  logging.info('prepared %.1f MB of text in %.1f s into %s', text_bytes / 1e6, seconds, folder)
  return metadata


def _write(folder: pathlib.Path, stem: str, rows: np.ndarray, metadata: dict, bytes_per_token=None) -> None:
  array = np.lib.format.open_memmap(folder / f'{stem}.npy', mode='w+', dtype=rows.dtype, shape=rows.shape)
  array[:] = rows
  array.flush()
  del array
  if stem.startswith('eval_'):
    metadata['eval_sets'][stem[5:]] = len(rows)
    metadata['bytes_per_token'][stem[5:]] = bytes_per_token


def _load(folder: pathlib.Path, metadata: dict, tokenizer) -> PreparedData:
  read = lambda stem: np.load(folder / f'{stem}.npy', mmap_mode='r')
  return PreparedData(
      train={name: read(f'train_{name}') for name in TRAIN_SOURCES},
      eval_sets={name: read(f'eval_{name}') for name in metadata['eval_sets']},
      bytes_per_token=dict(metadata['bytes_per_token']), vocab_size=metadata['vocab_size'],
      tokenizer=tokenizer, metadata=metadata, path=folder)


def main(argv) -> None:
  """Prepares a config's data ahead of training: python -m spt_jax.data.prepare --config=configs/x.py:preset."""
  del argv
  data = prepare(_CONFIG.value)
  for name, rows in {**{f'train_{k}': v for k, v in data.train.items()}, **data.eval_sets}.items():
    print(f'{name:24s} {rows.shape[0]:>10,d} sequences of {rows.shape[1]} tokens')
  print(f'{data.path}  ({data.metadata.get("seconds", 0):.1f} s, '
        f'{data.metadata.get("megabytes_per_second_per_worker", 0):.2f} MB/s per worker when prepared)')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file (configs/<domain>.py:<preset>).')
  app.run(main)
