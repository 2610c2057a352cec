"""Token files that live elsewhere (https://, gs://, s3://, any fsspec URL): listed, then read by range or fetched.

Read by range (`RemoteTokens`, the default): a file is cut into rows of seq_len + 1 tokens from its first byte (as
training reads it) and only the rows asked for are fetched, consecutive ones in one ranged GET, so a host
transfers its own share of the files and nothing else. Fetched rows are kept in a folder per process under the
cache, up to a bound in bytes (data.remote_cache_bytes; the least recently used rows are dropped first). Each
file is pinned by its size and the SHA-256 of its first and last rows, recorded when the data is prepared and
checked whenever it is opened again: a file that changed stops the run with one line. `gs://` needs `gcsfs`
(fsspec's Google Cloud Storage), `https://` needs `aiohttp`.

Fetched whole (`fetch`, when a list pins a file's SHA-256, which only the whole file can confirm): resumable,
bytes arrive in `<file>.part` and a rerun continues from its end with a ranged read. When it completes, its size
is checked against the remote size and its SHA-256 against the list's; both are recorded beside it in
`<file>.json`; a cached file whose size no longer matches its record is fetched again. Lists: a glob over a URL
(fsspec expands it where the store can list), or `@FILE`, a text file with one URL (optionally followed by its
sha256) per line; a bare name resolves against spt_jax/data/lists/.
"""

import collections
import hashlib
import json
import logging
import os
import pathlib
import sys
import threading
import time

import numpy as np

from spt_jax.data import shards
from spt_jax.storage.bucket import filesystem as _filesystem

_LISTS = pathlib.Path(__file__).parent / 'lists'
_BLOCK = 8 << 20


def read_list(name: str, where: str) -> tuple[list, dict]:
  """URLs (or paths) of an @list file and the sha256 given for any of them."""
  path = pathlib.Path(os.path.expanduser(name))
  if not path.is_file() and (_LISTS / name).is_file():
    path = _LISTS / name
  if not path.is_file():
    raise ValueError(
      f'{where}: list file {name!r} does not exist (nor spt_jax/data/lists/{name}); write one URL or path per line'
    )
  urls, expected = [], {}
  for line in path.read_text().splitlines():
    fields = line.split('#', 1)[0].split()
    if fields:
      urls.append(fields[0])
      if len(fields) > 1:
        expected[fields[0]] = fields[1].lower()
  if not urls:
    raise ValueError(f'{where}: list file {path} names no files')
  return urls, expected


def expand(pattern: str, where: str) -> list:
  """The URLs a remote pattern names, in sorted order (a pattern without wildcards names itself)."""
  if not any(c in pattern for c in '*?['):
    return [pattern]
  fs, path = _filesystem(pattern)
  try:
    found = sorted(fs.glob(path))
  except Exception as error:
    raise ValueError(
      f'{where}: cannot list {pattern} ({type(error).__name__}: {str(error)[:120]}); name the '
      'files in an @list file instead'
    ) from None
  if not found:
    raise ValueError(f'{where}: no files match {pattern}; fix the URL or name the files in an @list file')
  return [fs.unstrip_protocol(p) if '://' not in p else p for p in found]


def remote_size(url: str, where: str = 'source') -> int:
  """The size of a remote file in bytes; one line naming the URL when it cannot be read (no network, no
  credentials, no such object, no package for its scheme)."""
  fs, path = _filesystem(url)
  try:
    return int(fs.size(path))
  except Exception as error:
    raise ValueError(
      f'{where}: cannot reach {url} ({type(error).__name__}: {str(error)[:120]}); check the URL, the network and '
      'the credentials'
    ) from None


def local_path(url: str, cache_root: pathlib.Path) -> pathlib.Path:
  """Where a URL's file lives once fetched: under <cache>/remote/<hash of the URL>/<its name>."""
  key = hashlib.sha256(url.encode()).hexdigest()[:16]
  return cache_root / 'remote' / key / url.rstrip('/').rsplit('/', 1)[-1]


def cached(url: str, cache_root: pathlib.Path) -> pathlib.Path | None:
  """The fetched file of a URL when it is complete and matches its record, else None."""
  path = local_path(url, cache_root)
  record = path.with_name(path.name + '.json')
  if path.is_file() and record.is_file():
    if json.loads(record.read_text()).get('size') == path.stat().st_size:
      return path
  return None


