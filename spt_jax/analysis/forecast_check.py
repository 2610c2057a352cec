"""Out-of-sample checks of a scaling-law fit (§5.3, Fig. 13): fit on some runs, forecast the others.

The paper fits δ ∈ [0, 5]% and predicts the whole 10% curve to 200B tokens (and that it starts to overfit near
70B), and extrapolates post-finetuning loss past 120B to predict that 2% overtakes 5% near 280B. Here:

  fit = scaling_fit.fit_joint(data, max_delta=0.05, max_tokens=0.6 * budget)
  report = forecast_check.check(fit.law, data, crossover_pairs=[(0.02, 0.05)])

`check` scores the forecasts on every row the fit did not see: runs at a held-out δ (their whole curve), and
the later tokens of the fitted δ; and compares predicted with observed overfitting onsets and crossovers.
Errors are predicted − observed, in nats and relative to the observed loss.
"""

import dataclasses
import math

import numpy as np

from spt_jax.analysis import scaling, seeds
from spt_jax.analysis.scaling_fit import ScalingData, _within
from spt_jax.storage import markdown


@dataclasses.dataclass(frozen=True)
class Errors:
  """Forecast − observed over some rows: in nats and relative to the observed loss."""

  n: int
  rmse: float
  mean_error: float
  mean_abs_relative_error: float
  max_abs_relative_error: float


@dataclasses.dataclass(frozen=True)
class CurveErrors:
  """The errors of one δ's rows the fit never saw: domain test and train loss, over a range of tokens."""

  test: Errors
  train: Errors
  tokens: list  # [first, last] tokens of those rows.


@dataclasses.dataclass(frozen=True)
class Onset:
  """Where one δ starts to overfit: the law's and the observed curve's (None: not in range)."""

  predicted_tokens: float | None
  observed_tokens: float | None
  fitted: bool  # Whether the fit saw this δ.

  @property
  def relative_error(self) -> float | None:
    return self.predicted_tokens / self.observed_tokens - 1 if self.predicted_tokens and self.observed_tokens else None


@dataclasses.dataclass(frozen=True)
class Crossover:
  """Where δ_a and δ_b cross in the `objective` loss: [{'tokens', 'better_after'}] predicted and observed."""

  deltas: list
  objective: str
  predicted: list
  observed: list


@dataclasses.dataclass
class ForecastCheck:
  """A fit's out-of-sample errors; keys of the dicts are δ as text ('0.02')."""

  fitted_on: dict  # The subset fitted: max_delta, max_tokens.
  held_out_delta: dict = dataclasses.field(default_factory=dict)  # δ -> CurveErrors of a δ never fitted.
  later_tokens: dict = dataclasses.field(default_factory=dict)  # δ -> CurveErrors past the fitted tokens.
  post_ft: dict = dataclasses.field(default_factory=dict)  # δ -> Errors of the post-finetuning loss.
  onset: dict = dataclasses.field(default_factory=dict)  # δ -> Onset.
  crossovers: list = dataclasses.field(default_factory=list)  # Crossover of each pair asked for.
  notes: list = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    record = dataclasses.asdict(self)
    for key, onset in self.onset.items():  # The relative error only where both onsets exist.
      if onset.relative_error is not None:
        record['onset'][key]['relative_error'] = onset.relative_error
    return record


def _percent(fraction: float, fixed: str = '.2f') -> str:
  return markdown.number(100 * fraction, fixed) + '%'


def _errors(predicted, observed) -> Errors:
  predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
  error = predicted - observed
  relative = error / observed
  return Errors(
    n=int(len(error)),
    rmse=float(np.sqrt(np.mean(error**2))),
    mean_error=float(np.mean(error)),
    mean_abs_relative_error=float(np.mean(np.abs(relative))),
    max_abs_relative_error=float(np.max(np.abs(relative))),
  )


def observed_onset(tokens, loss) -> float | None:
  """Tokens where an observed test-loss curve is lowest, if it turns up inside the range (else None).

  The vertex of a quadratic in log T fitted to the points around the lowest one, so that one noisy
  evaluation does not decide it. None (not yet overfitting) unless the mean of the last three points exceeds the
  lowest by three times the evaluation noise (estimated from successive differences).
  """
  order = np.argsort(tokens)
  tokens, loss = np.asarray(tokens, float)[order], np.asarray(loss, float)[order]
  low = int(np.argmin(loss))
  if len(loss) < 4 or low >= len(loss) - 2:
    return None
  noise = 1.4826 * float(np.median(np.abs(np.diff(loss)))) / math.sqrt(2)
  if np.mean(loss[-3:]) - loss[low] <= 3 * noise:
    return None
  width = max(2, len(loss) // 8)
  rows = slice(max(low - width, 0), min(low + width + 1, len(loss)))
  x = np.log(tokens[rows])
  if len(x) < 3:
    return float(tokens[low])
  curvature, slope, _ = np.polyfit(x, loss[rows], 2)
  if curvature <= 0:
    return float(tokens[low])
  return float(np.exp(np.clip(-slope / (2 * curvature), x[0], x[-1])))


def _observed_crossovers(curves: dict, delta_a: float, delta_b: float) -> list:
  """Where two observed curves cross, interpolated in log T on their common range."""
  (ta, la), (tb, lb) = curves[delta_a], curves[delta_b]
  lo, hi = max(ta.min(), tb.min()), min(ta.max(), tb.max())
  if not lo < hi:
    return []
  grid = np.geomspace(lo, hi, 400)
  diff = np.interp(np.log(grid), np.log(ta), la) - np.interp(np.log(grid), np.log(tb), lb)
  found = []
  for i in np.nonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0)[0]:
    x0, x1 = math.log(grid[i]), math.log(grid[i + 1])
    root = x0 - diff[i] * (x1 - x0) / (diff[i + 1] - diff[i])
    found.append({'tokens': math.exp(root), 'better_after': delta_a if diff[i + 1] < 0 else delta_b})
  return found


