"""Token-exact mixtures of packed sequences: an index map from the global example number to (source, row).

Example i of stage k (local index j = i - first example of k) is drawn by a hierarchical exact interleave of
the stage's sources in order ('domain' first, then by name): the first source with weight w takes example j
iff floor((j+1)w) > floor(jw), so it holds exactly floor(nw) of the first n examples; the others share the
rest by the same rule on their renormalised weights. Per-source counters carry across stages in closed form,
and the k-th example of a source reads row permutation(seed, source, k // rows)[k % rows]: a fresh shuffle
every epoch. The batch of step s is therefore a pure function of (sources, stages, batch_size, seed, s), and
any batch or the accounting costs O(#stages + batch).
"""

import fractions
import hashlib
import math
import sys
from collections.abc import Mapping, Sequence

import grain
import numpy as np

_WEIGHT_TOLERANCE = 1e-6
_DENOMINATOR = 1 << 20  # Weights become exact fractions with at most this denominator.
_FEISTEL_ROUNDS = 4


def _validate_weights(weights: Mapping, where: str) -> None:
  for name, weight in weights.items():
    if not (math.isfinite(weight) and weight >= 0):
      raise ValueError(f'{where}: weight of {name!r} is {weight}; weights must be finite and >= 0')
  total = sum(weights.values())
  if abs(total - 1.0) > _WEIGHT_TOLERANCE:
    raise ValueError(f'{where}: weights {dict(weights)} sum to {total:.9g}, not 1; make them sum to 1')


def validate_stages(stages: Sequence) -> list:
  """Checks (until_tokens, weights) stages; returns them as [(int, dict)]."""
  if not stages:
    raise ValueError('the mixture has no stages; give at least one (until_tokens, {source: weight})')
  result, previous = [], 0
  for k, stage in enumerate(stages):
    if len(stage) != 2 or not isinstance(stage[1], Mapping):
      raise ValueError(f'mixture stage {k} is {stage!r}; write it as (until_tokens, {{source: weight}})')
    until, weights = int(stage[0]), {str(n): float(w) for n, w in stage[1].items()}
    _validate_weights(weights, f'mixture stage {k}')
    last = k == len(stages) - 1
    if not (last and until == 0) and until <= previous:
      raise ValueError(
        f'mixture stage bounds must increase: stage {k} ends at {until} tokens after {previous}; '
        'fix mixture.stages (only the last may be 0, meaning "to the end")'
      )
    previous = until
    result.append((until, weights))
  return result


def stages_from_config(config, stage: str) -> list:
  """Stages for 'pretrain' (mixture.stages, or δ throughout) or 'finetune' (domain, plus replay r of general)."""
  if stage == 'pretrain':
    if config.mixture.stages:
      return validate_stages([(until, dict(weights)) for until, weights in config.mixture.stages])
    delta = config.mixture.domain_fraction
    if not 0 <= delta < 1:
      raise ValueError(
        f'mixture.domain_fraction (δ) is {delta}, outside [0, 1); set --config.mixture.domain_fraction to e.g. 0.02'
      )
    return validate_stages([(0, {'domain': delta, 'general': 1.0 - delta})])
  if stage == 'finetune':
    replay = config.finetune.replay_fraction
    if not 0 <= replay < 1:
      raise ValueError(
        f'finetune.replay_fraction is {replay}, outside [0, 1); set --config.finetune.replay_fraction to e.g. 0.1'
      )
    return validate_stages([(0, {'domain': 1.0 - replay, 'general': replay})])
  raise ValueError(f"stage {stage!r} has no mixture; use 'pretrain' or 'finetune'")


def stage_deltas(stages: Sequence, tokens: float | None = None) -> list:
  """[{'from_tokens', 'until_tokens', 'domain_fraction'}] of the stages a run reached within `tokens`.

  until_tokens is None for a last stage that runs to the end. tokens=None: every stage.
  """
  result, start = [], 0
  for until, weights in validate_stages(stages):
    if tokens is not None and start >= tokens and result:
      break
    result.append(
      {'from_tokens': start, 'until_tokens': until or None, 'domain_fraction': float(weights.get('domain', 0.0))}
    )
    start = until
  return result


def summary_deltas(config, tokens: float | None = None) -> dict:
  """The δ a run is labelled by, from the pretraining stages it reached: {'domain_fraction', 'stage_deltas'}.

  domain_fraction is the largest stage δ: SPT its δ, SCPT the δ of its late stage (not the base
  mixture.domain_fraction, which a staged mixture ignores), NPT 0. A finetune is labelled by the pretraining
  mixture of its config (all stages); its own data mixture is in stage_deltas.
  """
  stage = config.get('stage', 'pretrain')
  stage = stage if stage in ('pretrain', 'finetune') else 'pretrain'
  pretrain = stage_deltas(stages_from_config(config, 'pretrain'), tokens if stage == 'pretrain' else None)
  used = pretrain if stage == 'pretrain' else stage_deltas(stages_from_config(config, 'finetune'))
  return {'domain_fraction': max(s['domain_fraction'] for s in pretrain), 'stage_deltas': used}


