"""Tokenize, split by document hash, pack and write each source once, streaming; later runs reuse the result.

Layout: `<cache_root>/prepared/<key>/` holds `train_<source>.npy` and `eval_<set>.npy` ([N, seq_len+1],
uint16 when the vocabulary fits, else uint32; read memory-mapped), `test_documents_<source>.json` (content
hashes of every held-out document), `tokenizer.json` (the tokenizer the ids belong to), `metadata.json`
(with a BLAKE2b checksum of every shard) and `checksums.json` (the same checks of metadata.json and
tokenizer.json). All are checked at each start: a damaged file sets the folder aside and it is rebuilt. A
folder without checksums.json (prepared before it existed, or killed between its rename into place and that
write) gets one at its next start, once its shards match metadata.json and both files load.
A pre-tokenized (`tokens:`) training source is not copied: metadata lists the files and rows it trains on,
read in place (token_rows.py); remote token files are read by range, only the rows a process trains on, through a
bounded cache per process (remote.py), and each is checked against the size and end rows recorded here.
Preparation streams (prepare_build.py): memory is bounded by ~24 bytes per text document plus a few chunks,
whatever the size of a source, and free disk space is checked before writing.
The held-out split of a text source is drawn over all its documents before any subsampling (so it does not
depend on the budgets), and a text document held out in any source is kept out of every text training split;
with data.valid_tokens, the domain's next documents in that order are a validation split (`eval_domain_valid`);
a token source holds out the tail of the last file it uses (whole documents).
Many processes (jax.distributed): process 0 prepares while the others wait for its completion signal through
JAX's coordination service, then read the same folder; a process that cannot see that folder (a cache that is
not shared) prepares its own copy, which is identical because preparation is deterministic. Runs that share one
cache prepare each key once: a lock per key (`prepared/.<key>.lock`) makes the second wait, then reuse the folder,
which appears whole (built under a temporary name, then renamed).
Ahead of training: `python -m spt_jax.data.prepare --config=configs/proofpile.py:tiny`. The key hashes the
inputs (source specs, tokenizer, seq_len, seed, budgets, split), not the source contents: when a source's files
change under an existing prepared set (sizes, mtimes or manifests differ and the checksums confirm it),
`prepare` raises a one-line error naming the source and the folder to delete, so a resumed run never silently
trains on different data.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import sys
import time

import numpy as np
import tokenizers

from spt_jax.data import prepare_build as build_lib
from spt_jax.data import remote, shards, token_rows, tokenize
from spt_jax.data import sources as sources_lib
from spt_jax.data import tokenizer as tokenizer_lib
from spt_jax.storage import bucket, files, layout

FORMAT_VERSION = 3  # 2: held-out split before subsampling, across sources. 3: streamed, checksummed, in place.
MAX_EVAL_SEQUENCES = build_lib.MAX_EVAL_SEQUENCES
TRAIN_SOURCES = ('general', 'domain')
CHECKSUMMED_FILES = (layout.METADATA, layout.TOKENIZER)
tokenize_documents = tokenize.tokenize_documents  # The benchmark measures it.
_WAIT_MS = 48 * 3600 * 1000  # How long processes other than 0 wait for its preparation.
_rounds = collections.Counter()  # prepare() calls per key in this process: every process makes the same ones.


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


def source_digests(metadata: dict) -> dict[str, str]:
  """{source: a digest of the checksums of the files it was prepared from}: two runs whose digests agree trained on
  the same files (token arrays: checked at both ends), whichever host, cache folder or session prepared them (the
  corpora from Debian are not pinned, so a later fetch can bring a newer package; this tells the runs apart).
  Manifests (fetch times) are left out."""
  digests = {}
  for name, source in metadata.get('sources', {}).items():
    paths = [(pathlib.Path(path), checksum) for path, checksum in source.get('checksums', {}).items()]
    checksums = sorted((f.parent.name, f.name, checksum) for f, checksum in paths if not sources_lib.is_manifest(f))
    digests[name] = hashlib.sha256(json.dumps(checksums).encode()).hexdigest()[:16]
  return digests


def _budgets(config) -> dict:
  """Token budget per training source (data.<name>_max_tokens; 0: all of it), part of the cache key."""
  return {name: int(getattr(config.data, f'{name}_max_tokens')) for name in TRAIN_SOURCES}


def _processes() -> tuple:
  """(coordination client or None, process index, process count) of a jax.distributed job, else (None, 0, 1).

  The wait for process 0 uses the coordination service's key-value store, which JAX does not export: a device
  collective (multihost_utils) instead would time out while process 0 tokenizes for hours (30 minutes on CPU).
  """
  if 'jax' not in sys.modules:
    return None, 0, 1
  import jax  # noqa: PLC0415  jax on first use: importing this module stays light

  if jax.process_count() == 1:
    return None, 0, 1
  from jax._src import distributed  # noqa: PLC0415  jax on first use: importing this module stays light

  return distributed.global_state.client, jax.process_index(), jax.process_count()


def prepare(config) -> PreparedData:
  """Returns the packed train and eval sequences for config.data, preparing them on first use (config: validated
  at its entry point, spt_jax/train/validate.py)."""
  data = config.data
  extra = dict(config.extra_eval)  # Names that clash with the built-in sets are refused at the entry (validate).
  specs = {'domain': data.domain, 'general': data.general}  # The small domain first: its errors come early.
  specs.update({f'extra:{name}': spec for name, spec in sorted(extra.items())})
  parsed = {name: sources_lib.parse(spec, name, data.cache_dir) for name, spec in specs.items()}
  if data.valid_tokens and parsed['domain'].is_tokens:
    raise ValueError('data.valid_tokens needs a text domain source (a token source has no documents to hold out)')
  budgets = _budgets(config)
  key = _cache_key(config, _tokenizer_identity(config), specs, budgets)
  folder = sources_lib.cache_root(data.cache_dir) / 'prepared' / key
  client, index, count = _processes()
  _rounds[key] += 1
  signal = f'spt_jax/prepare/{key}/{_rounds[key]}'
  if index == 0:
    try:
      result = _ready_or_built(config, parsed, budgets, folder)
    except Exception as error:
      if client is not None:
        client.key_value_set(
          signal,
          f'error:{error}'
          if isinstance(error, ValueError)
          else f'error:process 0 failed to prepare {folder} ({type(error).__name__})',
        )
      raise
    if client is not None:
      client.key_value_set(signal, 'ok')
    return result
  if client is not None:
    logging.info('process %d waits for process 0 to prepare %s', index, folder)
    status = client.blocking_key_value_get(signal, _WAIT_MS)
    if status.startswith('error:'):
      raise ValueError(status[len('error:') :])
  else:
    while not (folder / layout.METADATA).is_file():
      time.sleep(2)
  result = _ready(folder, parsed, data.remote_cache_bytes, verify=False)
  if result is None:  # This host does not see process 0's cache: prepare the identical data here.
    logging.warning(
      'process %d of %d does not see %s (a cache that is not shared); preparing it here', index, count, folder
    )
    result = _ready_or_built(config, parsed, budgets, folder)
  return result


def _ready_or_built(config, parsed: dict, budgets: dict, folder: pathlib.Path) -> PreparedData:
  """The prepared folder, built first if needed, under a lock per key: runs sharing a cache prepare it once (the
  second waits, then reuses it), and none reads a folder another is setting aside or renaming into place."""
  folder.parent.mkdir(parents=True, exist_ok=True)
  with shards.exclusive(folder.parent / f'.{folder.name}.lock', f'preparing {folder}'):
    return _ready(folder, parsed, config.data.remote_cache_bytes) or _build_and_load(config, parsed, budgets, folder)


def _build_and_load(config, parsed: dict, budgets: dict, folder: pathlib.Path) -> PreparedData:
  tokenizer = tokenizer_lib.load_tokenizer(config.data)
  metadata = _build(config, parsed, budgets, tokenizer, tokenizer_lib.tokenizer_hash(tokenizer), folder)
  _record_checksums(folder)
  return _load(folder, metadata, tokenizer, config.data.remote_cache_bytes)


def _record_checksums(folder: pathlib.Path) -> None:
  files.write_json(
    str(folder / layout.PREPARED_CHECKSUMS), {name: shards.file_checks(folder / name) for name in CHECKSUMMED_FILES}
  )


def _set_aside(folder: pathlib.Path, why: str) -> None:
  shards.set_aside(folder, 'prepared data', why, 'preparing it')


def _damaged_records(folder: pathlib.Path) -> str | None:
  """Why metadata.json or tokenizer.json cannot be trusted (None when they match checksums.json or it is absent)."""
  path = folder / layout.PREPARED_CHECKSUMS
  if not path.is_file():
    return None
  try:
    checks = json.loads(path.read_text())
    damaged = shards.damaged_files(folder, {name: checks[name] for name in CHECKSUMMED_FILES})
  except (ValueError, KeyError, TypeError) as error:
    return f'{layout.PREPARED_CHECKSUMS} does not load ({type(error).__name__})'
  return f'{damaged[0]} does not match its recorded checksum' if damaged else None


def _ready(folder: pathlib.Path, parsed: dict, cache_bytes: int, verify: bool = True) -> PreparedData | None:
  """The prepared data in folder when it is complete, unchanged and undamaged; None when it must be built."""
  if not (folder / layout.METADATA).is_file():
    return None
  damaged = _damaged_records(folder) if verify else None
  if damaged:
    _set_aside(folder, damaged)
    return None
  try:
    metadata = json.loads((folder / layout.METADATA).read_text())
    # The tokenizer the sequences were made with travels with them (a BPE may since have been retrained).
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / layout.TOKENIZER))
  except Exception as error:  # tokenizers raises a bare Exception.
    if not verify:
      raise
    _set_aside(folder, f'metadata.json or tokenizer.json does not load ({type(error).__name__})')
    return None
  for name, source in parsed.items():
    _check_unchanged(source, metadata['sources'][name], folder)
  damaged_shards = shards.damaged_files(folder, metadata.get('shards', {})) if verify else []
  if damaged_shards:
    _set_aside(folder, f'{damaged_shards[0]} does not match its recorded checksum')
    return None
  if verify and not (folder / layout.PREPARED_CHECKSUMS).is_file():
    _record_checksums(folder)
  return _load(folder, metadata, tokenizer, cache_bytes)


def _tokenizer_identity(config) -> str:
  """What fixes the tokenizer, cheaply: its file's content, or the BPE recipe (its sources are in the key)."""
  name = config.data.tokenizer
  if name == 'bpe':
    return f'bpe:{config.data.tokenizer_vocab_size}:{tokenizer_lib.BPE_SAMPLE_BYTES}'
  if name == 'olmo':
    from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    path = pathlib.Path(fetch.tokenizer_file(config.data.cache_dir))
  else:
    path = pathlib.Path(os.path.expanduser(name))
  if not path.is_file():
    raise ValueError(
      f"tokenizer file {str(path)!r} does not exist; set --config.data.tokenizer to a tokenizers JSON, 'olmo' or 'bpe'"
    )
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_key(config, tokenizer_identity: str, specs: dict, budgets: dict) -> str:
  data = config.data
  inputs = dict(
    version=FORMAT_VERSION,
    specs=specs,
    tokenizer=tokenizer_identity,
    seq_len=data.seq_len,
    budgets=budgets,
    seed=config.seed,
    domain_max_tokens=data.domain_max_tokens,
    general_max_tokens=data.general_max_tokens,
    test_fraction=data.test_fraction,
    test_tokens=data.test_tokens,
    domain_train_sequences=data.domain_train_sequences,
  )
  if data.valid_tokens:  # Only when set: a preparation without a validation split keeps its key.
    inputs['valid_tokens'] = data.valid_tokens
  return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _check_unchanged(source, stored: dict, folder: pathlib.Path) -> None:
  """Raises if a source's files differ from those the prepared folder was made from."""
  current = source.fingerprint()
  if current == stored['fingerprint']:
    return
  changed = sorted(set(current) ^ set(stored['fingerprint']))
  suspects = [
    p for p in set(current) & set(stored['fingerprint']) if p != 'spec' and current[p] != stored['fingerprint'][p]
  ]
  for path in sorted(suspects):
    old = stored['checksums'].get(path)
    checksum = sources_lib._file_checksum(pathlib.Path(path), sampled=source.is_tokens)
    if old is None or checksum != old:
      changed.append(path)
  if changed:
    raise ValueError(
      f'source {source.name!r} ({source.spec}) changed since {folder} was prepared '
      f'({len(changed)} file(s) differ, e.g. {changed[0]}); delete that folder to re-prepare'
    )


