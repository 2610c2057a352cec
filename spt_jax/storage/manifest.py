"""Manifests of folders: every file's path, size and SHA-256, written after the data, checked before use.

A folder's `manifest.json` lists every other file under it. `check` compares the folder with it and names the
first difference as a short reason (`missing-file`, `extra-file`, `size`, `hash-mismatch`,
`unreadable-manifest`) and the file concerned. A light check (`full=False`) compares the file list and sizes and
hashes only the small files (metadata, metrics); a full check hashes every byte. Hashing reads 8 MiB blocks, one
thread per file up to 8 at once (hashlib releases the GIL on large buffers). SHA-256 rather than BLAKE2b: CPUs
with SHA instructions (x86 SHA-NI, ARMv8) hash it about 3 times as fast (494 against 172 MB/s here).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os

from spt_jax.storage import files

MANIFEST_FILE = 'manifest.json'
SMALL_FILE_BYTES = 1 << 20  # Files up to this size are hashed by the light check too.
_BLOCK_BYTES = 8 << 20
_TEMPORARY_PREFIX = f'.{MANIFEST_FILE}.tmp-'  # files.write_text's temporary names: a write cut short.


@dataclasses.dataclass(frozen=True)
class Problem:
  """Why a folder does not match its manifest: a short reason (used in folder names) and the file concerned."""

  reason: str
  detail: str

  def __str__(self) -> str:
    return f'{self.reason}: {self.detail}'


def file_hash(path: str) -> str:
  """SHA-256 of a file, read in large blocks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(_BLOCK_BYTES), b''):
      digest.update(block)
  return digest.hexdigest()


def _hashes(paths: list[str]) -> list[str]:
  if len(paths) <= 1:
    return [file_hash(path) for path in paths]
  with concurrent.futures.ThreadPoolExecutor(min(8, len(paths), os.cpu_count() or 1)) as pool:
    return list(pool.map(file_hash, paths))


def _listing(folder: str) -> dict[str, int]:
  """{relative path: size} of every file under folder but the manifest (and its cut-short temporaries)."""
  sizes = {}
  for root, _, names in os.walk(folder):
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), folder)
      if relative == MANIFEST_FILE or (root == folder and name.startswith(_TEMPORARY_PREFIX)):
        continue
      sizes[relative] = os.path.getsize(os.path.join(root, name))
  return sizes


def has_manifest(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, MANIFEST_FILE))


def write(folder: str) -> dict:
  """Records every file under folder (size, SHA-256) in folder/manifest.json, atomically; returns the entries."""
  for name in os.listdir(folder):
    if name.startswith(_TEMPORARY_PREFIX):  # Left by a write that was killed: never part of the data.
      os.unlink(os.path.join(folder, name))
  sizes = _listing(folder)
  names = sorted(sizes)
  entries = {
    name: {'size': sizes[name], 'sha256': digest}
    for name, digest in zip(names, _hashes([os.path.join(folder, n) for n in names]), strict=True)
  }
  files.write_json(os.path.join(folder, MANIFEST_FILE), {'version': 1, 'files': entries})
  return entries


def check(folder: str, full: bool = True) -> Problem | None:
  """The first way folder differs from its manifest (None when it matches); full=False hashes small files only."""
  try:
    with open(os.path.join(folder, MANIFEST_FILE), encoding='utf-8') as f:
      entries = json.load(f)['files']
    recorded = {name: (int(entry['size']), str(entry['sha256'])) for name, entry in entries.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
    return Problem('unreadable-manifest', f'{MANIFEST_FILE}: {type(error).__name__}')
  sizes = _listing(folder)
  missing = sorted(set(recorded) - set(sizes))
  if missing:
    return Problem('missing-file', f'{missing[0]} is gone')
  extra = sorted(set(sizes) - set(recorded))
  if extra:
    return Problem('extra-file', f'{extra[0]} is not in the manifest')
  for name in sorted(recorded):
    if sizes[name] != recorded[name][0]:
      return Problem('size', f'{name} has {sizes[name]} bytes, its manifest {recorded[name][0]}')
  names = sorted(name for name in recorded if full or recorded[name][0] <= SMALL_FILE_BYTES)
  for name, digest in zip(names, _hashes([os.path.join(folder, n) for n in names]), strict=True):
    if digest != recorded[name][1]:
      return Problem('hash-mismatch', f'{name} differs from its manifest')
  return None
