"""Source spec strings -> documents (text) or token streams.

A spec is `<kind>:<target>[?key=value&...]`:
  builtin:<name|group>[,<name>...]         built-in corpora fetched by `spt_jax.data.fetch`
  files:<glob|folder>[?separator=...]      plain text; one document per file, or split by `separator`
                                           (`\\n` and `\\t` escapes and %-encoding are understood)
  jsonl:<glob>[?field=text]                JSON lines; `field` may be dotted (`meta.body`)
  parquet:<glob>[?column=text]             a string column of Parquet files
  tfds:<name>[?split=train&field=text&data_dir=...]   any TFDS dataset through `tfds.data_source`
  hf:<name>[,<name>...][?split=train&field=text&name=...&where=F=V|V]   Hugging Face datasets, streamed
  hub:<paper dataset>[?revision=...&configs=...&where=F~V|V&...]   the paper's datasets from the Hub by pinned
                                           revision and file list (hub_source.py, facts in hub_datasets.py)
  tokens:<glob|URL glob|@list>?dtype=uint16|uint32[&eos=N]  flat pre-tokenized arrays (OLMo/Dolma style),
                                           EOS-separated; URLs (https://, gs://, ...) are fetched into the cache
A bare existing folder or glob without a kind reads as `files:`. A folder means every file under it.
Bytes that are not UTF-8 are replaced by U+FFFD, counted per file and reported as a warning.
"""

import array
import codecs
import dataclasses
import glob
import hashlib
import json
import logging
import os
import pathlib
import urllib.parse
from collections.abc import Iterator

import numpy as np

from spt_jax.data import hf_source, hub_source, remote
from spt_jax.storage import bucket

KINDS = ('builtin', 'files', 'jsonl', 'parquet', 'tfds', 'hf', 'hub', 'tokens')
_OPTIONS = {
  'builtin': (),
  'files': ('separator',),
  'jsonl': ('field',),
  'parquet': ('column',),
  'tfds': ('split', 'field', 'data_dir'),
  'hf': ('split', 'field', 'name', 'where'),
  'hub': ('revision', 'configs', 'skip_configs', 'split', 'field', 'where', 'check_records'),
  'tokens': ('dtype', 'eos'),
}
# Token files are too large to hash whole at every start; this many bytes from each end stand in.
_TOKEN_CHECKSUM_BYTES = 1 << 20


class _BadByteCounter:
  """A codecs error handler that replaces undecodable bytes by U+FFFD and counts them."""

  def __init__(self):
    self.count = 0

  def __call__(self, error: UnicodeDecodeError):
    self.count += error.end - error.start
    return '\ufffd', error.end


_counter = _BadByteCounter()
codecs.register_error('spt_jax_count', _counter)


def decode_utf8(data: bytes) -> tuple[str, int]:
  """Decodes UTF-8, replacing bad bytes; returns (text, number of bad bytes)."""
  try:
    return data.decode('utf-8'), 0
  except UnicodeDecodeError:
    before = _counter.count
    text = data.decode('utf-8', errors='spt_jax_count')
    return text, _counter.count - before