def _curves(delta, tokens, loss) -> dict:
  result = {}
  for d in np.unique(delta):
    rows = delta == d
    order = np.argsort(tokens[rows])
    result[float(d)] = (tokens[rows][order], loss[rows][order])
  return result


def check(law: scaling.ScalingLaw, data: ScalingData, crossover_pairs=(), objective: str = 'post_ft') -> ForecastCheck:
  """Out-of-sample errors of a fitted law (with its fitted_on subset) on all of data.

  crossover_pairs compare the `objective` loss: 'post_ft' (observed best losses after finetuning, needs ft_before)
  or 'test'.
  """
  fitted_on = law.fitted_on or {}
  max_delta, max_tokens = fitted_on.get('max_delta'), fitted_on.get('max_tokens')
  seen = _within(data.delta, data.tokens, max_delta, max_tokens)
  fitted = np.isin(data.delta, law.fitted_deltas)
  report = ForecastCheck(fitted_on=dict(fitted_on))
  predicted_test = law.test_loss(data.delta, data.tokens)
  for d in np.unique(data.delta):
    rows = (data.delta == d) & ~seen
    if not np.any(rows):
      continue
    entry = CurveErrors(
      test=_errors(predicted_test[rows], data.test_loss[rows]),
      train=_errors(law.train_loss(d, data.tokens[rows]), data.train_loss[rows]),
      tokens=[float(np.min(data.tokens[rows])), float(np.max(data.tokens[rows]))],
    )
    (report.later_tokens if np.any(fitted & (data.delta == d)) else report.held_out_delta)[f'{d:g}'] = entry
  post_observed = None
  if len(data.ft_before) == len(data.ft_delta) and len(data.ft_delta):
    post_observed = data.ft_before - data.ft_drop
    ft_seen = _within(data.ft_delta, data.ft_tokens, max_delta, max_tokens)
    for d in np.unique(data.ft_delta):
      rows = (data.ft_delta == d) & ~ft_seen
      if np.any(rows) and law.finetune_delta:
        predicted = [float(law.post_ft_loss(float(d), x)) for x in data.ft_tokens[rows]]
        report.post_ft[f'{d:g}'] = _errors(predicted, post_observed[rows])
  elif len(data.ft_delta):
    report.notes.append('the finetunes carry no pre-finetuning loss (ft_before): post-FT errors not scored')
  curves = _curves(data.delta, data.tokens, data.test_loss)
  for d, (tokens, loss) in curves.items():
    onset = Onset(scaling.overfitting_onset(law, d), observed_onset(tokens, loss), d in law.fitted_deltas)
    report.onset[f'{d:g}'] = onset
  if objective == 'post_ft' and post_observed is not None:
    observed_curves = _curves(data.ft_delta, data.ft_tokens, post_observed)
  else:
    observed_curves, objective = curves, 'test'
  for delta_a, delta_b in crossover_pairs:
    if delta_a not in observed_curves or delta_b not in observed_curves:
      report.notes.append(f'no observed {objective} curves at both δ={delta_a:g} and δ={delta_b:g}')
      continue
    span = (
      min(observed_curves[delta_a][0].min(), observed_curves[delta_b][0].min()) / 2,
      max(observed_curves[delta_a][0].max(), observed_curves[delta_b][0].max()) * 2,
    )
    report.crossovers.append(
      Crossover(
        [delta_a, delta_b],
        objective,
        scaling.crossovers(law, delta_a, delta_b, span, objective),
        _observed_crossovers(observed_curves, delta_a, delta_b),
      )
    )
  if not report.held_out_delta and not report.later_tokens:
    report.notes.append('every row was fitted: nothing is out of sample (fit with max_delta / max_tokens)')
  return report