def _build(config, parsed, budgets, tokenizer, digest, folder) -> dict:
  return build_lib.build(
    config,
    parsed,
    budgets,
    tokenizer,
    digest,
    folder,
    sources_lib.cache_root(config.data.cache_dir),
    FORMAT_VERSION,
    tokenizer_lib.eos_id(tokenizer),
  )


def _in_place(metadata: dict, name: str, cache_root: pathlib.Path, cache: remote.RowCache) -> token_rows.TokenRows:
  """The rows of an in-place token source: local files, files fetched whole into this host's cache (again if
  missing), remote files read by range (checked against their recorded pins, several at once: three requests each)."""
  entry, row = metadata['in_place'][name], metadata['seq_len'] + 1
  source = sources_lib.Source(name, '', 'tokens', '', {'dtype': entry['dtype']})

  def open_file(file: dict):
    if 'pin' in file:
      return token_rows.open_file(source, file['url'], row, cache_root, cache, file['pin'])[1]
    path = pathlib.Path(file['path'])
    if not path.is_file() and bucket.is_url(file.get('url', '')):
      path = remote.fetch(file['url'], cache_root, where=f'source {name!r}')
    if not path.is_file():
      raise ValueError(f'source {name!r}: token file {path} is gone; restore it or delete the prepared folder')
    return source.token_array(path)

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    arrays = list(pool.map(open_file, entry['files']))
  return token_rows.TokenRows(arrays, [file['rows'] for file in entry['files']], row)


