"""Tokenizing a stream of documents in bounded memory: chunks of text in, token ids (EOS after each) out.

Few cores: one process, the tokenizer's own threads encode each chunk in parallel. Many cores: forked worker
processes, one single-threaded tokenizer each, so that turning ids into arrays runs in parallel too. At most
2 × workers chunks are in flight, so memory does not depend on the size of the source.
"""

import collections
import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent import futures

import numpy as np
import tokenizers

CHUNK_CHARS = 1 << 20  # Text per tokenizer task: large enough to amortise pickling, small enough to balance.
_MIN_PROCESSES = 8  # Below this many cores, the tokenizer's threads in one process are as fast.

_worker_tokenizer = None  # One tokenizer per worker process.


def _init_worker(tokenizer_json: str) -> None:
  global _worker_tokenizer
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # One process per core already: no nested threads.
  _worker_tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)


def encode(tokenizer, texts: list, eos: int) -> tuple:
  """Token ids of texts, each followed by EOS, concatenated (uint32); and the per-document lengths."""
  encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
  lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(texts))
  ids = np.empty(int(lengths.sum()), dtype=np.uint32)
  ends = np.cumsum(lengths)
  for encoding, end, length in zip(encodings, ends.tolist(), lengths.tolist(), strict=True):
    ids[end - length : end - 1] = encoding.ids
  ids[ends - 1] = eos
  return ids, lengths


def _encode_in_worker(task: tuple) -> tuple:
  texts, eos = task
  return encode(_worker_tokenizer, texts, eos)


def chunked(texts: Iterable[str], chunk_chars: int = 0) -> Iterator[list]:
  """Groups a stream of documents into lists of about chunk_chars (default CHUNK_CHARS) characters."""
  chunk_chars = chunk_chars or CHUNK_CHARS
  current, size = [], 0
  for text in texts:
    current.append(text)
    size += len(text)
    if size >= chunk_chars:
      yield current
      current, size = [], 0
  if current:
    yield current


def _use_processes(workers: int) -> bool:
  """Worker processes pay off only on many cores; forking is unsafe once JAX's threads exist."""
  return workers >= _MIN_PROCESSES and 'jax' not in sys.modules and 'fork' in multiprocessing.get_all_start_methods()


def encode_chunks(chunks: Iterable[list], tokenizer, eos: int, num_workers: int = 0) -> Iterator[tuple]:
  """Yields (chunk, ids, lengths) for each chunk of documents, in order, on num_workers cores."""
  workers = num_workers or os.cpu_count() or 1
  if workers > 1 and _use_processes(workers):
    yield from _encode_in_pool(chunks, tokenizer, eos, workers)
  else:
    with _tokenizer_threads(workers > 1):
      for chunk in chunks:
        yield (chunk, *encode(tokenizer, chunk, eos))


def tokenize_documents(texts: Iterable[str], tokenizer, eos: int, num_workers: int = 0, max_tokens: int = 0):
  """Yields (ids, lengths) per chunk, in order; stops after max_tokens (0: all)."""
  total = 0
  results = encode_chunks(chunked(texts), tokenizer, eos, num_workers)
  for _, ids, lengths in results:
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


def _encode_in_pool(chunks: Iterable[list], tokenizer, eos: int, workers: int):
  """Encodes chunks in forked worker processes, in order, with a bounded number of chunks in flight."""
  with _tokenizer_threads(False):  # Forked children must not inherit a thread pool.
    executor = futures.ProcessPoolExecutor(
      workers, multiprocessing.get_context('fork'), _init_worker, (tokenizer.to_str(),)
    )
    pending = collections.deque()
    try:
      for chunk in chunks:
        pending.append((chunk, executor.submit(_encode_in_worker, (chunk, eos))))
        if len(pending) >= 2 * workers:
          chunk, future = pending.popleft()
          yield (chunk, *future.result())
      while pending:
        chunk, future = pending.popleft()
        yield (chunk, *future.result())
    finally:
      executor.shutdown(wait=True, cancel_futures=True)
