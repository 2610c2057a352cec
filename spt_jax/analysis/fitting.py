"""Robust bounded least squares with restarts, bootstrap confidence intervals and identifiability warnings.

A parameter spec is a tuple of (name, transform, lower, upper, meaning): 'log' parameters are fitted as their
logarithm (positive, scale-free), 'linear' ones as they are; bounds are in natural units. A parameter is reported
unidentified when the fit ends within BOUND_MARGIN of its range from a bound, or when its linearised standard error
(Gauss-Newton, from the Jacobian at the optimum) says the data do not constrain it: larger than its own size (a
'linear' parameter not told from zero), than a factor of ten (a 'log' one), or than WIDE_ERROR of its range.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize

BOUND_MARGIN = 1e-3  # Fraction of a parameter's search range within which it counts as at its bound.
WIDE_ERROR = 0.1  # A standard error above this fraction of the search range: the data do not constrain it.


@dataclasses.dataclass
class FitResult:
  """A robust least-squares fit: natural parameter values, bootstrap CIs, residuals and warnings."""

  params: dict
  names: tuple
  spec: tuple
  ci: dict
  residuals: np.ndarray
  warnings: list
  unidentified: dict = dataclasses.field(default_factory=dict)  # {name: why}, free parameters only.
  fixed: dict = dataclasses.field(default_factory=dict)  # {name: natural value} held fixed in the fit.
  cost: float = 0.0
  standard_errors: dict = dataclasses.field(default_factory=dict)  # {name: linearised error}, in log for 'log'.


def natural(theta, spec) -> dict:
  """Parameter vector (log-transformed where the spec says so) -> {name: natural value}."""
  return {s[0]: (math.exp(v) if s[1] == 'log' else float(v)) for s, v in zip(spec, theta, strict=False)}


def to_theta(values: dict, spec) -> np.ndarray:
  return np.array([math.log(max(values[s[0]], 1e-300)) if s[1] == 'log' else values[s[0]] for s in spec], float)


def _bounds(spec):
  lower = np.array([math.log(s[2]) if s[1] == 'log' else s[2] for s in spec], float)
  upper = np.array([math.log(s[3]) if s[1] == 'log' else s[3] for s in spec], float)
  return lower, upper


def _standard_errors(jacobian, residuals, n_params) -> np.ndarray:
  """Linearised standard errors in fitted (theta) units; a direction the data cannot see gives a huge one."""
  _, singular, right = np.linalg.svd(jacobian, full_matrices=False)
  floor = max(singular[0], 1e-300) * 1e-12
  dof = max(len(residuals) - n_params, 1)
  variance = float(np.sum(residuals**2)) / dof * np.sum((right.T / np.maximum(singular, floor)) ** 2, axis=1)
  return np.sqrt(variance)


def robust_fit(
  residual_fn,
  starts,
  spec,
  n_rows: int,
  huber,
  seed: int = 0,
  bootstrap: int = 100,
  groups=None,
  derived=None,
  fixed=None,
) -> FitResult:
  """Least squares (Huber when huber is set) from several starts; bootstrap over rows for 95% CIs.

  residual_fn(theta, rows) returns the residuals of the given rows, theta holding every parameter of spec. With
  groups (one label per row), rows are resampled within each group, so that every run (δ) keeps its share of the
  points in each resample. derived({name: value}) -> {name: value} adds quantities computed from the parameters
  (e.g. one exponent as another plus a bounded difference) to params, with CIs from the same bootstrap samples.
  fixed {name: natural value} holds those parameters at their values (their entries of the starts are ignored).
  """
  fixed = dict(fixed or {})
  template = to_theta({s[0]: fixed.get(s[0], 1.0) for s in spec}, spec)
  free_index = np.array([i for i, s in enumerate(spec) if s[0] not in fixed], int)
  free_spec = tuple(spec[i] for i in free_index)

  def expand(x):
    full = template.copy()
    full[free_index] = x
    return full

  def free_residuals(x, rows):
    return residual_fn(expand(x), rows)

  lower, upper = _bounds(free_spec)
  span = upper - lower
  margin = 1e-9 * span
  rows = np.arange(n_rows)
  options = dict(
    bounds=(lower, upper),
    loss='huber' if huber else 'linear',
    f_scale=huber or 1.0,
    x_scale='jac',
    max_nfev=100 * len(free_spec),
  )
  best = None
  for start in starts:
    x0 = np.clip(np.asarray(start, float)[free_index], lower + 1e3 * margin, upper - 1e3 * margin)
    with np.errstate(all='ignore'):
      result = optimize.least_squares(lambda th: free_residuals(th, rows), x0, **options)
    if np.isfinite(result.cost) and (best is None or result.cost < best.cost):
      best = result
  names = tuple(s[0] for s in free_spec)
  values = natural(expand(best.x), spec)
  notes, unidentified = [], {}
  singular = np.linalg.svd(best.jac, compute_uv=False)
  if singular[-1] < 1e-7 * singular[0]:
    null = np.linalg.svd(best.jac)[2][-1]
    involved = [names[i] for i in np.argsort(-np.abs(null))[:3]]
    notes.append(
      f'the data cannot identify {", ".join(involved)} (rank-deficient Jacobian): they trade off; '
      'forecasts may still hold but do not read these values'
    )
  errors = _standard_errors(best.jac, best.fun, len(free_spec))
  for i, name in enumerate(names):
    if best.x[i] - lower[i] < BOUND_MARGIN * span[i] or upper[i] - best.x[i] < BOUND_MARGIN * span[i]:
      unidentified[name] = f'at its bound ({values[name]:.4g})'
    elif not errors[i] < min(WIDE_ERROR * span[i], math.log(10) if free_spec[i][1] == 'log' else abs(best.x[i])):
      unit = ' in log' if free_spec[i][1] == 'log' else ''
      unidentified[name] = (
        f'not constrained by the data (standard error {errors[i]:.3g}{unit} over a search range of {span[i]:.3g})'
      )
  notes += [f'{name}: {why}: not identified by this data' for name, why in unidentified.items()]
  ci = {}
  if bootstrap:
    rng = np.random.default_rng(seed)
    groups_rows = None if groups is None else [np.nonzero(groups == g)[0] for g in np.unique(groups)]
    samples = []
    for _ in range(bootstrap):
      resampled = (
        rng.integers(0, n_rows, n_rows)
        if groups is None
        else np.concatenate([rng.choice(members, len(members)) for members in groups_rows])
      )
      with np.errstate(all='ignore'):
        refit = optimize.least_squares(
          lambda th, resampled=resampled: free_residuals(th, resampled),
          best.x,
          **dict(options, max_nfev=20 * len(free_spec)),
        )
      samples.append(refit.x)
    if derived is not None:
      extra = np.array([list(derived(natural(expand(x), spec)).values()) for x in samples])
      for k, name in enumerate(derived(values)):
        ci[name] = [float(v) for v in np.percentile(extra[:, k], [2.5, 97.5])]
    samples = np.array(samples)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    for i, (name, transform) in enumerate((s[0], s[1]) for s in free_spec):
      lo, hi = (math.exp(low[i]), math.exp(high[i])) if transform == 'log' else (float(low[i]), float(high[i]))
      ci[name] = [lo, hi]
      value = values[name]
      if low[i] - lower[i] < 1e-6 * span[i] or upper[i] - high[i] < 1e-6 * span[i]:
        notes.append(f'{name}: 95% CI [{lo:.3g}, {hi:.3g}] reaches a bound of the search: not identified')
      elif transform == 'log' and high[i] - low[i] > math.log(100):
        notes.append(f'{name}: 95% CI [{lo:.3g}, {hi:.3g}] spans over two orders of magnitude')
      elif transform != 'log' and hi - lo > 10 * max(abs(value), 1e-3):
        notes.append(f'{name}={value:.3g}: 95% CI [{lo:.3g}, {hi:.3g}] is over ten times its size')
  params = dict(values)
  if derived is not None:
    params.update(derived(params))
  return FitResult(
    params,
    tuple(s[0] for s in spec),
    tuple(spec),
    ci,
    best.fun,
    notes,
    unidentified,
    fixed,
    float(best.cost),
    {name: float(e) for name, e in zip(names, errors, strict=False)},
  )
