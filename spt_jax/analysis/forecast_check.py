"""Out-of-sample checks of a scaling-law fit (§5.3, Fig. 13): fit on some runs, forecast the others.

The paper fits δ ∈ [0, 5]% and predicts the whole 10% curve to 200B tokens (and that it starts to overfit near
70B), and extrapolates post-finetuning loss past 120B to predict that 2% overtakes 5% near 280B. Here:

  fit = scaling_fit.fit_joint(data, max_delta=0.05, max_tokens=0.6 * budget)
  report = forecast_check.check(fit, data, crossover_pairs=[(0.02, 0.05)])

`check` scores the forecasts on every row the fit did not see: runs at a held-out δ (their whole curve), and
the later tokens of the fitted δ; and compares predicted with observed overfitting onsets and crossovers.
Errors are predicted − observed, in nats and relative to the observed loss.
"""

import math

import numpy as np

from spt_jax.analysis import scaling
from spt_jax.analysis.scaling_fit import ScalingData, _within
from spt_jax.storage import markdown


def _errors(predicted, observed) -> dict:
  predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
  error = predicted - observed
  relative = error / observed
  return {
    'n': int(len(error)),
    'rmse': float(np.sqrt(np.mean(error**2))),
    'mean_error': float(np.mean(error)),
    'mean_abs_relative_error': float(np.mean(np.abs(relative))),
    'max_abs_relative_error': float(np.max(np.abs(relative))),
  }


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


def check(fit: dict, data: ScalingData, crossover_pairs=(), objective: str = 'post_ft') -> dict:
  """Out-of-sample errors of a fit (fit_joint's dict, with its fitted_on subset) on all of data.

  Returns {'fitted_on', 'held_out_delta': {δ: errors}, 'later_tokens': {δ: errors}, 'post_ft': {δ: errors},
  'onset': {δ: predicted/observed tokens}, 'crossovers': [...], 'notes'}. crossover_pairs compare the
  `objective` loss: 'post_ft' (observed best losses after finetuning, needs ft_before) or 'test'.
  """
  law = scaling.law_from_fit(fit)
  fitted_on = fit.get('fitted_on') or {}
  max_delta, max_tokens = fitted_on.get('max_delta'), fitted_on.get('max_tokens')
  seen = _within(data.delta, data.tokens, max_delta, max_tokens)
  fitted = np.isin(data.delta, law.fitted_deltas)
  report = {
    'fitted_on': fitted_on,
    'held_out_delta': {},
    'later_tokens': {},
    'post_ft': {},
    'onset': {},
    'crossovers': [],
    'notes': [],
  }
  predicted_test = law.test_loss(data.delta, data.tokens)
  for d in np.unique(data.delta):
    rows = (data.delta == d) & ~seen
    if not np.any(rows):
      continue
    key = 'later_tokens' if np.any(fitted & (data.delta == d)) else 'held_out_delta'
    entry = {
      'test': _errors(predicted_test[rows], data.test_loss[rows]),
      'train': _errors(law.train_loss(d, data.tokens[rows]), data.train_loss[rows]),
      'tokens': [float(np.min(data.tokens[rows])), float(np.max(data.tokens[rows]))],
    }
    report[key][f'{d:g}'] = entry
  post_observed = None
  if len(data.ft_before) == len(data.ft_delta) and len(data.ft_delta):
    post_observed = data.ft_before - data.ft_drop
    ft_seen = _within(data.ft_delta, data.ft_tokens, max_delta, max_tokens)
    for d in np.unique(data.ft_delta):
      rows = (data.ft_delta == d) & ~ft_seen
      if np.any(rows) and law.finetune_delta:
        predicted = [float(law.post_ft_loss(float(d), x)) for x in data.ft_tokens[rows]]
        report['post_ft'][f'{d:g}'] = _errors(predicted, post_observed[rows])
  elif len(data.ft_delta):
    report['notes'].append('the finetunes carry no pre-finetuning loss (ft_before): post-FT errors not scored')
  curves = _curves(data.delta, data.tokens, data.test_loss)
  for d, (tokens, loss) in curves.items():
    predicted, observed = scaling.overfitting_onset(law, d), observed_onset(tokens, loss)
    entry = {'predicted_tokens': predicted, 'observed_tokens': observed, 'fitted': d in law.fitted_deltas}
    if predicted and observed:
      entry['relative_error'] = predicted / observed - 1
    report['onset'][f'{d:g}'] = entry
  if objective == 'post_ft' and post_observed is not None:
    observed_curves = _curves(data.ft_delta, data.ft_tokens, post_observed)
  else:
    observed_curves, objective = curves, 'test'
  for delta_a, delta_b in crossover_pairs:
    if delta_a not in observed_curves or delta_b not in observed_curves:
      report['notes'].append(f'no observed {objective} curves at both δ={delta_a:g} and δ={delta_b:g}')
      continue
    span = (
      min(observed_curves[delta_a][0].min(), observed_curves[delta_b][0].min()) / 2,
      max(observed_curves[delta_a][0].max(), observed_curves[delta_b][0].max()) * 2,
    )
    report['crossovers'].append(
      {
        'deltas': [delta_a, delta_b],
        'objective': objective,
        'predicted': scaling.crossovers(law, delta_a, delta_b, span, objective),
        'observed': _observed_crossovers(observed_curves, delta_a, delta_b),
      }
    )
  if not report['held_out_delta'] and not report['later_tokens']:
    report['notes'].append('every row was fitted: nothing is out of sample (fit with max_delta / max_tokens)')
  return report


def format_report(report: dict) -> str:
  """A markdown table of the out-of-sample errors, onsets and crossovers."""

  def errors(e):
    return [
      f'{e["rmse"]:.4f}',
      f'{100 * e["mean_abs_relative_error"]:.2f}%',
      f'{100 * e["max_abs_relative_error"]:.2f}%',
    ]

  rows = [
    [key.replace('_', ' '), d, f'{entry["tokens"][0]:.3g}–{entry["tokens"][1]:.3g}', *errors(entry['test'])]
    for key in ('held_out_delta', 'later_tokens')
    for d, entry in report[key].items()
  ]
  rows += [['post-FT', d, '', *errors(e)] for d, e in report['post_ft'].items()]
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
          f'{entry["predicted_tokens"] or float("nan"):.3g}',
          f'{entry["observed_tokens"] or float("nan"):.3g}',
          entry['fitted'],
        ]
        for d, entry in report['onset'].items()
      ],
    ),
  ]
  for cross in report['crossovers']:

    def show(found):
      return ', '.join(f'{f["tokens"]:.3g} ({f["better_after"]:g} better after)' for f in found) or 'none'

    lines.append(
      f'\nCrossover δ={cross["deltas"][0]:g} vs {cross["deltas"][1]:g} ({cross["objective"]}): '
      f'predicted {show(cross["predicted"])}; observed {show(cross["observed"])}'
    )
  lines += [f'\n- {note}' for note in report['notes']]
  return '\n'.join(lines)
