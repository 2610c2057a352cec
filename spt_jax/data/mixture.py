"""Token-exact mixtures of packed sequences, as a Grain MapDataset: global example number -> sequence.

Grain mixes, maps each step to this host's rows and reads ahead; two pieces are our own, each a Grain
transform. Sources are mixed by `MapDataset.select_from_datasets` with our selection map, because Grain's `mix`
scales weights to integers with the smallest at 100 and rounds the others down (δ = 0.3 would draw 0.3003) and has
no stages. The map is a hierarchical exact interleave: example j of stage k (j counted from the stage's first
example) goes to the first source, of weight w, iff floor((j+1)w) > floor(jw), so that source holds exactly
floor(nw) of the stage's first n examples; the other sources share the rest by the same rule on their
renormalised weights ('domain' first, then by name). Per-source counts carry across stages in closed form.
Each source is read in a keyed permutation, fresh every epoch (`_EpochShuffle`: a Feistel network with cycle
walking), because Grain's `shuffle` costs about 35 ms / n per row read from a set of n rows (1.9 ms at 13 rows,
34 µs at 1,000; measured), and small runs' domain sets have tens to hundreds of rows. The batch of step s is
therefore a pure function of (sources, stages, batch_size, seed, s): a run resumes at its step (the iterator's
whole state), and the accounting costs O(#stages).
"""

import bisect
import fractions
import functools
import hashlib
import math
import sys
from collections.abc import Mapping, Sequence

import grain
import numpy as np

_WEIGHT_TOLERANCE = 1e-6
_DENOMINATOR = 1 << 20  # Weights become exact fractions with at most this denominator.
_FEISTEL_ROUNDS = 4
_MASK64 = (1 << 64) - 1
_UNBOUNDED = sys.maxsize // 2  # Examples of an endless mixture (Grain's batch and slice take a length).


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
  stage = config.stage if config.stage in ('pretrain', 'finetune') else 'pretrain'
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


def _counts(levels: list, count: int, sources: int) -> list:
  """Examples of each source (by number) among the first `count` of a stage of (source, numerator, denominator)."""
  result = [0] * sources
  for source, numerator, denominator in levels:
    result[source] = count * numerator // denominator
    count -= result[source]
  return result


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
    self._interleave = _Interleave(list(self.sources), self.stages, seq_len)
    shuffled = [_EpochShuffle(rows, seed, name) for name, rows in self.sources.items()]
    self._examples = grain.MapDataset.select_from_datasets(shuffled, self._interleave)

  def consumed(self, examples: int) -> dict:
    """Examples of each source among global examples [0, examples)."""
    return dict(zip(self.sources, self._interleave.consumed(examples), strict=True))

  def accounting(self, step: int) -> dict:
    """Tokens and epochs of each source consumed by steps [0, step)."""
    counts = self.consumed(step * self.batch_size)
    return {
      'tokens': {name: count * self.seq_len for name, count in counts.items()},
      'epochs': {name: count / self.rows[name] if self.rows[name] else 0.0 for name, count in counts.items()},
    }

  def locate(self, examples) -> tuple:
    """(source number in `self.sources`, that source's example count before it) of each global example index."""
    pairs = np.array([self._interleave[int(i)] for i in np.asarray(examples).ravel()], np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]

  def global_batch(self, step: int) -> np.ndarray:
    """int32 [batch_size, seq_len + 1]: the whole batch of a step."""
    return self.local_batch(step)

  def local_batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """This process's rows [p B / P, (p + 1) B / P) of the global batch of a step: global examples from s·B + p·B/P."""
    per_process = self._per_process(process_index, process_count)
    first = step * self.batch_size + process_index * per_process
    return self.examples(range(first, first + per_process))

  def examples(self, indices) -> np.ndarray:
    """int32 [len(indices), seq_len + 1]: the global examples of these indices (every read of rows goes here)."""
    return np.stack([self._examples[int(i)] for i in indices]).astype(np.int32, copy=False)

  def _per_process(self, process_index: int, process_count: int) -> int:
    if self.batch_size % process_count:
      raise ValueError(
        f'batch_size {self.batch_size} is not divisible by the {process_count} processes; '
        f'use a multiple of {process_count}'
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} is outside [0, {process_count})')
    return self.batch_size // process_count

  def dataset(self) -> grain.MapDataset:
    """The global examples (index i -> int32 [seq_len + 1])."""
    return self._examples.map(_as_int32)

  def batch_dataset(
    self, process_index: int = 0, process_count: int = 1, start_step: int = 0, num_steps: int = 0
  ) -> grain.MapDataset:
    """Local batches of steps start_step, start_step + 1, ... (resume = start_step); num_steps 0: unbounded."""
    self._per_process(process_index, process_count)  # Bad arguments fail here, not in a reading thread.
    steps = grain.MapDataset.range(start_step, start_step + num_steps if num_steps else _UNBOUNDED)
    return steps.map(lambda step: self.local_batch(step, process_index, process_count))


