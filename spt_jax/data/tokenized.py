"""A text source tokenized once: its token ids on disk and 24 bytes per document (content hash, UTF-8 size, tokens).

Text streams through the tokenizer chunk by chunk; each chunk's ids are appended to a token file in the output
dtype, so memory holds the per-document records plus a few chunks, whatever the size of the source. Splits and
subsamples are then chosen on those records (prepare_build.py), which is why one tokenizing pass serves every
preparation of a source: another seed, budget, split or sequence length changes which documents are packed,
not their tokens.

With `data.keep_tokenized` (the default) the pass is kept in `<cache_root>/tokenized/<key>/`, the key hashing
the source's spec and fingerprint (file sizes, mtimes, manifests; a Hub file's commit), the tokenizer's hash,
the EOS id and the dtype. The folder is built under a temporary name and renamed into place, with `checks.json`
(size and BLAKE2b of each file) written last; every use checks the files against it, and a damaged folder is set
aside (`<key>.damaged-<time>`) and the source tokenized again. What reading the text records about it (bad
UTF-8 bytes, file checksums, the sources within it) is kept too and handed back to the source. A lock per key
makes a second process wait for the first's pass instead of repeating it. Without `keep_tokenized` the tokens go
to a file in the preparation's temporary folder and are deleted after packing.
"""

import array
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil

import numpy as np

from spt_jax.data import shards, tokenize

FORMAT_VERSION = 1
_TOKENS, _RECORDS, _INFO, _CHECKS = 'tokens.bin', 'documents.npz', 'info.json', 'checks.json'


@dataclasses.dataclass
class Tokenized:
  """A text source after its tokenizing pass: per-document records and the token ids, memory-mapped."""

  path: pathlib.Path  # The token file.
  dtype: np.dtype  # Of its ids: uint16 when the vocabulary fits, else uint32.
  hashes: np.ndarray  # uint64 content hash of each document (the split is drawn on it).
  sizes: np.ndarray  # int64 UTF-8 bytes of each document.
  lengths: np.ndarray  # int64 tokens of each document, its EOS included.
  group_names: list  # The sources within the source (MusicPile's src ...), when the reader names them ...
  groups: np.ndarray | None  # ... and each document's index into them (None when it does not).
  temporary: bool  # True: the token file belongs to one preparation and is deleted after it.
  reused: bool = False  # True: read from the cache, tokenized by an earlier preparation.

  def __post_init__(self):
    self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
    size = os.path.getsize(self.path)
    self.tokens = np.memmap(self.path, dtype=self.dtype, mode='r') if size else np.zeros(0, self.dtype)

  def __len__(self) -> int:
    return len(self.hashes)


def _spill(source, tokenizer, eos: int, workers: int, dtype, path: pathlib.Path) -> tuple:
  """Tokenizes every document of source into path; returns the records (hashes, sizes, lengths, groups)."""
  hashes, sizes, lengths = array.array('Q'), array.array('q'), array.array('q')
  with shards.open_for_write(path) as out:
    for chunk, ids, chunk_lengths in tokenize.encode_chunks(
      tokenize.chunked(source.documents()), tokenizer, eos, workers
    ):
      for text in chunk:
        encoded = text.encode('utf-8', errors='replace')
        hashes.append(int.from_bytes(hashlib.blake2b(encoded, digest_size=8).digest(), 'little'))
        sizes.append(len(encoded))
      lengths.extend(chunk_lengths.tolist())
      data = ids.astype(dtype)
      shards.ensure_space(path.parent, data.nbytes * 2, f'the tokens of source {source.name!r}')
      try:
        out.write(data.data)
      except OSError as error:
        raise shards.disk_full(path.parent, data.nbytes, f'the tokens of source {source.name!r}') from error
  if not hashes:
    raise ValueError(f'source {source.name!r} ({source.spec}) has no documents; point it at non-empty text')
  groups = source.document_groups if len(source.document_groups) == len(hashes) else ()
  return (
    np.frombuffer(hashes, np.uint64),
    np.frombuffer(sizes, np.int64),
    np.frombuffer(lengths, np.int64),
    np.frombuffer(groups, np.uint32) if len(groups) else None,
  )


