"""Writing prepared arrays to disk: streamed, checksummed, checked for space; temporary folders of dead runs.

A shard is a 2-D `.npy` file written by appending rows through ordinary writes (never a writable memory map,
which turns a full disk into SIGBUS). Its header is written last, padded to a fixed size, so that the rows can
stream in without knowing their count. A BLAKE2b digest of the rows is computed while writing and recorded in
the prepared folder's metadata; `damaged_files` recomputes it (whole for small sets, sampled for huge ones).
Other files (metadata.json, tokenizer.json) get the same checks from `file_checks`, their digest over the whole
file (`offset` 0 rather than after the shard header).
"""

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import pathlib
import shutil
import socket
import time

import numpy as np

_HEADER_BYTES = 128  # Fixed .npy header size (version 1.0), padded with spaces.
_SPACE_MARGIN = 64 << 20  # Leave this much free beyond the estimate.
FULL_VERIFY_BYTES = 4 << 30  # Prepared sets up to this size are verified whole at every start.
_SAMPLE_BLOCK = 1 << 20
_STALE_OTHER_HOST_SECONDS = 24 * 3600  # A temporary folder of another host untouched this long is abandoned.


class DiskFullError(ValueError):
  """Not enough free space for a preparation: a one-line error naming the folder and the space needed."""


def open_for_write(path: pathlib.Path):
  """Opens a file for writing (one place, so that tests can inject a full disk)."""
  return open(path, 'wb')


def _gb(size: float) -> str:
  return f'{size / 1e9:.2f} GB'


def ensure_space(folder: pathlib.Path, needed: int, what: str) -> None:
  """Raises DiskFullError before writing when `folder`'s file system has less than `needed` bytes free."""
  folder = pathlib.Path(folder)
  probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), pathlib.Path('/'))
  free = shutil.disk_usage(probe).free
  if free < needed + _SPACE_MARGIN:
    raise DiskFullError(
      f'not enough disk space in {folder} for {what}: about {_gb(needed)} needed, '
      f'{_gb(free)} free; free space there or set --config.data.cache_dir to a larger disk'
    )


def disk_full(folder: pathlib.Path, needed: int, what: str) -> DiskFullError:
  free = shutil.disk_usage(folder).free if pathlib.Path(folder).exists() else 0
  return DiskFullError(
    f'the disk holding {folder} filled up while writing {what}: about {_gb(needed)} more '
    f'needed, {_gb(free)} free; free space there or set --config.data.cache_dir to a larger disk'
  )


def _header(dtype: np.dtype, shape: tuple) -> bytes:
  text = repr({'descr': np.lib.format.dtype_to_descr(dtype), 'fortran_order': False, 'shape': tuple(shape)})
  header = b'\x93NUMPY\x01\x00'
  body = text.encode('latin1')
  pad = _HEADER_BYTES - len(header) - 2 - len(body) - 1
  if pad < 0:
    raise ValueError(f'shape {shape} does not fit a {_HEADER_BYTES}-byte .npy header')
  body += b' ' * pad + b'\n'
  return header + len(body).to_bytes(2, 'little') + body


class ShardWriter:
  """Appends [*, row_length] rows of one dtype to a .npy file; close() fixes the header and returns its checks."""

  def __init__(self, path: pathlib.Path, dtype, row_length: int, expected_rows: int = 0):
    self.path, self.dtype, self.row_length = pathlib.Path(path), np.dtype(dtype), row_length
    self.rows = 0
    self._digest = hashlib.blake2b(digest_size=16)
    if expected_rows:
      ensure_space(self.path.parent, expected_rows * row_length * self.dtype.itemsize, self.path.name)
    self._file = open_for_write(self.path)
    self._write(_header(self.dtype, (0, row_length)))

  def _write(self, data) -> None:
    try:
      self._file.write(data)
    except OSError as error:
      if error.errno in (errno.ENOSPC, errno.EDQUOT):
        self._file.close()
        raise disk_full(self.path.parent, memoryview(data).nbytes, self.path.name) from None
      raise

  def append(self, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.row_length)
    self._write(rows.data)
    self._digest.update(rows.data)
    self.rows += len(rows)

  def close(self) -> dict:
    """Writes the final header, syncs the file and returns its checks (size, whole and sampled digests)."""
    self._file.seek(0)
    self._write(_header(self.dtype, (self.rows, self.row_length)))
    self._file.flush()
    try:
      os.fsync(self._file.fileno())
    except OSError as error:
      if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise disk_full(self.path.parent, 0, self.path.name) from None
      raise
    self._file.close()
    return dict(size=os.path.getsize(self.path), digest=self._digest.hexdigest(), sampled=sampled_digest(self.path))


