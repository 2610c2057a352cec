"""Building a prepared folder in bounded memory: each text source tokenized once (tokenized.py), then packed.

The split and the subsample are chosen on a tokenized source's per-document records (content hash, UTF-8 size,
tokens), exactly as when every document was held in memory, and packing reads the chosen documents back from
its memory-mapped token file into rows appended to the shard. Pre-tokenized sources are used in place
(token_rows.py). Peak memory is the per-document records plus a few chunks, whatever the size of the source.
"""

import json
import logging
import os
import pathlib
import shutil
import time

import numpy as np

from spt_jax.data import remote, shards, token_rows, tokenized
from spt_jax.data import sources as sources_lib
from spt_jax.storage import layout

MAX_EVAL_SEQUENCES = 4096  # Cap of each held-out eval set; more adds eval time, not precision that matters.
_PACK_TOKENS = 1 << 22  # Tokens gathered per write while packing.


def _through(lengths: np.ndarray, budget: int) -> int:
  """How many documents, in order, reach `budget` tokens: up to and including the one crossing it."""
  if not budget:
    return len(lengths)
  return min(int(np.searchsorted(np.cumsum(lengths), budget)) + 1, len(lengths))


def held_out(spilled: tokenized.Tokenized, test_fraction: float, test_tokens: int, valid_tokens: int = 0) -> tuple:
  """(test, valid): indices of the held-out documents in split order. Test: the lowest split positions, by fraction
  or token budget; valid: the next ones through valid_tokens (0: none), beside the test split. Both are drawn on
  content hashes, so fixed for every seed, and each ends through the copies of its last document (same hash)."""
  units = spilled.hashes.astype(np.float64) / 2.0**64
  by_unit = np.argsort(units, kind='stable')
  if test_tokens > 0:
    threshold = units[by_unit[_through(spilled.lengths[by_unit], test_tokens) - 1]]
    test = by_unit[units[by_unit] <= threshold]
  else:
    test = by_unit[units[by_unit] < test_fraction]
  if valid_tokens <= 0:
    return test, np.zeros(0, np.int64)
  rest = by_unit[len(test) :]  # by_unit holds the test documents first.
  threshold = units[rest[_through(spilled.lengths[rest], valid_tokens) - 1]]
  return test, rest[units[rest] <= threshold]


def training_order(spilled: tokenized.Tokenized, excluded: np.ndarray, seed: int, max_tokens: int) -> tuple:
  """(candidates, chosen): documents not held out anywhere in a seeded order, and those within max_tokens."""
  candidates = np.flatnonzero(~np.isin(spilled.hashes, excluded))
  keys = np.fromiter(
    (sources_lib.seeded_order_key(h, seed) for h in spilled.hashes[candidates].tolist()),
    dtype=np.uint64,
    count=len(candidates),
  )
  candidates = candidates[np.argsort(keys, kind='stable')]
  return candidates, candidates[: _through(spilled.lengths[candidates], max_tokens)]


def _stream(spilled: tokenized.Tokenized, documents: np.ndarray):
  """The tokens of documents, in order, in pieces of about _PACK_TOKENS."""
  pieces, size = [], 0
  for start, length in zip(spilled.starts[documents].tolist(), spilled.lengths[documents].tolist(), strict=True):
    pieces.append(spilled.tokens[start : start + length])
    size += length
    if size >= _PACK_TOKENS:
      yield np.concatenate(pieces)
      pieces, size = [], 0
  if pieces:
    yield np.concatenate(pieces)


def pack_to(writer: shards.ShardWriter, pieces, row: int, max_rows: int = 0) -> None:
  """Cuts a token stream into rows without overlap, appending them; drops the remainder."""
  carry = np.zeros(0, writer.dtype)
  for piece in pieces:
    stream = np.concatenate([carry, piece]) if len(carry) else piece
    count = len(stream) // row
    if max_rows:
      count = min(count, max_rows - writer.rows)
    writer.append(stream[: count * row])
    carry = stream[count * row :]
    if max_rows and writer.rows >= max_rows:
      return