def key(source, tokenizer_digest: str, eos: int, dtype) -> str:
  """What fixes a source's tokens: its spec and current files, the tokenizer, the EOS id and the id dtype."""
  inputs = dict(
    version=FORMAT_VERSION,
    fingerprint=source.fingerprint(),
    tokenizer=tokenizer_digest,
    eos=eos,
    dtype=np.dtype(dtype).name,
  )
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def tokenize_source(
  source, tokenizer, tokenizer_digest: str, eos: int, workers: int, dtype, cache_root, scratch: pathlib.Path
) -> Tokenized:
  """The source tokenized: from `<cache_root>/tokenized/` when kept there before (else tokenized and kept), or,
  with cache_root None, tokenized into a temporary file in scratch."""
  if cache_root is None:
    path = scratch / f'spill_{source.name.replace(":", "_")}.bin'
    hashes, sizes, lengths, groups = _spill(source, tokenizer, eos, workers, dtype, path)
    return Tokenized(path, np.dtype(dtype), hashes, sizes, lengths, list(source.group_names), groups, temporary=True)
  folder = pathlib.Path(cache_root) / 'tokenized' / key(source, tokenizer_digest, eos, dtype)
  folder.parent.mkdir(parents=True, exist_ok=True)
  with shards.exclusive(folder.parent / f'.{folder.name}.lock', f'tokenizing {folder}'):
    kept = _load(folder, source, dtype)
    if kept is not None:
      logging.info('source %r: %d documents tokenized before, read from %s', source.name, len(kept), folder)
      return dataclasses.replace(kept, reused=True)
    shards.remove_stale_partials(folder.parent)
    partial = shards.partial_name(folder)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
      hashes, sizes, lengths, groups = _spill(source, tokenizer, eos, workers, dtype, partial / _TOKENS)
      no_groups = np.zeros(0, np.uint32)
      np.savez(
        partial / _RECORDS, hashes=hashes, sizes=sizes, lengths=lengths, groups=no_groups if groups is None else groups
      )
      info = dict(
        spec=source.spec,
        group_names=list(source.group_names),
        bad_bytes=source.bad_bytes,
        checksums=source.checksums,
      )
      (partial / _INFO).write_text(json.dumps(info, indent=1, sort_keys=True))
      checks = {name: shards.file_checks(partial / name) for name in (_TOKENS, _RECORDS, _INFO)}
      (partial / _CHECKS).write_text(json.dumps(checks))  # Last: the pass is whole once this is written.
      partial.rename(folder)
    except BaseException:
      shutil.rmtree(partial, ignore_errors=True)  # A failed pass leaves nothing behind.
      raise
  # The records in hand: what was just written and checked is not read back.
  return Tokenized(folder / _TOKENS, np.dtype(dtype), hashes, sizes, lengths, info['group_names'], groups, False)


def _load(folder: pathlib.Path, source, dtype) -> Tokenized | None:
  """The kept pass in folder, its records handed back to source; None when absent (or damaged: set aside)."""
  checks_path = folder / _CHECKS
  if not checks_path.is_file():
    if folder.exists():  # Only a rename makes the folder, and checks.json is in it: this is not ours whole.
      shards.set_aside(folder, 'tokenized source', f'{_CHECKS} is missing', 'tokenizing it')
    return None
  try:
    checks = json.loads(checks_path.read_text())
    damaged = shards.damaged_files(folder, checks)
    why = f'{damaged[0]} does not match its recorded checks' if damaged else None
    if not damaged:
      info = json.loads((folder / _INFO).read_text())
      with np.load(folder / _RECORDS) as records:
        hashes, sizes, lengths, groups = (records[k] for k in ('hashes', 'sizes', 'lengths', 'groups'))
      if _TOKENS not in checks or (folder / _TOKENS).stat().st_size != int(lengths.sum()) * np.dtype(dtype).itemsize:
        why = f'{_TOKENS} does not hold the tokens its records count'
  except (ValueError, KeyError, TypeError, OSError) as error:
    why = f'{_CHECKS} or its files do not load ({type(error).__name__})'
  if why:
    shards.set_aside(folder, 'tokenized source', why, 'tokenizing it')
    return None
  source.bad_bytes.update(info['bad_bytes'])
  source.checksums.update(info['checksums'])
  source.group_names[:] = info['group_names']
  groups = groups if len(groups) == len(hashes) else None
  return Tokenized(folder / _TOKENS, np.dtype(dtype), hashes, sizes, lengths, list(info['group_names']), groups, False)
