"""Overfitting scaling laws of the domain loss during SPT (eqs. 1-9) and the finetuning delta (eq. 7).

Units. Every public function takes δ as a fraction (0.02 for 2%) and T as a raw token count. Inside the
formulas δ is in percent (the paper's convention: b(δ) = δ·b_s + (1 − δ)·b_g with δ = 2 for 2%) and T is
tokens / tokens_unit, where tokens_unit is a power of ten near the geometric mean of the observed budgets
(1e9 for paper-scale runs), so that the coefficient A and the exponent b of T^b are not correlated by scale.
Fits minimise a Huber loss on log-predictions against log-observations of the domain train and test losses.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize

from spt_jax.analysis.fitting import FitResult, natural, robust_fit, to_theta


# Joint law (1)-(6): name, transform, lower, upper (in natural units), meaning.
JOINT_PARAMS = (
    ('A_train', 'log', 1e-8, 1e4, 'train-loss power-law coefficient, shared by all δ (eq. 1)'),
    ('b_train_s', 'linear', -5.0, 5.0, 'train exponent utility of specialized data, per percent δ (eq. 4)'),
    ('b_train_g', 'linear', -5.0, 5.0, 'train exponent utility of general data (eq. 4)'),
    ('kappa0', 'linear', -50.0, 50.0, 'train offset C(δ) = κ0 − κ1·log(δ + κ2) − κ3·δ: constant (eq. 6)'),
    ('kappa1', 'linear', -20.0, 20.0, 'train offset: log coefficient (eq. 6)'),
    ('kappa2', 'log', 1e-4, 1e3, 'train offset: shift of δ inside the log, percent (eq. 6)'),
    ('kappa3', 'linear', -20.0, 20.0, 'train offset: linear coefficient per percent δ (eq. 6)'),
    ('alpha1', 'log', 1e-10, 1e4, 'gap coefficient A_gap(δ) = α1·δ^α2·exp(α3·δ): scale (eq. 5)'),
    ('alpha2', 'linear', 0.0, 10.0, 'gap coefficient: power of δ (eq. 5)'),
    ('alpha3', 'linear', -20.0, 20.0, 'gap coefficient: exponential rate per percent δ (eq. 5)'),
    ('b_gap_s', 'linear', -5.0, 5.0, 'gap exponent utility of specialized data, per percent δ (eq. 4)'),
    ('b_gap_g', 'linear', -5.0, 5.0, 'gap exponent utility of general data (eq. 4)'),
)
JOINT_NAMES = tuple(p[0] for p in JOINT_PARAMS)


def tokens_unit_for(tokens) -> float:
  """A power of ten near the geometric mean of the observed budgets."""
  return float(10.0 ** round(float(np.mean(np.log10(np.asarray(tokens, float))))))


def offset_c(p: dict, delta_pct):
  """Eq. (6): the train-loss offset C(δ), δ in percent."""
  return p['kappa0'] - p['kappa1'] * np.log(delta_pct + p['kappa2']) - p['kappa3'] * delta_pct


def gap_coefficient(p: dict, delta_pct):
  """Eq. (5): the gap coefficient A_gap(δ), δ in percent."""
  with np.errstate(divide='ignore', invalid='ignore'):
    power = np.where(np.asarray(delta_pct) > 0, np.power(np.maximum(delta_pct, 1e-300), p['alpha2']),
                     1.0 if p['alpha2'] == 0 else 0.0)
  return p['alpha1'] * power * np.exp(p['alpha3'] * delta_pct)


def exponent(s: float, g: float, delta_pct):
  """Eq. (4): b(δ) = δ·b_s + (1 − δ)·b_g, δ in percent."""
  return delta_pct * s + (1.0 - delta_pct) * g


@dataclasses.dataclass
class ScalingLaw:
  """A fitted (or generating) law: predicts domain losses at any (δ, T)."""
  params: dict
  tokens_unit: float = 1e9
  # Finetuning delta (eq. 7) per fitted δ (fraction): (a, b, c) of Δ = a·T^b + c, T in tokens_unit.
  finetune_delta: dict = dataclasses.field(default_factory=dict)
  fitted_deltas: tuple = ()
  token_range: tuple = ()

  def _x(self, delta, tokens):
    delta = np.asarray(delta, float)
    if np.any(delta > 1) or np.any(delta < 0):
      raise ValueError(f'δ={np.max(delta)} is not a fraction in [0, 1]; pass 0.02 for 2% (not 2)')
    return 100.0 * delta, np.asarray(tokens, float) / self.tokens_unit

  def train_loss(self, delta, tokens):
    """Eq. (1): domain train loss."""
    delta_pct, t = self._x(delta, tokens)
    p = self.params
    return p['A_train'] * t ** exponent(p['b_train_s'], p['b_train_g'], delta_pct) + offset_c(p, delta_pct)

  def gap(self, delta, tokens):
    """Eq. (2): domain train-test gap."""
    delta_pct, t = self._x(delta, tokens)
    p = self.params
    return gap_coefficient(p, delta_pct) * t ** exponent(p['b_gap_s'], p['b_gap_g'], delta_pct)

  def test_loss(self, delta, tokens):
    """Eq. (3): domain test loss after pretraining."""
    return self.train_loss(delta, tokens) + self.gap(delta, tokens)

  def delta_finetune(self, delta, tokens):
    """Eq. (7): predicted drop of the domain test loss from finetuning, and how it was obtained."""
    if not self.finetune_delta:
      return np.full(np.shape(tokens), np.nan), 'none: no finetuning data in the fit'
    keys = sorted(self.finetune_delta)
    t = np.asarray(tokens, float) / self.tokens_unit
    values = np.array([_power_offset(self.finetune_delta[k], t) for k in keys])
    if delta in self.finetune_delta:
      return values[keys.index(delta)], 'fitted'
    if delta < keys[0] or delta > keys[-1]:
      nearest = keys[0] if delta < keys[0] else keys[-1]
      return values[keys.index(nearest)], f'nearest fitted δ={nearest:g} (outside the fitted δ range)'
    return np.array([np.interp(delta, keys, column) for column in np.atleast_2d(values.T)]).reshape(
        np.shape(t)), 'interpolated in δ between fitted δ'

  def post_ft_loss(self, delta, tokens):
    """Predicted post-finetuning domain test loss: eq. (3) minus eq. (7)."""
    return self.test_loss(delta, tokens) - self.delta_finetune(delta, tokens)[0]

  def loss(self, objective: str, delta, tokens):
    """The loss a forecast optimises: 'test' (after pretraining) or 'post_ft' (after finetuning)."""
    if objective == 'post_ft':
      return self.post_ft_loss(delta, tokens)
    if objective == 'test':
      return self.test_loss(delta, tokens)
    raise ValueError(f'objective {objective!r} unknown; use test or post_ft')

  def to_json(self) -> dict:
    return {'params': dict(self.params), 'tokens_unit': self.tokens_unit,
            'finetune_delta': {repr(k): list(v) for k, v in self.finetune_delta.items()},
            'fitted_deltas': list(self.fitted_deltas), 'token_range': list(self.token_range)}

  @classmethod
  def from_json(cls, d: dict) -> 'ScalingLaw':
    params = {k: (v['value'] if isinstance(v, dict) else v) for k, v in d['params'].items()}
    missing = sorted(set(JOINT_NAMES) - set(params))
    if missing:
      raise ValueError(f'fit file lacks parameters {missing}; regenerate it with `python -m spt_jax.plan fit`')
    ft = {float(k): tuple(v['abc'] if isinstance(v, dict) else v) for k, v in d.get('finetune_delta', {}).items()}
    return cls(params, float(d['tokens_unit']), ft, tuple(d.get('fitted_deltas', ())),
               tuple(d.get('token_range', ())))


def _power_offset(abc, t):
  a, b, c = abc
  return a * np.asarray(t, float) ** b + c


@dataclasses.dataclass
class ScalingData:
  """Observations: one row per evaluated (run, step)."""
  delta: np.ndarray  # fraction
  tokens: np.ndarray
  train_loss: np.ndarray
  test_loss: np.ndarray
  # Optional eq. (7) observations: (delta, tokens, Δ = test loss before FT − best test loss after FT).
  ft_delta: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  ft_tokens: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  ft_drop: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

  def validate(self, n_params: int = len(JOINT_PARAMS)) -> list:
    """One-line errors for data no fit can use; returns warnings for data a fit can use with care."""
    arrays = [np.asarray(a, float) for a in (self.delta, self.tokens, self.train_loss, self.test_loss)]
    if len({a.shape for a in arrays}) != 1:
      raise ValueError('delta, tokens, train and test losses differ in length; pass one value of each per point')
    if np.any(~np.isfinite(np.concatenate(arrays))):
      raise ValueError('NaN or infinite values in the scaling data; drop those rows (or the diverged runs)')
    if np.any(self.delta > 1):
      raise ValueError(f'δ up to {np.max(self.delta):g} > 1: δ must be a fraction (0.02 for 2%), not percent')
    if np.any(self.delta < 0) or np.any(self.tokens <= 0) or np.any(self.train_loss <= 0) \
        or np.any(self.test_loss <= 0):
      raise ValueError('δ must be ≥ 0 and tokens and losses > 0; drop the step-0 evaluation and bad rows')
    if len(self.delta) < n_params + 1:
      raise ValueError(f'{len(self.delta)} points cannot fit {n_params} parameters; give at least '
                       f'{n_params + 1} (more evaluations per run, or more runs)')
    notes = []
    distinct = np.unique(self.delta)
    if len(distinct) < 2:
      raise ValueError(f'all points have δ={distinct[0]:g}; the law over δ needs runs at several δ (≥ 4 advised)')
    if len(distinct) < 4:
      notes.append(f'only {len(distinct)} distinct δ: eqs. (5)-(6) have 3-4 parameters each and are '
                   'barely identified; add runs at more δ')
    return notes


def check_finite_ft(data: ScalingData) -> None:
  if len(data.ft_drop) and np.any(~np.isfinite(np.concatenate([data.ft_delta, data.ft_tokens, data.ft_drop]))):
    raise ValueError('NaN in the finetuning observations; drop those finetunes (diverged or missing evals)')


def _joint_residuals(theta, delta_pct, t, log_train, log_test):
  p = natural(theta, JOINT_PARAMS)
  train = p['A_train'] * t ** exponent(p['b_train_s'], p['b_train_g'], delta_pct) + offset_c(p, delta_pct)
  test = train + gap_coefficient(p, delta_pct) * t ** exponent(p['b_gap_s'], p['b_gap_g'], delta_pct)
  return np.concatenate([np.log(np.maximum(train, 1e-12)) - log_train, np.log(np.maximum(test, 1e-12)) - log_test])


def _per_run_spec(deltas_pct):
  spec = [JOINT_PARAMS[i] for i in (0, 1, 2, 10, 11)]
  for d in deltas_pct:
    spec.append((f'C[{d:g}%]', 'linear', -50.0, 50.0, f'train offset C_δ at δ={d:g}% (eq. 8)'))
  for d in deltas_pct[deltas_pct > 0]:  # At δ = 0 the domain set is unseen: no gap (eq. 5 is 0 there too).
    spec.append((f'A_gap[{d:g}%]', 'log', 1e-12, 1e4, f'gap coefficient A_δ at δ={d:g}% (eq. 9)'))
  return tuple(spec)


def _per_run_residuals(theta, delta_pct, t, log_train, log_test, index, n_runs):
  p = theta[:5]
  offsets = theta[5:5 + n_runs]
  gaps = np.zeros(n_runs)
  gaps[n_runs - (len(theta) - 5 - n_runs):] = np.exp(theta[5 + n_runs:])
  train = np.exp(p[0]) * t ** exponent(p[1], p[2], delta_pct) + offsets[index]
  test = train + gaps[index] * t ** exponent(p[3], p[4], delta_pct)
  return np.concatenate([np.log(np.maximum(train, 1e-12)) - log_train, np.log(np.maximum(test, 1e-12)) - log_test])


def fit_per_run(data: ScalingData, tokens_unit: float, huber: float = 1e-2, seed: int = 0) -> FitResult:
  """Eqs. (8)-(9): shared A_train and exponents, a free offset C_δ and gap coefficient A_δ per δ."""
  deltas_pct = np.unique(100.0 * data.delta)
  index = np.searchsorted(deltas_pct, 100.0 * data.delta)
  spec = _per_run_spec(deltas_pct)
  t = data.tokens / tokens_unit
  args = (100.0 * data.delta, t, np.log(data.train_loss), np.log(data.test_loss), index, len(deltas_pct))
  starts = []
  for b0 in (-0.05, -0.2, -0.5):
    for fraction in (0.5, 0.9):
      x = {'A_train': 1.0, 'b_train_s': b0, 'b_train_g': b0, 'b_gap_s': 0.0, 'b_gap_g': 0.0}
      for d in deltas_pct:
        mask = 100.0 * data.delta == d
        x[f'C[{d:g}%]'] = fraction * float(np.min(data.train_loss[mask]))
        if d > 0:
          x[f'A_gap[{d:g}%]'] = max(float(np.mean(data.test_loss[mask] - data.train_loss[mask])), 1e-6)
        x['A_train'] = max(float(np.median(data.train_loss[mask])) * (1 - fraction), 1e-3)
      starts.append(to_theta(x, spec))
  return robust_fit(lambda theta, rows: _per_run_residuals(theta, *_take(args, rows)), starts, spec,
                    len(data.delta), huber=huber, seed=seed, bootstrap=0)


def _take(args, rows):
  *arrays, n_runs = args
  return tuple(a[rows] for a in arrays) + (n_runs,)


def _init_from_per_run(per_run: dict, deltas_pct) -> list:
  """Starting points of the joint fit: eqs. (5)-(6) fitted to the per-run coefficients (Appendix D.1)."""
  offsets = np.array([per_run[f'C[{d:g}%]'] for d in deltas_pct])
  gaps = np.array([per_run.get(f'A_gap[{d:g}%]', 0.0) for d in deltas_pct])
  starts = []
  for kappa2 in (0.1, 1.0):
    c_fit = optimize.least_squares(
        lambda k: k[0] - k[1] * np.log(deltas_pct + kappa2) - k[2] * deltas_pct - offsets, np.zeros(3))
    positive = deltas_pct > 0
    if np.sum(positive) >= 3:
      a_fit = optimize.least_squares(
          lambda a: a[0] + a[1] * np.log(deltas_pct[positive]) + a[2] * deltas_pct[positive]
          - np.log(gaps[positive]), np.array([0.0, 1.0, 0.0]), bounds=([-30, 0, -20], [10, 10, 20])).x
    else:
      a_fit = np.array([np.log(max(np.mean(gaps), 1e-8)), 1.0, 0.0])
    k0, k1, k3 = c_fit.x
    starts.append(dict(A_train=per_run['A_train'], b_train_s=per_run['b_train_s'],
                       b_train_g=per_run['b_train_g'], kappa0=k0, kappa1=k1, kappa2=kappa2, kappa3=k3,
                       alpha1=math.exp(a_fit[0]), alpha2=a_fit[1], alpha3=a_fit[2],
                       b_gap_s=per_run['b_gap_s'], b_gap_g=per_run['b_gap_g']))
  return starts


def fit_joint(data: ScalingData, huber: float = 1e-2, bootstrap: int = 100, seed: int = 0,
              tokens_unit: float | None = None) -> dict:
  """The joint fit (1)-(6), initialised from the per-run fits (8)-(9), with bootstrap CIs and diagnostics."""
  notes = data.validate()
  check_finite_ft(data)
  unit = tokens_unit or tokens_unit_for(data.tokens)
  per_run = fit_per_run(data, unit, huber, seed)
  deltas_pct = np.unique(100.0 * data.delta)
  rng = np.random.default_rng(seed)
  starts = [to_theta(s, JOINT_PARAMS) for s in _init_from_per_run(per_run.params, deltas_pct)]
  for _ in range(4):  # Perturbed restarts around the data-driven start guard against its local minimum.
    starts.append(starts[0] + rng.normal(0, 0.3, size=len(JOINT_PARAMS)))
  args = (100.0 * data.delta, data.tokens / unit, np.log(data.train_loss), np.log(data.test_loss))
  joint = robust_fit(lambda theta, rows: _joint_residuals(theta, *(a[rows] for a in args)), starts,
                      JOINT_PARAMS, len(data.delta), huber=huber, seed=seed, bootstrap=bootstrap,
                      groups=data.delta)
  finetune, ft_notes = fit_finetune_delta(data, unit, bootstrap, seed)
  law = ScalingLaw(joint.params, unit, {k: v['abc'] for k, v in finetune.items()},
                   tuple(float(d) for d in np.unique(data.delta)),
                   (float(np.min(data.tokens)), float(np.max(data.tokens))))
  residual = joint.residuals
  n = len(data.delta)
  by_delta = {}
  for d in np.unique(data.delta):
    mask = np.concatenate([data.delta == d, data.delta == d])
    by_delta[f'{d:g}'] = float(np.sqrt(np.mean(residual[mask] ** 2)))
  return {
      'law': 'domain loss during SPT, eqs. (1)-(6) of The Finetuner\'s Fallacy; finetuning delta eq. (7)',
      'units': {'delta': 'percent inside the formulas (δ=2 is 2%); every input and key of this file is a '
                         'fraction', 'tokens': f'T = tokens / {unit:g} inside the formulas',
                'losses': 'nats per token', 'fit': f'Huber (scale {huber:g}) on log loss, scipy least_squares'},
      'tokens_unit': unit, 'fitted_deltas': list(law.fitted_deltas), 'token_range': list(law.token_range),
      'params': {name: {'value': joint.params[name], 'ci95': joint.ci.get(name), 'meaning': meaning}
                 for name, _, _, _, meaning in JOINT_PARAMS},
      'per_run': {name: {'value': per_run.params[name], 'meaning': spec[4]}
                  for name, spec in zip(per_run.names, per_run.spec)},
      'finetune_delta': {repr(float(k)): v for k, v in finetune.items()},
      'residuals': {'rms_log_train': float(np.sqrt(np.mean(residual[:n] ** 2))),
                    'rms_log_test': float(np.sqrt(np.mean(residual[n:] ** 2))),
                    'max_abs_log': float(np.max(np.abs(residual))), 'rms_log_by_delta': by_delta,
                    'n_points': n},
      'warnings': notes + joint.warnings + [f'per-run fit (8)-(9): {w}' for w in per_run.warnings] + ft_notes,
  }


def fit_finetune_delta(data: ScalingData, tokens_unit: float, bootstrap: int = 100, seed: int = 0):
  """Eq. (7): Δ(T) = a_δ·T^b + c_δ, one exponent b shared by all δ (steadier than one per δ on few points).

  A δ with a single finetuned checkpoint gets a constant Δ (a = 0) and a warning.
  """
  results, notes = {}, []
  if not len(data.ft_drop):
    return results, notes
  deltas = np.unique(data.ft_delta)
  for d in deltas:
    drop = data.ft_drop[data.ft_delta == d]
    if np.any(drop < 0):
      notes.append(f'δ={d:g}: finetuning raised the domain test loss at {int(np.sum(drop < 0))} checkpoint(s); '
                   'early stopping should keep Δ ≥ 0: check the finetune evals')
  counts = np.array([np.sum(data.ft_delta == d) for d in deltas])
  trend = deltas[counts >= 2]
  for d in deltas[counts < 2]:
    notes.append(f'δ={d:g}: one finetuned checkpoint cannot show how Δ changes with T; using a constant Δ '
                 '(finetune more pretraining checkpoints)')
    results[float(d)] = {'abc': [0.0, 0.0, float(np.mean(data.ft_drop[data.ft_delta == d]))], 'ci95': None,
                         'n_points': 1}
  mask = np.isin(data.ft_delta, trend)
  spec = [('b', 'linear', -5.0, 5.0, 'exponent of T shared by all δ')]
  for d in trend:
    spec += [(f'a[{d:g}]', 'linear', -100.0, 100.0, f'coefficient at δ={d:g}'),
             (f'c[{d:g}]', 'linear', -10.0, 10.0, f'offset at δ={d:g}')]
  if len(trend) == 0 or np.sum(mask) < len(spec) + 1:
    if len(trend):
      notes.append(f'{int(np.sum(mask))} finetuned checkpoints cannot fit Δ = a·T^b + c at {len(trend)} δ; using '
                   'the mean Δ per δ (finetune more pretraining checkpoints)')
    for d in trend:
      results[float(d)] = {'abc': [0.0, 0.0, float(np.mean(data.ft_drop[data.ft_delta == d]))], 'ci95': None,
                           'n_points': int(np.sum(data.ft_delta == d))}
    return results, notes
  t = data.ft_tokens[mask] / tokens_unit
  drop = data.ft_drop[mask]
  index = np.searchsorted(trend, data.ft_delta[mask])

  def residuals(theta, rows):
    a, c = theta[1::2][index[rows]], theta[2::2][index[rows]]
    return a * t[rows] ** theta[0] + c - drop[rows]

  starts = []
  for b in (-1.0, -0.3, 0.3):
    x = [b]
    for k in range(len(trend)):
      # Given b, a and c are linear: start them at their least-squares values.
      rows = index == k
      design = np.stack([t[rows] ** b, np.ones(np.sum(rows))], axis=1)
      x += list(np.linalg.lstsq(design, drop[rows], rcond=None)[0])
    starts.append(np.clip(np.array(x), -9.0, 9.0))
  result = robust_fit(residuals, starts, tuple(spec), len(t), huber=None, seed=seed, bootstrap=bootstrap,
                      groups=index)
  if len(result.warnings) > 3:  # One line, not one per δ: the usual cause is the same a-c trade-off.
    names = [w.split(':')[0].split('=')[0] for w in result.warnings]
    notes.append(f'finetuning delta (eq. 7): wide or bounded CIs for {", ".join(names)}: the trend of Δ over T '
                 'is weakly identified; Δ forecasts far beyond the fitted T are uncertain')
  else:
    notes.extend(f'finetuning delta (eq. 7): {w}' for w in result.warnings)
  rms = float(np.sqrt(np.mean(result.residuals ** 2)))
  for d in trend:
    a, c = result.params[f'a[{d:g}]'], result.params[f'c[{d:g}]']
    ci = {k: result.ci.get(f'{k}[{d:g}]') for k in 'ac'} | {'b': result.ci.get('b')}
    results[float(d)] = {'abc': [a, result.params['b'], c], 'ci95': ci,
                         'n_points': int(np.sum(data.ft_delta == d)), 'rms_residual': rms}
  return results, notes


def law_from_fit(fit: dict) -> ScalingLaw:
  return ScalingLaw.from_json(fit)



def overfitting_onset(law: ScalingLaw, delta: float) -> float | None:
  """Tokens at which the domain test loss (eq. 3) at δ is lowest; None when the law never turns up at δ."""
  delta_pct = 100.0 * delta
  p = law.params
  b_train = exponent(p['b_train_s'], p['b_train_g'], delta_pct)
  b_gap = exponent(p['b_gap_s'], p['b_gap_g'], delta_pct)
  a_gap = float(gap_coefficient(p, delta_pct))
  if not (b_train < 0 < b_gap) or a_gap <= 0:
    return None
  # d/dT [A·T^b_train + A_gap·T^b_gap] = 0 has this closed form when b_train < 0 < b_gap.
  t = (-p['A_train'] * b_train / (a_gap * b_gap)) ** (1.0 / (b_gap - b_train))
  return float(t * law.tokens_unit)


def best_delta(law: ScalingLaw, tokens: float, objective: str = 'post_ft', delta_max: float | None = None,
               candidates=None) -> tuple:
  """(δ, loss) with the lowest forecast loss at a budget: among candidates, else over [0, delta_max]."""
  if candidates is not None:
    losses = [float(law.loss(objective, d, tokens)) for d in candidates]
    i = int(np.nanargmin(losses))
    return float(candidates[i]), losses[i]
  delta_max = delta_max if delta_max is not None else max(law.fitted_deltas or (0.1,))
  grid = np.linspace(0.0, delta_max, 201)
  losses = np.array([float(law.loss(objective, d, tokens)) for d in grid])
  i = int(np.nanargmin(losses))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  refined = optimize.minimize_scalar(lambda d: float(law.loss(objective, d, tokens)), bounds=(lo, hi),
                                     method='bounded', options={'xatol': 1e-6})
  if refined.success and refined.fun <= losses[i]:
    return float(refined.x), float(refined.fun)
  return float(grid[i]), float(losses[i])


def crossovers(law: ScalingLaw, delta_a: float, delta_b: float, token_range: tuple,
               objective: str = 'post_ft') -> list:
  """Budgets in token_range where the forecast losses of δ_a and δ_b cross, with which leads after."""
  log_t = np.linspace(math.log(token_range[0]), math.log(token_range[1]), 400)

  def difference(x):
    return float(law.loss(objective, delta_a, math.exp(x)) - law.loss(objective, delta_b, math.exp(x)))

  values = np.array([difference(x) for x in log_t])
  found = []
  for i in np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]:
    root = optimize.brentq(difference, log_t[i], log_t[i + 1], xtol=1e-10)
    found.append({'tokens': math.exp(root), 'better_after': delta_a if values[i + 1] < 0 else delta_b})
  return found


def forecast(law: ScalingLaw, delta: float, tokens: float) -> dict:
  """Every prediction of the law at one (δ, T)."""
  drop, how = law.delta_finetune(delta, tokens)
  train, gap = float(law.train_loss(delta, tokens)), float(law.gap(delta, tokens))
  result = {'delta': delta, 'tokens': tokens, 'train_loss': train, 'gap': gap, 'test_loss': train + gap,
            'finetune_delta': float(drop), 'post_ft_loss': train + gap - float(drop), 'finetune_delta_from': how}
  notes = []
  if law.fitted_deltas and not min(law.fitted_deltas) <= delta <= max(law.fitted_deltas):
    notes.append(f'δ={delta:g} is outside the fitted δ range [{min(law.fitted_deltas):g}, '
                 f'{max(law.fitted_deltas):g}]: extrapolated')
  notes += extrapolation_notes(law, tokens, result['post_ft_loss'])
  if notes:
    result['notes'] = notes
  return result


def extrapolation_notes(law: ScalingLaw, tokens: float, loss: float) -> list:
  """Why a forecast at T should not be trusted: beyond the fitted budgets, or a loss no model can have."""
  notes = []
  if law.token_range and tokens > law.token_range[1]:
    notes.append(f'T={tokens:.3g} is {tokens / law.token_range[1]:.3g}× the largest fitted budget: extrapolated')
  if not loss > 0:
    notes.append(f'the law predicts a loss of {loss:.3g} here: it does not hold this far from the data')
  return notes