def fetch(url: str, cache_root: pathlib.Path, expected_sha256: str = '', where: str = 'source') -> pathlib.Path:
  """The local copy of url, fetching it (or the rest of it) first."""
  done = cached(url, cache_root)
  if done is not None:
    return done
  path = local_path(url, cache_root)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + '.part')
  size = remote_size(url, where)
  offset = partial.stat().st_size if partial.is_file() else 0
  if offset > size:
    partial.unlink()
    offset = 0
  shards.ensure_space(path.parent, size - offset, f'fetching {url}')
  digest = hashlib.sha256()
  if offset:
    with open(partial, 'rb') as file:
      for block in iter(lambda: file.read(_BLOCK), b''):
        digest.update(block)
    logging.info('resuming %s at byte %d of %d', url, offset, size)
  start = time.time()
  fs, remote = _filesystem(url)
  with fs.open(remote, 'rb', block_size=_BLOCK) as source, open(partial, 'ab') as out:
    if offset:
      source.seek(offset)
    while offset < size:
      block = source.read(min(_BLOCK, size - offset))
      if not block:
        break
      try:
        out.write(block)
      except OSError as error:
        raise shards.disk_full(path.parent, size - offset, f'fetching {url}') from error
      digest.update(block)
      offset += len(block)
    out.flush()
    os.fsync(out.fileno())
  if offset != size:
    raise ValueError(f'{where}: {url} ended after {offset} of {size} bytes; rerun to resume the fetch')
  sha256 = digest.hexdigest()
  if expected_sha256 and sha256 != expected_sha256:
    partial.unlink()
    raise ValueError(
      f'{where}: {url} has sha256 {sha256}, not the {expected_sha256} its list gives; fetched again on the next run'
    )
  record = path.with_name(path.name + '.json')
  record.write_text(json.dumps(dict(url=url, size=size, sha256=sha256, fetched=time.time())))
  os.replace(partial, path)
  logging.info('fetched %s (%.1f MB in %.1f s)', url, size / 1e6, time.time() - start)
  return path


class RowCache:
  """Rows fetched by range reads, one file each under `folder`, at most `bound` bytes; least recently used go first.

  One process owns a folder (several processes on one machine get one each), so the bound holds on disk.
  """

  def __init__(self, folder: pathlib.Path, bound: int):
    self.folder, self.bound = pathlib.Path(folder), int(bound)
    self.fetched_bytes = 0  # What this process transferred by range reads (the cache's misses).
    self._lock = threading.Lock()
    self._entries = collections.OrderedDict()  # Relative name -> size, least recently used first.
    self.used = 0
    found = []  # Rows an earlier run of this process kept: (last written, name, size), oldest first.
    for path in self.folder.glob('*/*') if self.folder.is_dir() else []:
      if path.suffix == '.tmp':
        path.unlink(missing_ok=True)
      else:
        stat = path.stat()
        found.append((stat.st_mtime_ns, f'{path.parent.name}/{path.name}', stat.st_size))
    for _, name, size in sorted(found):
      self._entries[name] = size
      self.used += size
    with self._lock:
      self._evict(0)

  def get(self, name: str) -> bytes | None:
    with self._lock:
      if name not in self._entries:
        return None
      self._entries.move_to_end(name)
    try:
      return (self.folder / name).read_bytes()
    except FileNotFoundError:  # Deleted under the cache: forgotten, fetched again.
      with self._lock:
        self.used -= self._entries.pop(name, 0)
      return None

  def put(self, name: str, data: bytes) -> None:
    if len(data) > self.bound:
      return
    with self._lock:
      if name in self._entries:
        return
      self._evict(len(data))
      path = self.folder / name
      path.parent.mkdir(parents=True, exist_ok=True)
      partial = path.with_name(path.name + '.tmp')
      try:
        partial.write_bytes(data)
        os.replace(partial, path)
      except OSError:  # A full disk only costs the cache.
        partial.unlink(missing_ok=True)
        return
      self._entries[name] = len(data)
      self.used += len(data)

  def _evict(self, room: int) -> None:
    while self._entries and self.used + room > self.bound:
      name, size = self._entries.popitem(last=False)
      (self.folder / name).unlink(missing_ok=True)
      self.used -= size


_ROW_CACHES = {}  # One RowCache per folder in a process: every reader of a folder shares its bound.


def row_cache(cache_root: pathlib.Path, bound: int) -> RowCache:
  """This process's cache of range reads under a data cache root (a folder per jax.distributed process)."""
  index = sys.modules['jax'].process_index() if 'jax' in sys.modules else 0
  folder = pathlib.Path(cache_root) / 'remote-rows' / f'process-{index}'
  cache = _ROW_CACHES.get(folder) or _ROW_CACHES.setdefault(folder, RowCache(folder, bound))
  with cache._lock:
    cache.bound = int(bound)
    cache._evict(0)
  return cache


