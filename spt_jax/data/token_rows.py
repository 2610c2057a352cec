"""Pre-tokenized sources used in place: flat token files viewed as [N, seq_len + 1] rows, never copied.

Each file's tokens are cut into consecutive rows (its remainder is dropped, as packing drops one); rows of all
files are numbered in file order. Only as many files as the token budget needs are used. Remote files are read
by range, row by row (remote.RemoteTokens), unless their list pins a whole file's SHA-256 (then fetched whole
into the cache and checked). The held-out set is the tail of the last file used, whole documents from the first one
after a token budget (test_tokens, or test_fraction of the tokens used) from the end; training rows stop before it.
"""

import dataclasses
import math
import pathlib

import numpy as np

from spt_jax.data import remote
from spt_jax.storage import bucket

_SEARCH = 1 << 14  # Tokens scanned at a time when looking for a document boundary (a ranged read when remote).


class TokenRows:
  """A read-only [rows, row_length] view over several memory-mapped flat token files."""

  def __init__(self, arrays: list, rows: list, row_length: int):
    self._views = [
      a.rows(r) if isinstance(a, remote.RemoteTokens) else a[: r * row_length].reshape(r, row_length)
      for a, r in zip(arrays, rows, strict=False)
      if r
    ]
    self._starts = np.cumsum([0] + [len(v) for v in self._views])
    self.shape = (int(self._starts[-1]), row_length)
    self.ndim, self.dtype = 2, (self._views[0].dtype if self._views else np.dtype(np.uint16))

  def __len__(self) -> int:
    return self.shape[0]

  @property
  def remote(self) -> bool:
    """Whether some rows are read by range from remote files (each read waits on the network)."""
    return any(isinstance(view, remote.RemoteRows) for view in self._views)

  def __array__(self, dtype=None, copy=None):
    result = np.concatenate(self._views) if self._views else np.zeros(self.shape, self.dtype)
    return result.astype(dtype) if dtype is not None else result

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self[np.arange(*index.indices(len(self)))]
    indices = np.asarray(index, dtype=np.int64)
    if indices.ndim == 0:
      return self[indices[None]][0]
    if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f'row index out of range [0, {len(self)})')
    files = np.searchsorted(self._starts, indices, side='right') - 1
    result = np.empty((len(indices), self.shape[1]), self.dtype)
    for number in np.unique(files).tolist():
      pick = files == number
      result[pick] = self._views[number][indices[pick] - self._starts[number]]
    return result


@dataclasses.dataclass
class Plan:
  """Which files and rows of a token source train, and where its held-out tail starts."""

  paths: list  # Local paths; remote files read by range keep their URL.
  arrays: list  # Each file's tokens: memory-mapped, or remote.RemoteTokens.
  rows: list
  test_start: int  # In the last file.
  test_end: int
  tokens_used: int


def _document_start_before(tokens: np.ndarray, position: int, eos: int) -> int:
  """The first token after the last EOS before `position` (0 when there is none), read in growing windows."""
  window = 1 << 10
  while position > 0:
    low = max(position - window, 0)
    ends = np.flatnonzero(tokens[low:position] == eos)
    if len(ends):
      return low + int(ends[-1]) + 1
    position, window = low, min(2 * window, _SEARCH)
  return 0


def open_file(source, name: str, row_length: int, cache_root: pathlib.Path, cache: remote.RowCache, pin=None):
  """(path or URL, tokens) of one file of a token source; a remote one read by range through `cache`."""
  where = f'source {source.name!r}'
  if not bucket.is_url(name):
    return name, source.token_array(pathlib.Path(name))
  if name in source.expected_sha256:
    path = remote.fetch(name, cache_root, source.expected_sha256[name], where)
    return str(path), source.token_array(path)
  tokens = remote.RemoteTokens(name, source.options['dtype'], row_length, cache, where, pin)
  source.checksums[name] = tokens.pin['sha256']
  return name, tokens


def plan(
  source,
  seq_len: int,
  eos: int,
  max_tokens: int,
  test_fraction: float,
  test_tokens: int,
  cache_root: pathlib.Path,
  cache: remote.RowCache,
) -> Plan:
  """Uses files in order until max_tokens (0: all) plus the held-out budget are covered."""
  eos = int(source.options.get('eos', eos))
  row = seq_len + 1
  paths, arrays, total = [], [], 0
  for name in source.paths:
    reserve = test_tokens or math.ceil(test_fraction * total)
    if max_tokens and arrays and total >= max_tokens + reserve:
      break
    path, tokens = open_file(source, name, row, cache_root, cache)
    arrays.append(tokens)
    paths.append(path)
    total += len(arrays[-1])
  last = arrays[-1]
  held = min(test_tokens or math.ceil(test_fraction * total), len(last) // 2)
  start = _document_start_before(last, len(last) - held, eos) if held else len(last)
  rows = [len(a) // row for a in arrays[:-1]] + [start // row]
  if max_tokens:
    left = max(-(-max_tokens // row), 1)
    for k, count in enumerate(rows):
      rows[k] = min(count, left)
      left -= rows[k]
  return Plan(paths=paths, arrays=arrays, rows=rows, test_start=start, test_end=len(last), tokens_used=total)