def _load(folder: pathlib.Path, metadata: dict, tokenizer, cache_bytes: int) -> PreparedData:
  def read(name):
    return np.load(folder / name, mmap_mode='r')

  cache_root = folder.parent.parent
  cache = remote.row_cache(cache_root, cache_bytes) if metadata.get('in_place') else None
  return PreparedData(
    train={
      name: _in_place(metadata, name, cache_root, cache)
      if name in metadata.get('in_place', {})
      else read(layout.train_shard(name))
      for name in TRAIN_SOURCES
    },
    eval_sets={name: read(layout.eval_shard(name)) for name in metadata['eval_sets']},
    bytes_per_token=dict(metadata['bytes_per_token']),
    vocab_size=metadata['vocab_size'],
    tokenizer=tokenizer,
    metadata=metadata,
    path=folder,
  )


def main(argv) -> None:
  """Prepares a config's data ahead of training: python -m spt_jax.data.prepare --config=configs/x.py:preset."""
  del argv
  data = prepare(_CONFIG.value)
  for name, rows in {**{f'train_{k}': v for k, v in data.train.items()}, **data.eval_sets}.items():
    print(f'{name:24s} {rows.shape[0]:>10,d} sequences of {rows.shape[1]} tokens')
  meta = data.metadata
  speed = (
    f'{meta.get("megabytes_per_second_per_worker", 0):.2f} MB/s per worker when prepared'
    if meta.get('text_bytes_tokenized', meta.get('text_bytes'))
    else 'no text tokenized: every source read from the cache or in place'
  )
  print(f'{data.path}  ({meta.get("seconds", 0):.1f} s, {speed})')


if __name__ == '__main__':
  from absl import flags
  from ml_collections import config_flags

  from spt_jax import cli

  _CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file (configs/<domain>.py:<preset>).')
  flags.mark_flag_as_required('config')
  cli.run(main)