def _order(names) -> list:
  return sorted(names, key=lambda name: (name != 'domain', name))


def _levels(weights: Mapping) -> list:
  """[(source, conditional fraction)] of a stage; the last source takes what the others leave."""
  names = _order(n for n, w in weights.items() if w > 0)
  exact = {n: fractions.Fraction(repr(weights[n])) for n in names}
  total = sum(exact.values())
  levels, left = [], fractions.Fraction(1)
  for name in names[:-1]:
    share = exact[name] / total
    levels.append((name, min(share / left, fractions.Fraction(1)).limit_denominator(_DENOMINATOR)))
    left -= share
  levels.append((names[-1], fractions.Fraction(1)))
  return levels


def _counts(levels: list, count: int) -> dict:
  """Examples of each source among the first `count` of a stage."""
  result = {}
  for name, share in levels:
    taken = count * share.numerator // share.denominator
    result[name] = taken
    count -= taken
  return result


def _round_keys(seed: int, source: str, epoch: int) -> np.ndarray:
  digest = hashlib.blake2b(f'{seed}/{source}/{epoch}'.encode(), digest_size=8 * _FEISTEL_ROUNDS).digest()
  return np.frombuffer(digest, dtype=np.uint64)


def _mix64(z: np.ndarray) -> np.ndarray:
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def permute(positions: np.ndarray, size: int, keys: np.ndarray) -> np.ndarray:
  """A keyed bijection of [0, size) applied to positions: a balanced Feistel network with cycle walking."""
  if size == 1:
    return np.zeros_like(positions)
  bits = max(2, (size - 1).bit_length())
  bits += bits % 2
  half, mask = np.uint64(bits // 2), np.uint64((1 << (bits // 2)) - 1)
  x = positions.astype(np.uint64)
  todo = np.ones(len(x), dtype=bool)
  while todo.any():  # Values that leave [0, size) walk on; fewer than 4 rounds trips are expected.
    left, right = x[todo] >> half, x[todo] & mask
    for key in keys:
      left, right = right, left ^ (_mix64(right + key) & mask)
    x[todo] = (left << half) | right
    todo = x >= np.uint64(size)
  return x.astype(np.int64)


class Mixture:
  """Batches of packed sequences drawn from named sources by stage weights, deterministically per step."""

  def __init__(self, train_sources: Mapping, stages: Sequence, batch_size: int, seq_len: int, seed: int):
    self.stages = validate_stages(stages)
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    for k, (_, weights) in enumerate(self.stages):
      missing = sorted(set(weights) - set(train_sources))
      if missing:
        raise ValueError(
          f'mixture stage {k} names source(s) {missing} that do not exist (sources: '
          f'{sorted(train_sources)}); fix the stage weights'
        )
    self.sources = dict(train_sources)
    for name, rows in self.sources.items():
      if rows.ndim != 2 or rows.shape[1] != seq_len + 1:
        raise ValueError(
          f'source {name!r} has shape {rows.shape}, not [N, seq_len + 1 = {seq_len + 1}]; '
          're-prepare the data with this seq_len'
        )
    used = {name for _, weights in self.stages for name, weight in weights.items() if weight > 0}
    for name in sorted(used):
      if len(self.sources[name]) < 1:
        raise ValueError(
          f'the {name} set is smaller than one sequence of {seq_len + 1} tokens; add data or '
          'lower --config.data.seq_len'
        )
    self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
    self.rows = {name: len(rows) for name, rows in self.sources.items()}
    self._levels = [_levels(weights) for _, weights in self.stages]
    # First example of each stage; a token bound T starts the next stage at the first example at or after T.
    self._starts = [0] + [-(-until // seq_len) for until, _ in self.stages[:-1]]
    self._bases = [dict.fromkeys(self.sources, 0)]  # Examples of each source before each stage.
    for k in range(len(self.stages) - 1):
      taken = _counts(self._levels[k], self._starts[k + 1] - self._starts[k])
      self._bases.append({n: c + taken.get(n, 0) for n, c in self._bases[k].items()})
    self._keys = {}

  def consumed(self, examples: int) -> dict:
    """Examples of each source among global examples [0, examples)."""
    k = int(np.searchsorted(self._starts, examples, side='right')) - 1
    taken = _counts(self._levels[k], examples - self._starts[k])
    return {name: count + taken.get(name, 0) for name, count in self._bases[k].items()}

  def accounting(self, step: int) -> dict:
    """Tokens and epochs of each source consumed by steps [0, step)."""
    counts = self.consumed(step * self.batch_size)
    return {
      'tokens': {name: count * self.seq_len for name, count in counts.items()},
      'epochs': {name: count / self.rows[name] if self.rows[name] else 0.0 for name, count in counts.items()},
    }

  def locate(self, examples: np.ndarray) -> tuple:
    """(source number in `names`, row) of each global example index; `names` orders self.sources."""
    examples = np.asarray(examples, dtype=np.int64)
    names = list(self.sources)
    source_ids = np.zeros(len(examples), dtype=np.int64)
    rows = np.zeros(len(examples), dtype=np.int64)
    stage_of = np.searchsorted(self._starts, examples, side='right') - 1
    for k in np.unique(stage_of).tolist():
      in_stage = stage_of == k
      position = examples[in_stage] - self._starts[k]
      source_k, count_k = np.zeros(len(position), np.int64), np.zeros(len(position), np.int64)
      open_ = np.ones(len(position), dtype=bool)
      for name, share in self._levels[k]:
        before = position * share.numerator // share.denominator
        chosen = open_ & ((position + 1) * share.numerator // share.denominator > before)
        source_k[chosen] = names.index(name)
        count_k[chosen] = before[chosen] + self._bases[k][name]
        position = np.where(open_ & ~chosen, position - before, position)
        open_ &= ~chosen
      source_ids[in_stage], rows[in_stage] = source_k, count_k
    for number, name in enumerate(names):
      pick = source_ids == number
      if pick.any():
        rows[pick] = self._shuffled(name, rows[pick])
    return source_ids, rows

  def _shuffled(self, name: str, counts: np.ndarray) -> np.ndarray:
    size = self.rows[name]
    epochs, offsets = counts // size, counts % size
    result = np.empty_like(counts)
    for epoch in np.unique(epochs).tolist():
      pick = epochs == epoch
      # Grain reads from several threads: take the round keys into a local before another thread may clear the cache.
      round_keys = self._keys.get((name, epoch))
      if round_keys is None:
        if len(self._keys) > 64:
          self._keys.clear()
        round_keys = self._keys[(name, epoch)] = _round_keys(self.seed, name, epoch)
      result[pick] = permute(offsets[pick], size, round_keys)
    return result

  def examples(self, indices) -> np.ndarray:
    """int32 [len(indices), seq_len + 1] sequences of the given global example indices."""
    source_ids, rows = self.locate(indices)
    batch = np.empty((len(source_ids), self.seq_len + 1), dtype=np.int32)
    for number, name in enumerate(self.sources):
      pick = np.flatnonzero(source_ids == number)
      if len(pick):
        batch[pick] = self.sources[name][rows[pick]]
    return batch

  def global_batch(self, step: int) -> np.ndarray:
    """int32 [batch_size, seq_len + 1]: the whole batch of a step."""
    return self.examples(np.arange(step * self.batch_size, (step + 1) * self.batch_size))

  def local_batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """This process's rows [p B / P, (p + 1) B / P) of the global batch of a step."""
    if self.batch_size % process_count:
      raise ValueError(
        f'batch_size {self.batch_size} is not divisible by the {process_count} processes; '
        f'use a multiple of {process_count}'
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} is outside [0, {process_count})')
    per_process = self.batch_size // process_count
    start = step * self.batch_size + process_index * per_process
    return self.examples(np.arange(start, start + per_process))

  def dataset(self) -> grain.MapDataset:
    """The global examples as a Grain MapDataset (index i -> int32 [seq_len + 1])."""
    return _ExampleDataset(self)

  def batch_dataset(
    self, process_index: int = 0, process_count: int = 1, start_step: int = 0, num_steps: int = 0
  ) -> grain.MapDataset:
    """Local batches of steps start_step, start_step + 1, ... as a Grain MapDataset (resume = start_step)."""
    return _BatchDataset(self, process_index, process_count, start_step, num_steps or sys.maxsize // 2)


class _ExampleDataset(grain.MapDataset):
  """Random access to a mixture's global examples."""

  def __init__(self, mixture: Mixture):
    super().__init__()
    self._mixture = mixture

  def __len__(self) -> int:
    return sys.maxsize // 2

  def __str__(self) -> str:
    return f'MixtureExamples(sources={list(self._mixture.sources)}, seed={self._mixture.seed})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._mixture.examples([index])[0]

  def _getitems(self, indices):
    return list(self._mixture.examples(indices))


class _BatchDataset(grain.MapDataset):
  """Random access to one process's batches, by step."""

  def __init__(self, mixture: Mixture, process_index: int, process_count: int, start_step: int, length: int):
    super().__init__()
    self._mixture, self._process = mixture, (process_index, process_count)
    self._start, self._length = start_step, length

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'MixtureBatches(process={self._process}, start_step={self._start})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._mixture.local_batch(self._start + index, *self._process)