def pack_small(pieces, row: int, dtype, max_rows: int) -> np.ndarray:
  stream = np.concatenate([np.asarray(p, dtype) for p in pieces]) if pieces else np.zeros(0, dtype)
  count = min(len(stream) // row, max_rows)
  return stream[: count * row].reshape(count, row)


def _text_bytes_per_token(spilled: tokenized.Tokenized, documents: np.ndarray) -> float:
  tokens = int(spilled.lengths[documents].sum())
  return float(spilled.sizes[documents].sum()) / tokens if tokens else float('nan')


def bytes_per_token(tokenizer, sizes, token_arrays) -> float:
  """UTF-8 bytes per token of token arrays, by decoding up to a million of their tokens."""
  del sizes
  if not sum(len(a) for a in token_arrays):
    return float('nan')
  sample, used = [], 0
  for piece in token_arrays:
    piece = np.asarray(piece[: max(1_000_000 - used, 0)])
    sample.append(piece.tolist())
    used += len(piece)
    if used >= 1_000_000:
      break
  return sum(len(t.encode('utf-8')) for t in tokenizer.decode_batch(sample)) / max(used, 1)


def text_source_estimate(source) -> int:
  """Bytes of a text source's local files (0 when unknown: the Hub, built-ins)."""
  try:
    return sum(os.path.getsize(p) for p in source.paths if os.path.isfile(p))
  except OSError:
    return 0


def _train_outputs(config, name, source, spilled, held, valid, excluded, budget, tokenizer, partial, dtype, metadata):
  """Writes train_<name>, eval_<name>_test (and eval_domain_train, eval_domain_valid) of a text source; returns its
  info. valid: the documents of the validation split (empty: none)."""
  row, data = config.data.seq_len + 1, config.data
  eval_cap = MAX_EVAL_SEQUENCES * row
  test_docs = held[: _through(spilled.lengths[held], eval_cap)]
  candidates, train_docs = training_order(spilled, excluded, config.seed, budget)
  train_rows = int(spilled.lengths[train_docs].sum()) // row
  test_rows = int(spilled.lengths[test_docs].sum()) // row
  for split, rows in (('training', train_rows), ('held-out', test_rows)):
    if not rows:
      raise ValueError(
        f'the {name} {split} split has fewer than seq_len + 1 = {row} tokens; '
        'add documents, lower --config.data.seq_len or adjust test_fraction/test_tokens'
      )
  writer = shards.ShardWriter(partial / layout.train_shard(name), dtype, row, expected_rows=train_rows)
  pack_to(writer, _stream(spilled, train_docs), row)
  metadata['shards'][layout.train_shard(name)] = writer.close()
  test = pack_small(list(_stream(spilled, test_docs)), row, dtype, MAX_EVAL_SEQUENCES)
  _write_eval(partial, f'{name}_test', test, metadata, _text_bytes_per_token(spilled, test_docs))
  if len(valid):
    valid_docs = valid[: _through(spilled.lengths[valid], eval_cap)]
    rows = pack_small(list(_stream(spilled, valid_docs)), row, dtype, MAX_EVAL_SEQUENCES)
    if not len(rows):
      raise ValueError(
        f'the {name} validation split has fewer than seq_len + 1 = {row} tokens; raise --config.data.valid_tokens'
      )
    _write_eval(partial, f'{name}_valid', rows, metadata, _text_bytes_per_token(spilled, valid_docs))
  if name == 'domain':
    train = np.load(partial / layout.train_shard(name), mmap_mode='r')
    count = min(data.domain_train_sequences, len(train))
    rows = np.sort(np.random.default_rng([config.seed, 7]).choice(len(train), count, replace=False))
    _write_eval(partial, 'domain_train', np.asarray(train[rows]), metadata, _text_bytes_per_token(spilled, train_docs))
    del train
  (partial / layout.test_documents(name)).write_text(
    json.dumps(sorted(f'{h:016x}' for h in spilled.hashes[np.concatenate([held, valid])].tolist()))
  )
  by_source = _by_source(name, spilled, held, train_docs)
  return dict(
    by_source=by_source,
    documents_kept=len(train_docs) + len(held) + len(valid),
    documents_train=len(train_docs),
    documents_test=len(held),
    documents_valid=len(valid),
    tokens_valid=int(spilled.lengths[valid].sum()),
    documents_dropped_as_held_out_elsewhere=len(spilled) - len(held) - len(valid) - len(candidates),
    tokens_train=int(spilled.lengths[train_docs].sum()),
    tokens_test=int(spilled.lengths[test_docs].sum()),
    sequences_train=train_rows,
    sequences_test=len(test),
  )


def _by_source(name, spilled: tokenized.Tokenized, held: np.ndarray, train_docs: np.ndarray) -> dict:
  """Documents and tokens per source within a text source (read, held out, trained on), also logged."""
  if spilled.groups is None:
    return {}
  count = len(spilled.group_names)

  def tally(documents):
    return (
      np.bincount(spilled.groups[documents], minlength=count),
      np.bincount(spilled.groups[documents], spilled.lengths[documents], minlength=count),
    )

  (read, read_tokens), (test, test_tokens), (train, train_tokens) = (
    tally(np.arange(len(spilled))),
    tally(held),
    tally(train_docs),
  )
  result = {}
  for index, group in enumerate(spilled.group_names):
    result[group] = dict(
      documents=int(read[index]),
      tokens=int(read_tokens[index]),
      documents_test=int(test[index]),
      tokens_test=int(test_tokens[index]),
      documents_train=int(train[index]),
      tokens_train=int(train_tokens[index]),
    )
    logging.info(
      '%s source %s: %d documents (%d tokens) read; %d (%d tokens) held out; %d (%d tokens) trained on',
      name,
      group,
      *[
        result[group][k]
        for k in ('documents', 'tokens', 'documents_test', 'tokens_test', 'documents_train', 'tokens_train')
      ],
    )
  return result


def _token_outputs(config, name, source, budget, tokenizer, partial, dtype, metadata, cache_root):
  """Plans an in-place token source (train rows over its files) and writes its eval sets; returns its info."""
  data, row = config.data, config.data.seq_len + 1
  extra = name.startswith('extra:')
  plan = token_rows.plan(
    source,
    data.seq_len,
    metadata['eos'],
    budget,
    0.0 if extra else data.test_fraction,
    0 if extra else data.test_tokens,
    cache_root,
    remote.row_cache(cache_root, data.remote_cache_bytes),
  )
  arrays = plan.arrays
  eval_cap = MAX_EVAL_SEQUENCES * row
  test_tokens = arrays[0][:eval_cap] if extra else arrays[-1][plan.test_start : plan.test_end][:eval_cap]
  test = pack_small([test_tokens], row, dtype, MAX_EVAL_SEQUENCES)
  rows = token_rows.TokenRows(arrays, plan.rows, row)
  if not extra:
    for split, count in (('training', len(rows)), ('held-out', len(test))):
      if not count:
        raise ValueError(
          f'the {name} {split} split has fewer than seq_len + 1 = {row} tokens; '
          'add token files, lower --config.data.seq_len or adjust test_fraction/test_tokens'
        )
    metadata['in_place'][name] = dict(
      files=[
        dict(path=p, rows=r, url=u, **(dict(pin=a.pin) if isinstance(a, remote.RemoteTokens) else {}))
        for p, r, u, a in zip(plan.paths, plan.rows, source.paths, arrays, strict=False)
      ],
      dtype=source.options['dtype'],
    )
  _write_eval(
    partial, name[6:] if extra else f'{name}_test', test, metadata, bytes_per_token(tokenizer, None, [test_tokens])
  )
  if name == 'domain':
    count = min(data.domain_train_sequences, len(rows))
    picked = np.sort(np.random.default_rng([config.seed, 7]).choice(len(rows), count, replace=False))
    _write_eval(
      partial,
      'domain_train',
      rows[picked].astype(dtype),
      metadata,
      bytes_per_token(tokenizer, None, [rows[picked].ravel()]),
    )
  return dict(
    documents=None,
    files_used=len(plan.paths),
    files_listed=len(source.paths),
    tokens_in_files_used=plan.tokens_used,
    tokens_train=len(rows) * row,
    tokens_test=len(test_tokens),
    sequences_train=len(rows),
    sequences_test=len(test),
  )


def _write_eval(partial, name, rows, metadata, bytes_per_token_value) -> None:
  metadata['shards'][layout.eval_shard(name)] = shards.write_array(partial / layout.eval_shard(name), rows)
  metadata['eval_sets'][name] = len(rows)
  metadata['bytes_per_token'][name] = bytes_per_token_value


def build(
  config,
  parsed: dict,
  budgets: dict,
  tokenizer,
  digest: str,
  folder: pathlib.Path,
  cache_root: pathlib.Path,
  format_version: int,
  tokenizer_eos: int,
) -> dict:
  """Prepares every source into a temporary folder and renames it into place; returns the metadata."""
  data, start = config.data, time.time()
  vocab_size = tokenizer.get_vocab_size()
  dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
  workers = data.num_workers or os.cpu_count() or 1
  folder.parent.mkdir(parents=True, exist_ok=True)
  shards.remove_stale_partials(folder.parent)
  text_bytes_on_disk = sum(text_source_estimate(s) for s in parsed.values() if not s.is_tokens)
  # Tokens spilled and packed: at least ~2 bytes of text per token, so about one dtype item per text byte.
  shards.ensure_space(folder.parent, text_bytes_on_disk * np.dtype(dtype).itemsize, f'preparing {folder.name}')
  partial = shards.partial_name(folder)
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  metadata = dict(
    version=format_version,
    tokenizer=digest,
    vocab_size=vocab_size,
    eos=tokenizer_eos,
    seq_len=data.seq_len,
    dtype=np.dtype(dtype).name,
    seed=config.seed,
    sources={},
    eval_sets={},
    bytes_per_token={},
    shards={},
    in_place={},
    budgets=budgets,
  )
  try:
    spilled, held, valid = {}, {}, {}
    for name, source in parsed.items():  # First every held-out split, so none reaches training elsewhere.
      if not source.is_tokens:
        spilled[name] = tokenized.tokenize_source(
          source, tokenizer, digest, tokenizer_eos, workers, dtype, cache_root if data.keep_tokenized else None, partial
        )
        held[name], valid[name] = (
          (np.arange(len(spilled[name])), np.zeros(0, np.int64))
          if name.startswith('extra:')
          else held_out(
            spilled[name], data.test_fraction, data.test_tokens, data.valid_tokens if name == 'domain' else 0
          )
        )
    excluded = np.unique(
      np.concatenate(
        [spilled[n].hashes[np.concatenate([held[n], valid[n]])] for n in spilled] or [np.zeros(0, np.uint64)]
      )
    )
    text_bytes = tokenized_bytes = 0
    for name, source in parsed.items():
      info = dict(spec=source.spec, bad_bytes=source.bad_bytes)
      if source.is_tokens:
        info.update(
          _token_outputs(config, name, source, budgets.get(name, 0), tokenizer, partial, dtype, metadata, cache_root)
        )
      elif name.startswith('extra:'):
        sp = spilled[name]
        docs = held[name][: _through(sp.lengths[held[name]], MAX_EVAL_SEQUENCES * (data.seq_len + 1))]
        _write_eval(
          partial,
          name[6:],
          pack_small(list(_stream(sp, docs)), data.seq_len + 1, dtype, MAX_EVAL_SEQUENCES),
          metadata,
          _text_bytes_per_token(sp, docs),
        )
        info.update(documents=len(sp), tokens=int(sp.lengths[docs].sum()))
      else:
        info.update(documents=len(spilled[name]))
        info.update(
          _train_outputs(
            config,
            name,
            source,
            spilled[name],
            held[name],
            valid[name],
            excluded,
            budgets.get(name, 0),
            tokenizer,
            partial,
            dtype,
            metadata,
          )
        )
      if name in spilled:
        done = spilled.pop(name)
        info.update(tokenized='reused' if done.reused else 'now')
        text_bytes += int(done.sizes.sum())
        tokenized_bytes += 0 if done.reused else int(done.sizes.sum())
        if done.temporary:
          os.unlink(done.path)
      info.update(fingerprint=source.fingerprint(), checksums=source.checksums or source.content_checksums())
      metadata['sources'][name] = info
    seconds = time.time() - start
    metadata.update(
      seconds=round(seconds, 2),
      text_bytes=text_bytes,
      text_bytes_tokenized=tokenized_bytes,  # Text tokenized by this preparation (not read from the cache).
      workers=workers,
      megabytes_per_second_per_worker=round(tokenized_bytes / 1e6 / seconds / workers, 3),
    )
    tokenizer.save(str(partial / layout.TOKENIZER))
    (partial / layout.METADATA).write_text(json.dumps(metadata, indent=1, sort_keys=True))
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)  # A failed preparation leaves nothing behind.
    raise
  try:
    partial.rename(folder)
  except OSError:  # Another process finished the same folder first: theirs is identical.
    shutil.rmtree(partial, ignore_errors=True)
    return json.loads((folder / layout.METADATA).read_text())
  logging.info(
    'prepared %.1f MB of text (%.1f MB tokenized now) in %.1f s into %s',
    text_bytes / 1e6,
    tokenized_bytes / 1e6,
    seconds,
    folder,
  )
  return metadata