@dataclasses.dataclass
class Source:
  """A parsed source spec; reading it fills `bad_bytes` and `checksums` (per file)."""

  name: str
  spec: str
  kind: str
  target: str
  options: dict
  cache_dir: str = ''
  paths: list = dataclasses.field(default_factory=list)
  bad_bytes: dict = dataclasses.field(default_factory=dict)
  checksums: dict = dataclasses.field(default_factory=dict)
  expected_sha256: dict = dataclasses.field(default_factory=dict)  # Remote token files: sha256 from an @list.
  plan: list = dataclasses.field(default_factory=list)  # hub: the files it reads (hub_source.HubFile).
  # Sources within a source (MusicPile's src, ChemPile's configs): their names, and each document's index.
  group_names: list = dataclasses.field(default_factory=list)
  document_groups: array.array = dataclasses.field(default_factory=lambda: array.array('I'))

  @property
  def is_tokens(self) -> bool:
    return self.kind == 'tokens'

  def fingerprint(self) -> dict:
    """Cheap identity of the source's current contents: file sizes and mtimes, plus manifest hashes."""
    result = {'spec': self.spec}
    if self.kind == 'hub':
      result.update(hub_source.fingerprint(self))  # URLs name their commit: a moved branch shows as changed.
    for path in self._resolved_paths():
      stat = path.stat()
      result[str(path)] = [stat.st_size, stat.st_mtime_ns]
      if is_manifest(path) and stat.st_size < (64 << 20):
        result[str(path)].append(hashlib.sha256(path.read_bytes()).hexdigest())
    return result

  def content_checksums(self) -> dict:
    """Checksums of every file (whole for text, both ends for token arrays); reads the files."""
    result = {}
    for path in self._resolved_paths():
      result[str(path)] = _file_checksum(path, sampled=self.is_tokens)
    return result

  def documents(self) -> Iterator[str]:
    """Yields the text documents of a text source, in a fixed order."""
    if self.is_tokens:
      raise ValueError(f'source {self.name!r} ({self.spec}) holds token ids, not text; read it with token_documents()')
    if self.kind == 'builtin':
      yield from self._builtin_documents()
    elif self.kind == 'files':
      separator = self.options.get('separator')
      for path in self.paths:
        text = self._read_text(path)
        pieces = text.split(separator) if separator else [text]
        yield from (piece for piece in pieces if piece.strip())
    elif self.kind == 'jsonl':
      yield from self._jsonl_documents()
    elif self.kind == 'parquet':
      yield from self._parquet_documents()
    elif self.kind == 'tfds':
      yield from self._tfds_documents()
    elif self.kind == 'hf':
      yield from hf_source.documents(self)
    elif self.kind == 'hub':
      yield from hub_source.documents(self)

  def token_documents(self, eos_id: int) -> Iterator[np.ndarray]:
    """Yields documents of a token source as views ending with their EOS (a trailing partial one too)."""
    eos = int(self.options.get('eos', eos_id))
    for path in self.paths:
      tokens = self.token_array(path)
      ends = np.flatnonzero(tokens == eos) + 1
      start = 0
      for end in ends.tolist():
        yield tokens[start:end]
        start = end
      if start < len(tokens):
        yield tokens[start:]

  def token_array(self, path) -> np.ndarray:
    """Memory-maps one flat token file (raw, as OLMo writes them, or a 1-D .npy)."""
    dtype = np.dtype(self.options['dtype'])
    with open(path, 'rb') as file:
      if file.read(6) == b'\x93NUMPY':
        self.checksums[str(path)] = _file_checksum(pathlib.Path(path), sampled=True)
        array = np.load(path, mmap_mode='r')
        if array.ndim != 1 or array.dtype != dtype:
          raise ValueError(
            f'source {self.name!r}: {path} holds {array.dtype.name} {list(array.shape)}, not a '
            f'flat {dtype.name} array; fix ?dtype= in {self.spec!r}'
          )
        return array
    if os.path.getsize(path) % dtype.itemsize:
      raise ValueError(
        f'source {self.name!r}: {path} has {os.path.getsize(path)} bytes, not a multiple of '
        f'{dtype.itemsize} ({dtype.name}); check ?dtype= in {self.spec!r}'
      )
    self.checksums[str(path)] = _file_checksum(pathlib.Path(path), sampled=True)
    return np.memmap(path, dtype=dtype, mode='r')

  def _resolved_paths(self) -> list:
    """Local files whose change the fingerprint detects (remote ones are pinned by their fetch record)."""
    if self.kind == 'builtin':
      roots = _builtin_roots(self)
      return sorted(p for root in roots for p in pathlib.Path(root).rglob('*') if p.is_file())
    if self.kind == 'hf':
      return [pathlib.Path(p) for p in hf_source.local_files(self)]
    if self.kind == 'hub':
      return []
    return [pathlib.Path(p) for p in self.paths if not bucket.is_url(p)]

  def _read_text(self, path) -> str:
    try:
      data = pathlib.Path(path).read_bytes()
    except OSError as error:
      raise ValueError(
        f'source {self.name!r}: cannot read {path} ({error.strerror}); fix its permissions or remove it from the glob'
      ) from None
    self.checksums[str(path)] = hashlib.sha256(data).hexdigest()
    text, bad = decode_utf8(data)
    if bad:
      self.bad_bytes[str(path)] = self.bad_bytes.get(str(path), 0) + bad
      logging.warning('%s: replaced %d non-UTF-8 bytes with U+FFFD (source %r)', path, bad, self.name)
    return text

  def _builtin_documents(self) -> Iterator[str]:
    from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    for corpus in _builtin_names(self):
      yield from fetch.documents(corpus, cache_dir=self.cache_dir)

  def _jsonl_documents(self) -> Iterator[str]:
    field = self.options.get('field', 'text')
    for path in self.paths:
      for number, line in enumerate(self._read_text(path).splitlines(), 1):
        if not line.strip():
          continue
        try:
          value = json.loads(line)
          for key in field.split('.'):
            value = value[key]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
          raise ValueError(
            f'source {self.name!r}: {path}:{number} is not a JSON object with field '
            f'{field!r}; fix the line or set ?field= in {self.spec!r}'
          ) from None
        if isinstance(value, str) and value.strip():
          yield value

  def _parquet_documents(self) -> Iterator[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    column = self.options.get('column', 'text')
    for path in self.paths:
      try:
        parquet_file = pq.ParquetFile(path)
      except Exception as error:
        raise ValueError(
          f'source {self.name!r}: cannot read {path} as Parquet ({type(error).__name__}); remove it from the glob'
        ) from None
      if column not in parquet_file.schema_arrow.names:
        raise ValueError(
          f'source {self.name!r}: {path} has no column {column!r} (columns: '
          f'{parquet_file.schema_arrow.names}); set ?column= in {self.spec!r}'
        )
      for batch in parquet_file.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
          text = self._as_text(value, path)
          if text and text.strip():
            yield text

  def _tfds_documents(self) -> Iterator[str]:
    import tensorflow_datasets as tfds  # noqa: PLC0415  heavy; only the sources that need it import it

    field = self.options.get('field', 'text')
    kwargs = {'data_dir': self.options['data_dir']} if self.options.get('data_dir') else {}
    try:
      data = tfds.data_source(self.target, split=self.options.get('split', 'train'), **kwargs)
    except Exception as error:
      raise ValueError(
        f'source {self.name!r}: tfds.data_source({self.target!r}) failed: '
        f'{str(error).splitlines()[0] if str(error) else type(error).__name__}; prepare the '
        'dataset with tfds first or fix ?split=/data_dir='
      ) from None
    for index in range(len(data)):
      record = data[index]
      if field not in record:
        raise ValueError(
          f'source {self.name!r}: TFDS records of {self.target!r} have no field {field!r} '
          f'(fields: {sorted(record)}); set ?field= in {self.spec!r}'
        )
      text = self._as_text(record[field], f'{self.target}[{index}]')
      if text and text.strip():
        yield text

  def _as_text(self, value, where) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
      value = value.item()
    if isinstance(value, bytes):
      value, bad = decode_utf8(value)
      if bad:
        self.bad_bytes[str(where)] = self.bad_bytes.get(str(where), 0) + bad
        logging.warning('%s: replaced %d non-UTF-8 bytes with U+FFFD (source %r)', where, bad, self.name)
    return value


def is_manifest(path: pathlib.Path) -> bool:
  """Whether a source's file is a manifest (what was fetched, when and how fast), not data it trains on."""
  return path.name.startswith('manifest')


def _file_checksum(path: pathlib.Path, sampled: bool) -> str:
  digest = hashlib.sha256()
  size = path.stat().st_size
  with open(path, 'rb') as file:
    if sampled and size > 2 * _TOKEN_CHECKSUM_BYTES:
      digest.update(str(size).encode())
      digest.update(file.read(_TOKEN_CHECKSUM_BYTES))
      file.seek(size - _TOKEN_CHECKSUM_BYTES)
      digest.update(file.read())
    else:
      for block in iter(lambda: file.read(1 << 24), b''):
        digest.update(block)
  return digest.hexdigest()


def _builtin_names(source: Source) -> list:
  from spt_jax.data import corpora  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  names = []
  for item in source.target.split(','):
    for name in corpora.GROUPS.get(item, [item]):
      if name not in names:
        names.append(name)
  return names


def _builtin_roots(source: Source) -> list:
  from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return list(fetch.ensure(_builtin_names(source), cache_dir=source.cache_dir).values())


def _glob_files(name: str, spec: str, pattern: str) -> list:
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, '**', '*')
  paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not paths:
    raise ValueError(f'source {name!r}: no files match {pattern!r} (from {spec!r}); fix the path or glob')
  unreadable = [p for p in paths if not os.access(p, os.R_OK)]
  if unreadable:
    raise ValueError(
      f'source {name!r}: {len(unreadable)} file(s) are unreadable, e.g. {unreadable[0]}; fix '
      'their permissions or narrow the glob'
    )
  if all(os.path.getsize(p) == 0 for p in paths):
    raise ValueError(
      f'source {name!r}: all {len(paths)} file(s) matching {pattern!r} are empty; point it at files with text'
    )
  return paths