class RemoteTokens:
  """A read-only flat token array over a remote file, read by rows of `row_length` tokens through a RowCache.

  Slicing reads the rows a token range touches; `rows(count)` views the first `count` rows as [count, row_length].
  """

  def __init__(self, url: str, dtype, row_length: int, cache: RowCache, where: str = 'source', pin: dict | None = None):
    self.url, self.dtype, self.row_length, self.cache, self.where = url, np.dtype(dtype), row_length, cache, where
    self._row_bytes = row_length * self.dtype.itemsize
    self._key = hashlib.sha256(url.encode()).hexdigest()[:16]
    self._fs, self._path = _filesystem(url)
    size = remote_size(url, where)
    if pin is not None and size != pin['size']:
      raise ValueError(
        f'{where}: {url} changed since the data was prepared ({pin["size"]} bytes then, {size} now); '
        'delete the prepared folder to prepare from the new files'
      )
    if size % self.dtype.itemsize:
      raise ValueError(
        f'{where}: {url} has {size} bytes, not a multiple of {self.dtype.itemsize} ({self.dtype.name}); check ?dtype='
      )
    self.size, self.shape, self.ndim = size, (size // self.dtype.itemsize,), 1
    self.pin = dict(size=size, sha256=self._ends_digest())
    if pin is not None and self.pin['sha256'] != pin['sha256']:
      raise ValueError(
        f'{where}: {url} changed since the data was prepared (its first and last rows differ from those '
        'recorded); delete the prepared folder to prepare from the new files'
      )

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if not isinstance(index, slice):
      raise TypeError('RemoteTokens reads slices; view rows with rows(count)')
    start, stop, step = index.indices(len(self))
    if stop <= start:
      return np.zeros(0, self.dtype)
    first, last = start // self.row_length, (stop - 1) // self.row_length
    tokens = self._read_rows(list(range(first, last + 1)))
    offset = first * self.row_length
    return tokens[start - offset : stop - offset : step]

  def rows(self, count: int) -> 'RemoteRows':
    return RemoteRows(self, count)

  def read_rows(self, numbers) -> np.ndarray:
    """[len(numbers), row_length] tokens of whole rows (in the order asked)."""
    numbers = np.asarray(numbers, np.int64)
    order = np.unique(numbers)
    flat = self._read_rows(order.tolist()).reshape(len(order), self.row_length)
    return flat[np.searchsorted(order, numbers)]

  def _read_rows(self, numbers: list) -> np.ndarray:
    """The tokens of rows `numbers` (sorted, unique) concatenated; each run of uncached rows is one ranged read."""
    pieces, missing = {}, []
    for number in numbers:
      pieces[number] = self.cache.get(f'{self._key}/{number}')
      if pieces[number] is None:
        missing.append(number)
    for run in np.split(np.asarray(missing, np.int64), np.flatnonzero(np.diff(missing) != 1) + 1) if missing else []:
      first, last = int(run[0]), int(run[-1])
      fetched = self._fetch(first * self._row_bytes, min((last + 1) * self._row_bytes, self.size))
      for number in range(first, last + 1):
        offset = (number - first) * self._row_bytes
        pieces[number] = fetched[offset : offset + self._row_bytes]
        self.cache.put(f'{self._key}/{number}', pieces[number])
    return np.frombuffer(b''.join(pieces[n] for n in numbers), self.dtype)

  def _fetch(self, start: int, end: int) -> bytes:
    try:
      data = self._fs.cat_file(self._path, start=start, end=end)
    except Exception as error:
      raise ValueError(
        f'{self.where}: reading bytes {start}-{end} of {self.url} failed ({type(error).__name__}: {str(error)[:120]})'
      ) from None
    if len(data) != end - start:
      raise ValueError(
        f'{self.where}: {self.url} answered {len(data)} bytes for the range {start}-{end}; the server must honour '
        'Range requests (or the file changed)'
      )
    with self.cache._lock:
      self.cache.fetched_bytes += len(data)
    return data

  def _ends_digest(self) -> str:
    """SHA-256 of the size, the first row and the last whole row (read past the cache): what pins the file."""
    rows = len(self) // self.row_length
    digest = hashlib.sha256(str(self.size).encode())
    for number in sorted({0, rows - 1}) if rows else []:
      digest.update(self._fetch(number * self._row_bytes, (number + 1) * self._row_bytes))
    return digest.hexdigest()


class RemoteRows:
  """The first `count` rows of a RemoteTokens as a read-only [count, row_length] array (integer indexing)."""

  def __init__(self, tokens: RemoteTokens, count: int):
    self.tokens, self.shape, self.ndim, self.dtype = tokens, (count, tokens.row_length), 2, tokens.dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    indices = np.asarray(index, dtype=np.int64)
    if indices.ndim == 0:
      return self[indices[None]][0]
    if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f'row index out of range [0, {len(self)})')
    return self.tokens.read_rows(indices.ravel()).reshape(*indices.shape, self.shape[1])

  def __array__(self, dtype=None, copy=None):
    result = self[np.arange(len(self))]
    return result.astype(dtype) if dtype is not None else result
