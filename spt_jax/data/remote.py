"""Token files that live elsewhere (https://, gs://, s3://, any fsspec URL): listed, then fetched once into the cache.

A fetch is resumable: bytes arrive in `<file>.part` and a rerun continues from its end with a ranged read.
When it completes, its size is checked against the remote size and its SHA-256 (and the expected one, when the
list gives it) is recorded beside it in `<file>.json`; a cached file whose size no longer matches its record is
fetched again. Lists: a glob over a URL (fsspec expands it where the store can list), or `@FILE`, a text file with
one URL (optionally followed by its sha256) per line; a bare name resolves against spt_jax/data/lists/.
"""

import hashlib
import json
import logging
import os
import pathlib
import time

from spt_jax.data import shards

_LISTS = pathlib.Path(__file__).parent / 'lists'
_BLOCK = 8 << 20


def is_remote(path: str) -> bool:
  return '://' in str(path) and not str(path).startswith('file://')


def _filesystem(url: str):
  import fsspec  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return fsspec.core.url_to_fs(url)


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


def remote_size(url: str) -> int:
  fs, path = _filesystem(url)
  return int(fs.size(path))


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
  try:
    size = remote_size(url)
  except Exception as error:
    raise ValueError(f'{where}: cannot reach {url} ({type(error).__name__}: {str(error)[:120]})') from None
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