class _Interleave(grain.transforms.DatasetSelectionMap):
  """Global example number -> (source number, that source's example count before it): the staged interleave."""

  def __init__(self, names: list, stages: list, seq_len: int):
    number = {name: k for k, name in enumerate(names)}
    # Per stage: (source number, numerator, denominator) of each level.
    self._levels = [[(number[n], f.numerator, f.denominator) for n, f in _levels(w)] for _, w in stages]
    # First example of each stage; a token bound T starts the next stage at the first example at or after T.
    self._starts = [0] + [-(-until // seq_len) for until, _ in stages[:-1]]
    self._bases = [[0] * len(names)]  # Examples of each source before each stage.
    for k in range(len(stages) - 1):
      taken = _counts(self._levels[k], self._starts[k + 1] - self._starts[k], len(names))
      self._bases.append([before + new for before, new in zip(self._bases[k], taken, strict=True)])

  def consumed(self, examples: int) -> list:
    """Examples of each source among global examples [0, examples)."""
    stage = bisect.bisect_right(self._starts, examples) - 1
    taken = _counts(self._levels[stage], examples - self._starts[stage], len(self._bases[0]))
    return [before + new for before, new in zip(self._bases[stage], taken, strict=True)]

  def __len__(self) -> int:
    return _UNBOUNDED

  def __getitem__(self, index: int) -> tuple:
    stage = bisect.bisect_right(self._starts, index) - 1
    position = index - self._starts[stage]
    for source, numerator, denominator in self._levels[stage]:
      before = position * numerator // denominator
      if (position + 1) * numerator // denominator > before:  # This source's count rises at this example.
        return source, self._bases[stage][source] + before
      position -= before
    raise AssertionError('the last level takes every example left')  # Its fraction is 1.


class _EpochShuffle(grain.MapDataset):
  """A source's example k of epoch e (index e·n + k): its row permute(k) of n, keyed by (seed, source, e).

  It reads the rows itself: a Grain source would record metrics for every row read, half the time of a batch.
  """

  def __init__(self, rows: np.ndarray, seed: int, name: str):
    super().__init__()
    self._rows, self._seed, self._name, self._size = rows, seed, name, len(rows)

  def __len__(self) -> int:
    return _UNBOUNDED

  def __str__(self) -> str:
    return f'EpochShuffle({self._name}, seed={self._seed})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, offset = divmod(index, self._size)
    return self._rows[permute(offset, self._size, _round_keys(self._seed, self._name, epoch))]


@functools.lru_cache(maxsize=256)
def _round_keys(seed: int, source: str, epoch: int) -> tuple:
  digest = hashlib.blake2b(f'{seed}/{source}/{epoch}'.encode(), digest_size=8 * _FEISTEL_ROUNDS).digest()
  return tuple(int.from_bytes(digest[8 * k : 8 * k + 8], 'little') for k in range(_FEISTEL_ROUNDS))


def _mix64(z: int) -> int:
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return z ^ (z >> 31)


def permute(position: int, size: int, keys: tuple) -> int:
  """A keyed bijection of [0, size): a balanced Feistel network; values that leave [0, size) walk on."""
  if size == 1:
    return 0
  bits = max(2, (size - 1).bit_length())
  bits += bits % 2
  half, mask = bits // 2, (1 << (bits // 2)) - 1
  x = position
  while True:  # Fewer than 4 rounds trips are expected.
    left, right = x >> half, x & mask
    for key in keys:
      left, right = right, left ^ (_mix64((right + key) & _MASK64) & mask)
    x = (left << half) | right
    if x < size:
      return x


def _as_int32(row) -> np.ndarray:
  return np.asarray(row, np.int32)
