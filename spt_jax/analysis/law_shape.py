"""Does the data have the shape the law (eqs. 1-6) assumes? Measured per δ from the curves alone, without the law.

The law can follow only curves of one shape (§5.1): the domain train loss falls with T at every δ (eq. 1 with
b_train ≤ 0), there is no gap without domain data (eq. 5 at δ = 0), and the gap test − train grows as a power
of T whose exponent rises with δ (eq. 4 with b_gap_g < 0 < b_gap_s: more δ overfits faster). Where the data do
not have that shape, the fit bends the law towards the data as far as its bounds allow and extrapolates the
law's shape, not the data's: forecasts to a larger δ or a later T then fail whatever the fit does. `measure`
gives, per δ, the train loss's change per e-fold of T, the gap's mean and the gap's exponent (least squares,
each with its standard error); `notes` names every place the data leave the law's shape by more than two
standard errors.
"""

import dataclasses
import itertools

import numpy as np
from scipy import stats

from spt_jax.storage import markdown

SIGNIFICANT = 2.0  # Standard errors a difference must exceed to count.


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A measured value and its standard error."""

  value: float
  stderr: float


@dataclasses.dataclass(frozen=True)
class DeltaShape:
  """One δ's curves: train loss per e-fold of T, the gap's exponent (None where the gap is not positive)."""

  delta: float
  points: int
  train_per_efold: Estimate  # d(domain train loss) / d(ln T), nats.
  gap_first: float  # Test − train at the first and last point.
  gap_last: float
  gap_exponent: Estimate | None  # d(ln gap) / d(ln T) over the points with a positive gap, if all of them are.
  gap_mean: Estimate  # The gap's mean over the points.


def _slope(x, y) -> Estimate:
  """Least-squares slope of y on x and its standard error."""
  fit = stats.linregress(x, y)
  return Estimate(float(fit.slope), float(fit.stderr))


def measure(data) -> list[DeltaShape]:
  """Per δ of a ScalingData with 3 or more points: the measured shape of its curves."""
  shapes = []
  for delta in np.unique(data.delta):
    rows = np.flatnonzero(data.delta == delta)
    rows = rows[np.argsort(data.tokens[rows])]
    if len(rows) < 3:
      continue
    log_t = np.log(data.tokens[rows])
    gap = data.test_loss[rows] - data.train_loss[rows]
    shapes.append(
      DeltaShape(
        float(delta),
        len(rows),
        _slope(log_t, data.train_loss[rows]),
        float(gap[0]),
        float(gap[-1]),
        _slope(log_t, np.log(gap)) if delta > 0 and np.all(gap > 0) else None,
        Estimate(float(np.mean(gap)), float(np.std(gap, ddof=1) / np.sqrt(len(gap)))),
      )
    )
  return shapes


def notes(shapes: list[DeltaShape]) -> list[str]:
  """Where the measured shape leaves the law's by more than SIGNIFICANT standard errors, one line each."""
  found = []
  for s in shapes:
    if s.delta == 0 and abs(s.gap_mean.value) > SIGNIFICANT * s.gap_mean.stderr:
      found.append(
        f'data shape: at δ=0, where no domain data is trained on, the gap is {s.gap_mean.value:+.3g} ± '
        f'{s.gap_mean.stderr:.2g} nats on average, not 0: the domain train and test samples differ; eq. (5) has '
        'no gap at δ=0 and eqs. (2)-(3) no offset, so the fit reads that difference as overfitting'
      )
    if s.train_per_efold.value > SIGNIFICANT * s.train_per_efold.stderr:
      found.append(
        f'data shape: at δ={s.delta:g} the domain train loss rises with T ({s.train_per_efold.value:+.3g} ± '
        f'{s.train_per_efold.stderr:.2g} nats per e-fold); eq. (1) with b_train ≤ 0 cannot follow it'
      )
  measured = [s for s in shapes if s.gap_exponent is not None]
  for low, high in itertools.pairwise(measured):
    difference = high.gap_exponent.value - low.gap_exponent.value
    if -difference > SIGNIFICANT * np.hypot(low.gap_exponent.stderr, high.gap_exponent.stderr):
      found.append(
        f'data shape: the gap grows more slowly at δ={high.delta:g} (T^{high.gap_exponent.value:.2f}) than at '
        f'δ={low.delta:g} (T^{low.gap_exponent.value:.2f}); eq. (4) with b_gap_g < 0 < b_gap_s makes the exponent '
        'rise with δ, so forecasts to a larger δ follow the law, not these curves'
      )
  return found


def section(shapes: list[DeltaShape]) -> str:
  """A report's section: the measured shape as a markdown table, the law's expectation in its header."""

  def show(estimate, digits='.3g'):
    return '—' if estimate is None else f'{estimate.value:{digits}} ± {estimate.stderr:.2g}'

  table = markdown.table(
    ['δ', 'points', 'train loss per e-fold of T (law: < 0)', 'gap first → last', 'gap ∝ T^b: b (law: rises with δ)'],
    [
      [
        f'{100 * s.delta:g}%',
        s.points,
        show(s.train_per_efold),
        f'{s.gap_first:.3f} → {s.gap_last:.3f}',
        show(s.gap_exponent, '.2f'),
      ]
      for s in shapes
    ],
  )
  return '\n'.join(
    [
      "## The data's shape, per δ, without the law",
      '',
      'The law follows only curves whose domain train loss falls with T, with no gap at δ = 0, and whose gap grows '
      'faster at a larger δ (spt_jax/analysis/law_shape.py).',
      '',
      *table,
    ]
  )