def write_array(path: pathlib.Path, rows: np.ndarray) -> dict:
  """Writes a whole (small) 2-D array as a shard; returns its checks."""
  writer = ShardWriter(path, rows.dtype, rows.shape[1], expected_rows=len(rows))
  writer.append(rows)
  return writer.close()


def file_checks(path: pathlib.Path) -> dict:
  """The checks of any file, as a shard's (size, whole and sampled digests), its digest taken from byte 0."""
  return dict(size=os.path.getsize(path), digest=body_digest(path, offset=0), sampled=sampled_digest(path), offset=0)


def body_digest(path: pathlib.Path, offset: int = _HEADER_BYTES) -> str:
  """BLAKE2b of a shard's rows (everything after the fixed header), or of a file from offset on."""
  digest = hashlib.blake2b(digest_size=16)
  with open(path, 'rb') as file:
    file.seek(offset)
    for block in iter(lambda: file.read(1 << 24), b''):
      digest.update(block)
  return digest.hexdigest()


def sampled_digest(path: pathlib.Path) -> str:
  """BLAKE2b of a file's size, header and 1 MiB blocks at 17 evenly spaced positions (cheap for huge files)."""
  digest = hashlib.blake2b(digest_size=16)
  size = os.path.getsize(path)
  digest.update(str(size).encode())
  with open(path, 'rb') as file:
    for k in range(17):
      file.seek(max(size - _SAMPLE_BLOCK, 0) * k // 16)
      digest.update(file.read(_SAMPLE_BLOCK))
  return digest.hexdigest()


def damaged_files(folder: pathlib.Path, checks: dict) -> list:
  """Names of recorded shards in folder that are missing or differ from their checks.

  Prepared sets up to FULL_VERIFY_BYTES are read whole; larger ones are compared by size and sampled digest.
  """
  whole = sum(check['size'] for check in checks.values()) <= FULL_VERIFY_BYTES
  damaged = []
  for name, check in sorted(checks.items()):
    path = folder / name
    if not path.is_file() or os.path.getsize(path) != check['size']:
      damaged.append(name)
    elif sampled_digest(path) != check['sampled'] or (
      whole and body_digest(path, check.get('offset', _HEADER_BYTES)) != check['digest']
    ):
      damaged.append(name)
  return damaged


def set_aside(folder: pathlib.Path, what: str, why: str, redo: str) -> None:
  """Renames a damaged folder to `<name>.damaged-<time>`, with one warning line saying what is done instead."""
  aside = folder.with_name(f'{folder.name}.damaged-{time.strftime("%Y%m%d-%H%M%S")}')
  folder.rename(aside)
  logging.warning('%s %s is damaged (%s): set aside as %s, %s again', what, folder, why, aside, redo)


@contextlib.contextmanager
def exclusive(lock_path: pathlib.Path, what: str):
  """Holds an exclusive lock on lock_path for the block, waiting (one log line saying for what) while another
  process holds it; released when the block ends or the process dies. Where the filesystem has no locks, holds
  nothing (temporary names and renames still keep every reader from a half-written folder)."""
  with open(lock_path, 'a', encoding='utf-8') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        logging.info('waiting for another process %s', what)
        fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def partial_name(folder: pathlib.Path) -> pathlib.Path:
  """The temporary folder this process builds `folder` in: unique per host and process."""
  return folder.parent / f'.{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}'


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_partials(parent: pathlib.Path) -> list:
  """Removes temporary preparation folders of dead processes (this host) or long-abandoned ones (others)."""
  removed = []
  if not parent.is_dir():
    return removed
  host = socket.gethostname()
  for path in parent.glob('.*.tmp-*'):
    owner, _, pid = path.name.rpartition('.tmp-')[2].rpartition('-')
    try:
      stale = (
        (not _alive(int(pid))) if owner == host else (time.time() - path.stat().st_mtime > _STALE_OTHER_HOST_SECONDS)
      )
    except (ValueError, OSError):
      continue
    if stale and int(pid) != os.getpid():
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
      logging.warning('removed %s, left by a preparation that did not finish', path)
  return removed