def parse(spec: str, name: str = 'source', cache_dir: str = '') -> Source:
  """Parses and checks a spec (paths exist, readable, non-empty) without reading documents."""
  spec = (spec or '').strip()
  if not spec:
    raise ValueError(f'source {name!r} is empty; set it to a spec such as files:/path/to/docs/*.txt')
  kind, colon, rest = spec.partition(':')
  if not colon or kind not in KINDS:
    if glob.glob(os.path.expanduser(spec.partition('?')[0]), recursive=True):
      kind, rest = 'files', spec
    else:
      raise ValueError(
        f'source {name!r}: unknown kind {kind!r} in {spec!r}; use one of '
        f'{", ".join(k + ":" for k in KINDS)} (or an existing path)'
      )
  target, _, query = rest.partition('?')
  target = target.strip()
  if not target:
    raise ValueError(f'source {name!r}: {spec!r} names no {kind} target; write {kind}:<path or name>')
  options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
  unknown = sorted(set(options) - set(_OPTIONS[kind]))
  if unknown:
    raise ValueError(
      f'source {name!r}: unknown option(s) {unknown} for {kind}: (allowed: {list(_OPTIONS[kind])}) in {spec!r}'
    )
  if 'separator' in options:
    options['separator'] = options['separator'].replace('\\n', '\n').replace('\\t', '\t')
    if not options['separator']:
      raise ValueError(f'source {name!r}: empty ?separator= in {spec!r}; remove it or give a separator')
  source = Source(name=name, spec=spec, kind=kind, target=target, options=options, cache_dir=cache_dir)
  if kind == 'tokens':
    if options.get('dtype') not in ('uint16', 'uint32'):
      raise ValueError(f'source {name!r}: tokens: needs ?dtype=uint16 or ?dtype=uint32 in {spec!r}')
    if 'eos' in options and not options['eos'].isdigit():
      raise ValueError(f'source {name!r}: ?eos= must be a token id in {spec!r}')
  if kind == 'hf':
    hf_source.check(source)
  if kind == 'hub':
    hub_source.check(source, cache_root(cache_dir))
  if kind == 'tokens' and target.startswith('@'):
    source.paths, source.expected_sha256 = remote.read_list(target[1:], f'source {name!r}')
    missing = [p for p in source.paths if not bucket.is_url(p) and not os.path.isfile(os.path.expanduser(p))]
    if missing:
      raise ValueError(f'source {name!r}: {len(missing)} file(s) of {target} do not exist, e.g. {missing[0]}')
  elif kind == 'tokens' and bucket.is_url(target):
    source.paths = remote.expand(target, f'source {name!r}')
  elif kind in ('files', 'jsonl', 'parquet', 'tokens'):
    source.paths = _glob_files(name, spec, target)
  return source


def content_hash(document) -> int:
  """A 64-bit hash of a document's content (text as UTF-8, token documents as their bytes)."""
  data = document.encode('utf-8', errors='replace') if isinstance(document, str) else document.tobytes()
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), 'little')


def split_unit(document_hash: int) -> float:
  """The document's position in [0, 1) for the train/test split: the same on every run and machine."""
  return document_hash / 2.0**64


def seeded_order_key(document_hash: int, seed: int) -> int:
  """A per-seed ranking key for subsampling, independent of the split position."""
  data = document_hash.to_bytes(8, 'little') + int(seed).to_bytes(8, 'little', signed=True)
  return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=b'subsample').digest(), 'little')


def cache_root(cache_dir: str = '') -> pathlib.Path:
  """Root of corpora and prepared data: cache_dir, else $SPT_JAX_CACHE, else ~/.cache/spt_jax."""
  try:
    from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    if hasattr(fetch, 'cache_root'):
      return pathlib.Path(fetch.cache_root(cache_dir))
  except ImportError:
    pass
  root = cache_dir or os.environ.get('SPT_JAX_CACHE') or os.path.join('~', '.cache', 'spt_jax')
  return pathlib.Path(os.path.expanduser(root))
