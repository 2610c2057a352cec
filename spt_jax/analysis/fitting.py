"""Robust bounded least squares with restarts, bootstrap confidence intervals and identifiability warnings.

A parameter spec is a tuple of (name, transform, lower, upper, meaning): 'log' parameters are fitted as their
logarithm (positive, scale-free), 'linear' ones as they are; bounds are in natural units.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize


@dataclasses.dataclass
class FitResult:
  """A robust least-squares fit: natural parameter values, bootstrap CIs, residuals and warnings."""
  params: dict
  names: tuple
  spec: tuple
  ci: dict
  residuals: np.ndarray
  warnings: list


def natural(theta, spec) -> dict:
  """Parameter vector (log-transformed where the spec says so) -> {name: natural value}."""
  return {s[0]: (math.exp(v) if s[1] == 'log' else float(v)) for s, v in zip(spec, theta)}


def to_theta(values: dict, spec) -> np.ndarray:
  return np.array([math.log(max(values[s[0]], 1e-300)) if s[1] == 'log' else values[s[0]] for s in spec], float)


def _bounds(spec):
  lower = np.array([math.log(s[2]) if s[1] == 'log' else s[2] for s in spec], float)
  upper = np.array([math.log(s[3]) if s[1] == 'log' else s[3] for s in spec], float)
  return lower, upper


def robust_fit(residual_fn, starts, spec, n_rows: int, huber, seed: int = 0, bootstrap: int = 100,
               groups=None, derived=None) -> FitResult:
  """Least squares (Huber when huber is set) from several starts; bootstrap over rows for 95% CIs.

  residual_fn(theta, rows) returns the residuals of the given rows. With groups (one label per row), rows are
  resampled within each group, so that every run (δ) keeps its share of the points in each resample.
  derived({name: value}) -> {name: value} adds quantities computed from the parameters (e.g. one exponent as
  another plus a bounded difference) to params, with CIs from the same bootstrap samples.
  """
  lower, upper = _bounds(spec)
  margin = 1e-9 * (upper - lower)
  rows = np.arange(n_rows)
  options = dict(bounds=(lower, upper), loss='huber' if huber else 'linear', f_scale=huber or 1.0,
                 x_scale='jac', max_nfev=100 * len(spec))
  best = None
  for start in starts:
    x0 = np.clip(np.asarray(start, float), lower + 1e3 * margin, upper - 1e3 * margin)
    with np.errstate(all='ignore'):
      result = optimize.least_squares(lambda th: residual_fn(th, rows), x0, **options)
    if np.isfinite(result.cost) and (best is None or result.cost < best.cost):
      best = result
  names = tuple(s[0] for s in spec)
  notes = []
  singular = np.linalg.svd(best.jac, compute_uv=False)
  if singular[-1] < 1e-7 * singular[0]:
    null = np.linalg.svd(best.jac)[2][-1]
    involved = [names[i] for i in np.argsort(-np.abs(null))[:3]]
    notes.append(f'the data cannot identify {", ".join(involved)} (rank-deficient Jacobian): they trade off; '
                 'forecasts may still hold but do not read these values')
  for i, name in enumerate(names):
    if best.x[i] - lower[i] < 1e-6 * (upper[i] - lower[i]) or upper[i] - best.x[i] < 1e-6 * (upper[i] - lower[i]):
      notes.append(f'{name} sits at its bound ({natural(best.x, spec)[name]:.4g}): not identified by this data')
  ci = {}
  if bootstrap:
    rng = np.random.default_rng(seed)
    groups_rows = None if groups is None else [np.nonzero(groups == g)[0] for g in np.unique(groups)]
    samples = []
    for _ in range(bootstrap):
      resampled = (rng.integers(0, n_rows, n_rows) if groups is None else
                   np.concatenate([rng.choice(members, len(members)) for members in groups_rows]))
      with np.errstate(all='ignore'):
        refit = optimize.least_squares(lambda th: residual_fn(th, resampled), best.x,
                                       **dict(options, max_nfev=20 * len(spec)))
      samples.append(refit.x)
    if derived is not None:
      extra = np.array([list(derived(natural(x, spec)).values()) for x in samples])
      for k, name in enumerate(derived(natural(best.x, spec))):
        ci[name] = [float(v) for v in np.percentile(extra[:, k], [2.5, 97.5])]
    samples = np.array(samples)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    for i, (name, transform) in enumerate((s[0], s[1]) for s in spec):
      lo, hi = (math.exp(low[i]), math.exp(high[i])) if transform == 'log' else (float(low[i]), float(high[i]))
      ci[name] = [lo, hi]
      value = natural(best.x, spec)[name]
      span = upper[i] - lower[i]
      if low[i] - lower[i] < 1e-6 * span or upper[i] - high[i] < 1e-6 * span:
        notes.append(f'{name}: 95% CI [{lo:.3g}, {hi:.3g}] reaches a bound of the search: not identified')
      elif transform == 'log' and high[i] - low[i] > math.log(100):
        notes.append(f'{name}: 95% CI [{lo:.3g}, {hi:.3g}] spans over two orders of magnitude')
      elif transform != 'log' and hi - lo > 10 * max(abs(value), 1e-3):
        notes.append(f'{name}={value:.3g}: 95% CI [{lo:.3g}, {hi:.3g}] is over ten times its size')
  params = natural(best.x, spec)
  if derived is not None:
    params.update(derived(params))
  return FitResult(params, names, tuple(spec), ci, best.fun, notes)