def format_report(report: ForecastCheck) -> str:
  """A markdown table of the out-of-sample errors, onsets and crossovers."""

  def errors(e: Errors):
    return [markdown.number(e.rmse, '.4f'), _percent(e.mean_abs_relative_error), _percent(e.max_abs_relative_error)]

  rows = [
    [key, d, f'{entry.tokens[0]:.3g}–{entry.tokens[1]:.3g}', *errors(entry.test)]
    for key, entries in (('held out delta', report.held_out_delta), ('later tokens', report.later_tokens))
    for d, entry in entries.items()
  ]
  rows += [['post-FT', d, '', *errors(e)] for d, e in report.post_ft.items()]
  lines = markdown.table(
    ['held out', 'δ', 'tokens', 'test RMSE (nats)', 'mean abs rel. error', 'max abs rel. error'], rows
  )
  lines += [
    '',
    *markdown.table(
      ['δ', 'predicted onset (tokens)', 'observed onset', 'fitted δ'],
      [
        [
          d,
          f'{onset.predicted_tokens or float("nan"):.3g}',
          f'{onset.observed_tokens or float("nan"):.3g}',
          onset.fitted,
        ]
        for d, onset in report.onset.items()
      ],
    ),
  ]
  for cross in report.crossovers:

    def show(found):
      return ', '.join(f'{f["tokens"]:.3g} ({f["better_after"]:g} better after)' for f in found) or 'none'

    lines.append(
      f'\nCrossover δ={cross.deltas[0]:g} vs {cross.deltas[1]:g} ({cross.objective}): '
      f'predicted {show(cross.predicted)}; observed {show(cross.observed)}'
    )
  lines += [f'\n- {note}' for note in report.notes]
  return '\n'.join(lines)


def mean_sd(fractions) -> str:
  """Fractions as 'mean ± sd%' over the seeds that have one (seeds.spread; '–' for none)."""
  return seeds.spread(None if f is None else 100 * f for f in fractions).plus_minus(2, '%')


def across_seeds(reports: dict) -> dict:
  """Per seed (key) the §5.3 scores of one ForecastCheck, and their mean ± sd over the seeds.

  Scores: each held-out δ's whole-curve error and onset, and each fitted δ's error on the later tokens (mean
  absolute relative error of the domain test loss), with how many seeds are scored and how many of them meet the
  targets (3% later, 10% held out, onset within 25%).
  """
  seeds = list(reports)
  held = sorted({d for r in reports.values() for d in r.held_out_delta}, key=float)
  later = sorted({d for r in reports.values() for d in r.later_tokens}, key=float)

  def error(entries, d):
    return entries[d].test.mean_abs_relative_error if d in entries else None

  rows = {}
  for seed, r in reports.items():
    rows[seed] = {
      **{f'held_out/{d}': error(r.held_out_delta, d) for d in held},
      **{f'onset_error/{d}': r.onset[d].relative_error if d in r.onset else None for d in held},
      **{f'later/{d}': error(r.later_tokens, d) for d in later},
    }
  targets = {'held_out': 0.10, 'onset_error': 0.25, 'later': 0.03}
  scored = {key: [rows[s][key] for s in seeds if rows[s][key] is not None] for key in rows[seeds[0]]}
  return {
    'seeds': seeds,
    'rows': rows,
    'targets': targets,
    'seeds_scored': {key: len(values) for key, values in scored.items()},  # An onset only where one is observed.
    'seeds_meeting_target': {
      key: sum(abs(v) <= targets[key.split('/')[0]] for v in values) for key, values in scored.items()
    },
  }


def format_seeds(summary: dict) -> str:
  """across_seeds as a markdown table: a row per seed, then mean ± sd and the seeds meeting each target."""
  keys = list(summary['rows'][summary['seeds'][0]])

  def title(key):
    kind, d = key.split('/')
    what = {
      'held_out': 'held-out δ = {}: whole curve',
      'onset_error': 'δ = {}: onset, predicted ÷ observed − 1',
      'later': 'δ = {}: later tokens',
    }
    return what[kind].format(f'{100 * float(d):g}%')

  def show(value, key):
    if value is None:
      return '–'
    return _percent(value, '+.1f') if key.startswith('onset') else _percent(value)

  def column(key):
    return [summary['rows'][s][key] for s in summary['seeds']]

  def median(key):
    values = [v for v in column(key) if v is not None]
    return show(float(np.median(values)) if values else None, key)

  body = [[f'seed {s}', *(show(summary['rows'][s][k], k) for k in keys)] for s in summary['seeds']]
  body.append(['median', *map(median, keys)])
  body.append(['mean ± sd', *(mean_sd(column(k)) for k in keys)])
  body.append(
    [
      'seeds within target',
      *(
        f'{summary["seeds_meeting_target"][k]} of {summary["seeds_scored"][k]} '
        f'(≤ {100 * summary["targets"][k.split("/")[0]]:g}%)'
        for k in keys
      ),
    ]
  )
  return '\n'.join(
    [
      *markdown.table(['', *map(title, keys)], body),
      '',
      '–: not scored (an onset only where the observed curve turns up within the run).',
    ]
  )
