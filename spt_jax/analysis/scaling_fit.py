"""Fits of the overfitting scaling laws (eqs. 1-9) and of the finetuning delta (eq. 7) to observed runs.

Objective: by default the paper's mean squared error (Appendix D.1: scipy, MSE of the domain train and test
losses in nats); `loss='huber'` minimises a Huber loss (scale `huber`) of log losses instead, robust to a few
bad evaluations. Both give bootstrap 95% intervals (rows resampled within each δ).
Sign conditions (§5.1) are bounds of the search: b_train_s = b_train_g + b_train_ds with b_train_g ≤ 0
and b_train_ds ≤ 0 (so b_train_s ≤ b_train_g ≤ 0: |b_g| ≤ |b_s|), and b_gap_g ≤ 0 ≤ b_gap_s; the result is
checked again (`JointFit.sign_conditions`, a warning when one holds only at its bound). δ is a fraction and T is
tokens / TOKENS_UNIT (1e9) inside every formula. max_delta / max_tokens fit a subset of the runs, to test forecasts
on the rest (forecast_check.py).

Order, as Appendix D.1: the per-run fits (8)-(9) first (shared exponents, a free C_δ and A_δ per δ, several
starts), then eqs. (5)-(6) fitted to their C_δ and A_δ give the starts of the joint fit (1)-(6). A joint
parameter the free fit leaves at a bound is fixed at a documented value (FIXABLE) and the law refitted, one at a
time, unless fixing it raises the cost significantly (a likelihood-ratio test): then
the data do place it, and it stays free, reported as weakly identified; so is one that the data leave loose but
inside its range, and one that cannot be fixed.
fit.json says which (`identification`).
"""

import dataclasses
import math

import numpy as np
from scipy import optimize

from spt_jax.analysis import law_shape, scaling
from spt_jax.analysis.fitting import FitResult, natural, robust_fit, to_theta
from spt_jax.analysis.scaling import (
  DELTA_UNIT,
  JOINT_NAMES,
  JOINT_PARAMS,
  TOKENS_UNIT,
  exponent,
  gap_coefficient,
  offset_c,
  power,
)

LOSSES = ('mse', 'huber')
# The search space: the law's parameters with b_train_s replaced by b_train_ds = b_train_s − b_train_g ≤ 0, and the
# gap exponents by b_gap(δ) itself where the paper reads it: the paper's fitted b_gap stays in (0, 1) from 1% to 10%
# (§5.1, sublinear overfitting), so b_gap(10%) is fitted in [0, 1] and b_gap_g as a share in [0, 1] of its lowest
# value −b_gap(10%)/9, at which b_gap(1%) = 0. Eq. (4) is linear in δ, so b_gap(δ) is then in [0, 1] on all of
# [1%, 10%], b_gap_g ≤ 0 ≤ b_gap_s, and b_gap_s = (b_gap(10%) − 0.9·b_gap_g) / 0.1. With 1% noise the gap of δ ≤ 5%
# alone leaves the tilt of b_gap(δ) loose (b_gap_g trades off with α2, α3): without both ends a fit on δ ≤ 5% tilts
# b_gap(δ) from below 0 at 1% to above 1 at 10%, at a lower cost than the generating law, and overshoots every
# larger δ. A fit that ends at either end is reported (`identification`): there the paper's range, not the data,
# sets the exponent.
GAP_REFERENCE_DELTA = 0.1
GAP_LOW_DELTA = 0.01
FIT_SPEC = tuple(
  ('b_train_ds', 'linear', -20.0, 0.0, 'b_train_s − b_train_g (≤ 0: |b_train_s| ≥ |b_train_g|)')
  if p[0] == 'b_train_s'
  else ('b_gap_10', 'linear', 0.0, 1.0, "b_gap(δ = 10%), in [0, 1] as in the paper's fits")
  if p[0] == 'b_gap_s'
  else ('b_gap_g_share', 'linear', 0.0, 1.0, 'b_gap_g over its lowest value −b_gap(10%)/9 (1: b_gap(1%) = 0)')
  if p[0] == 'b_gap_g'
  else p
  for p in JOINT_PARAMS
)
FITTED_AS = {'b_train_s': 'b_train_ds', 'b_gap_s': 'b_gap_10', 'b_gap_g': 'b_gap_g_share'}  # Law name: fitted name.
MIN_FINETUNE_POINTS = 5  # Finetuned checkpoints a δ needs for its own Δ = a·T^b + c (eq. 7): 3 parameters.
MIN_SHARED_POINTS = 3  # With 3-4, a δ fits a_δ and c_δ with an exponent shared by all such δ; fewer: a constant.
# Joint parameters that the δs given may not identify, the value each is fixed at then, and why that value:
# α3 and κ3 add a term in δ that α2 and κ1 already nearly make on a handful of δ; κ2 only bends log(δ + κ2) below
# the smallest positive δ, where no run is.
FIXABLE = (
  ('alpha3', lambda deltas: 0.0, 'eq. (5) without its exponential factor: A_gap = α1·δ^α2'),
  ('kappa3', lambda deltas: 0.0, 'eq. (6) without its linear term: C = κ0 − κ1·log(δ + κ2)'),
  (
    'kappa2',
    lambda deltas: float(np.min(deltas[deltas > 0])),
    'the smallest positive δ fitted, where log(δ + κ2) bends',
  ),
)
CHI2_1_95 = 3.84  # 95% point of χ² with 1 degree of freedom: the largest rise in cost a fixing may cause.


@dataclasses.dataclass(frozen=True)
class Parameter:
  """A fitted parameter: its value, bootstrap 95% interval (None without a bootstrap), meaning and status."""

  value: float
  ci95: list | None
  meaning: str
  identification: str = ''  # Joint parameters: identified, fixed at a value, weakly identified (why).


@dataclasses.dataclass(frozen=True)
class FinetuneDelta:
  """Eq. (7) at one δ: Δ(T) = a·T^b + c, how it was fitted, and from how many finetuned checkpoints."""

  abc: list
  ci95: dict | None
  n_points: int
  method: str
  rms_residual: float | None = None  # None for the constant fallback.

  def to_json(self) -> dict:
    record = dataclasses.asdict(self)
    if self.rms_residual is None:
      del record['rms_residual']
    return record


@dataclasses.dataclass(frozen=True)
class Residuals:
  """How far the joint fit lies from its points (log: of log losses; RMS over train, test, each δ)."""

  rms_log_train: float
  rms_log_test: float
  rms_train: float
  rms_test: float
  max_abs_log: float
  rms_log_by_delta: dict
  n_points: int


@dataclasses.dataclass(frozen=True)
class JointFit:
  """What fit_joint found: the law, each parameter with its interval and status, eq. (7) per δ, diagnostics."""

  law: scaling.ScalingLaw
  objective: str  # 'mse' or 'huber'.
  huber: float  # The Huber loss's scale (objective 'huber').
  params: dict  # Law parameter name -> Parameter.
  per_run: dict  # Per-run fit (8)-(9) parameter name -> Parameter (value and meaning).
  finetune_delta: dict  # δ -> FinetuneDelta.
  residuals: Residuals
  warnings: list
  shape: list  # law_shape.DeltaShape per δ fitted: the data's own shape.

  @property
  def sign_conditions(self) -> dict:
    """§5.1's conditions -> whether the fitted law meets them."""
    return scaling.sign_conditions(self.law.params)

  @property
  def objective_text(self) -> str:
    if self.objective == 'mse':
      return "mean squared error of the losses (the paper's, App. D.1)"
    return f'Huber (scale {self.huber:g}) on log losses'

  def to_json(self) -> dict:
    """fit.json: every field, with the units each number is in."""
    law = self.law
    return {
      'law': "domain loss during SPT, eqs. (1)-(6) of The Finetuner's Fallacy; finetuning delta eq. (7)",
      'units': {
        'delta': 'a fraction inside the formulas (δ=0.02 is 2%), as every input and key of this file',
        'tokens': f'T = tokens / {law.tokens_unit:g} inside the formulas (fixed for every fit)',
        'losses': 'nats per token',
        'fit': f'{self.objective_text}, scipy least_squares with the sign conditions as bounds',
      },
      'objective': self.objective,
      'tokens_unit': law.tokens_unit,
      'delta_unit': DELTA_UNIT,
      'fitted_on': dict(law.fitted_on),
      'fitted_deltas': list(law.fitted_deltas),
      'token_range': list(law.token_range),
      'params': {name: dataclasses.asdict(p) for name, p in self.params.items()},
      'identification': {name: p.identification for name, p in self.params.items()},
      'sign_conditions': dict(self.sign_conditions),
      'per_run': {name: {'value': p.value, 'meaning': p.meaning} for name, p in self.per_run.items()},
      'finetune_delta': {repr(float(k)): v.to_json() for k, v in self.finetune_delta.items()},
      'residuals': dataclasses.asdict(self.residuals),
      'shape': [dataclasses.asdict(s) for s in self.shape],
      'warnings': list(self.warnings),
    }


def _gap_exponents(b_gap_10, b_gap_g_share):
  """(b_gap_s, b_gap_g) from b_gap(10%) and the share of b_gap_g's range: eq. (4) solved for b_s and b_g."""
  ratio = GAP_LOW_DELTA / GAP_REFERENCE_DELTA  # b_gap(1%) = ratio·b_gap(10%) + (1 − ratio)·b_gap_g.
  b_gap_g = -b_gap_g_share * b_gap_10 * ratio / (1 - ratio)
  return (b_gap_10 - (1 - GAP_REFERENCE_DELTA) * b_gap_g) / GAP_REFERENCE_DELTA, b_gap_g


def _law_params(p: dict) -> dict:
  """The law's b_train_s, b_gap_s and b_gap_g from the fitted difference, reference exponent and share."""
  b_gap_s, b_gap_g = _gap_exponents(p['b_gap_10'], p['b_gap_g_share'])
  return {'b_train_s': p['b_train_g'] + p['b_train_ds'], 'b_gap_s': b_gap_s, 'b_gap_g': b_gap_g}


def _within(delta, tokens, max_delta, max_tokens) -> np.ndarray:
  keep = np.ones(len(delta), bool)
  if max_delta is not None:
    keep &= np.asarray(delta) <= max_delta + 1e-12
  if max_tokens is not None:
    keep &= np.asarray(tokens) <= max_tokens * (1 + 1e-12)
  return keep


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
  ft_before: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # Test loss before FT, if known.

  def subset(self, max_delta: float | None = None, max_tokens: float | None = None) -> 'ScalingData':
    """The rows with δ ≤ max_delta and T ≤ max_tokens (None: no limit), finetuning rows included."""
    keep = _within(self.delta, self.tokens, max_delta, max_tokens)
    ft = _within(self.ft_delta, self.ft_tokens, max_delta, max_tokens)
    before = self.ft_before[ft] if len(self.ft_before) == len(self.ft_delta) else self.ft_before[:0]
    return ScalingData(
      self.delta[keep],
      self.tokens[keep],
      self.train_loss[keep],
      self.test_loss[keep],
      self.ft_delta[ft],
      self.ft_tokens[ft],
      self.ft_drop[ft],
      before,
    )

  def validate(self, n_params: int = len(JOINT_PARAMS)) -> list:
    """One-line errors for data no fit can use; returns warnings for data a fit can use with care."""
    arrays = [np.asarray(a, float) for a in (self.delta, self.tokens, self.train_loss, self.test_loss)]
    if len({a.shape for a in arrays}) != 1:
      raise ValueError('delta, tokens, train and test losses differ in length; pass one value of each per point')
    if np.any(~np.isfinite(np.concatenate(arrays))):
      raise ValueError('NaN or infinite values in the scaling data; drop those rows (or the diverged runs)')
    if np.any(self.delta > 1):
      raise ValueError(f'δ up to {np.max(self.delta):g} > 1: δ must be a fraction (0.02 for 2%), not percent')
    if (
      np.any(self.delta < 0) or np.any(self.tokens <= 0) or np.any(self.train_loss <= 0) or np.any(self.test_loss <= 0)
    ):
      raise ValueError('δ must be ≥ 0 and tokens and losses > 0; drop the step-0 evaluation and bad rows')
    if len(self.delta) < n_params + 1:
      raise ValueError(
        f'{len(self.delta)} points cannot fit {n_params} parameters; give at least '
        f'{n_params + 1} (more evaluations per run, or more runs, or a wider max_delta/max_tokens)'
      )
    notes = []
    distinct = np.unique(self.delta)
    if len(distinct) < 2:
      raise ValueError(f'all points have δ={distinct[0]:g}; the law over δ needs runs at several δ (≥ 4 advised)')
    if len(distinct) < 4:
      notes.append(
        f'only {len(distinct)} distinct δ: eqs. (5)-(6) have 3-4 parameters each and are '
        'barely identified; add runs at more δ'
      )
    return notes


def check_finite_ft(data: ScalingData) -> None:
  if len(data.ft_drop) and np.any(~np.isfinite(np.concatenate([data.ft_delta, data.ft_tokens, data.ft_drop]))):
    raise ValueError('NaN in the finetuning observations; drop those finetunes (diverged or missing evals)')


def _residuals(train, test, observed_train, observed_test, loss: str) -> np.ndarray:
  """MSE: differences of losses (nats); Huber: differences of log losses."""
  if loss == 'mse':
    return np.concatenate([train - observed_train, test - observed_test])
  return np.concatenate(
    [np.log(np.maximum(train, 1e-12)) - np.log(observed_train), np.log(np.maximum(test, 1e-12)) - np.log(observed_test)]
  )


def _joint_residuals(theta, delta, t, train_obs, test_obs, loss):
  p = natural(theta, FIT_SPEC)
  p.update(_law_params(p))
  train = p['A_train'] * power(t, exponent(p['b_train_s'], p['b_train_g'], delta)) + offset_c(p, delta)
  test = train + gap_coefficient(p, delta) * power(t, exponent(p['b_gap_s'], p['b_gap_g'], delta))
  return _residuals(train, test, train_obs, test_obs, loss)


PER_RUN_SHARED = tuple(FIT_SPEC[i] for i in (0, 1, 2, 10, 11))  # A_train, b_train_ds, b_train_g, b_gap_10, share


def _per_run_spec(deltas):
  spec = list(PER_RUN_SHARED)
  for d in deltas:
    spec.append((f'C[{100 * d:g}%]', 'linear', -50.0, 50.0, f'train offset C_δ at δ={100 * d:g}% (eq. 8)'))
  for d in deltas[deltas > 0]:  # At δ = 0 the domain set is unseen: no gap (eq. 5 is 0 there too).
    spec.append((f'A_gap[{100 * d:g}%]', 'log', 1e-12, 1e4, f'gap coefficient A_δ at δ={100 * d:g}% (eq. 9)'))
  return tuple(spec)


def _per_run_residuals(theta, delta, t, train_obs, test_obs, index, n_runs, loss):
  log_a, b_train_ds, b_train_g, b_gap_10, b_gap_g_share = theta[:5]
  b_gap_s, b_gap_g = _gap_exponents(b_gap_10, b_gap_g_share)
  offsets = theta[5 : 5 + n_runs]
  gaps = np.zeros(n_runs)
  gaps[n_runs - (len(theta) - 5 - n_runs) :] = np.exp(theta[5 + n_runs :])
  train = np.exp(log_a) * power(t, exponent(b_train_g + b_train_ds, b_train_g, delta)) + offsets[index]
  test = train + gaps[index] * power(t, exponent(b_gap_s, b_gap_g, delta))
  return _residuals(train, test, train_obs, test_obs, loss)


def fit_per_run(data: ScalingData, loss: str = 'mse', huber: float = 1e-2, seed: int = 0) -> FitResult:
  """Eqs. (8)-(9): shared A_train and exponents, a free offset C_δ and gap coefficient A_δ per δ."""
  deltas = np.unique(data.delta)
  index = np.searchsorted(deltas, data.delta)
  spec = _per_run_spec(deltas)
  t = data.tokens / TOKENS_UNIT
  args = (data.delta, t, data.train_loss, data.test_loss, index)
  starts = []
  for b0 in (-0.05, -0.2, -0.5):
    for fraction in (0.5, 0.9):
      # b_s start: b(δ) = δ·b_s + (1 − δ)·b_g with b_s the exponent at δ = 1, ten times b_g for train; the gap's
      # b_gap(10%) and b_gap_g halfway in their ranges (b_gap turns positive near 0.5%).
      x = {'A_train': 1.0, 'b_train_ds': -10 * abs(b0), 'b_train_g': b0, 'b_gap_10': 0.4, 'b_gap_g_share': 0.5}
      for d in deltas:
        mask = data.delta == d
        x[f'C[{100 * d:g}%]'] = fraction * float(np.min(data.train_loss[mask]))
        if d > 0:
          x[f'A_gap[{100 * d:g}%]'] = max(float(np.mean(data.test_loss[mask] - data.train_loss[mask])), 1e-6)
        x['A_train'] = max(float(np.median(data.train_loss[mask])) * (1 - fraction), 1e-3)
      starts.append(to_theta(x, spec))

  def residuals(theta, rows):
    return _per_run_residuals(theta, *(a[rows] for a in args), len(deltas), loss)

  return robust_fit(
    residuals,
    starts,
    spec,
    len(data.delta),
    huber=huber if loss == 'huber' else None,
    seed=seed,
    bootstrap=0,
    derived=_law_params,
  )


def _init_from_per_run(per_run: dict, deltas) -> list:
  """Starting points of the joint fit: eqs. (5)-(6) fitted to the per-run coefficients (Appendix D.1)."""
  offsets = np.array([per_run[f'C[{100 * d:g}%]'] for d in deltas])
  gaps = np.array([per_run.get(f'A_gap[{100 * d:g}%]', 0.0) for d in deltas])
  starts = []
  for kappa2 in (0.001, 0.01):
    c_fit = optimize.least_squares(
      lambda k, kappa2=kappa2: k[0] - k[1] * np.log(deltas + kappa2) - k[2] * deltas - offsets, np.zeros(3)
    )
    positive = deltas > 0
    if np.sum(positive) >= 3:
      a_fit = optimize.least_squares(
        lambda a, positive=positive: (
          a[0] + a[1] * np.log(deltas[positive]) + a[2] * deltas[positive] - np.log(gaps[positive])
        ),
        np.array([0.0, 1.0, 0.0]),
        bounds=([-27, 0, -2000], [27, 10, 2000]),
      ).x
    else:
      a_fit = np.array([np.log(max(np.mean(gaps), 1e-8)), 1.0, 0.0])
    k0, k1, k3 = c_fit.x
    starts.append(
      dict(
        A_train=per_run['A_train'],
        b_train_ds=per_run['b_train_ds'],
        b_train_g=per_run['b_train_g'],
        kappa0=k0,
        kappa1=k1,
        kappa2=kappa2,
        kappa3=k3,
        alpha1=math.exp(a_fit[0]),
        alpha2=a_fit[1],
        alpha3=a_fit[2],
        b_gap_10=per_run['b_gap_10'],
        b_gap_g_share=per_run['b_gap_g_share'],
      )
    )
  return starts


def _sign_notes(params: dict, deltas) -> list:
  notes = [
    f"sign condition {name} fails or holds only at its bound: the data do not show the paper's shape"
    for name, holds in scaling.sign_conditions(params).items()
    if not holds
  ]
  for d in deltas:
    b_gap = exponent(params['b_gap_s'], params['b_gap_g'], d)
    if d > 0 and not 0 < b_gap < 1:
      notes.append(f"b_gap(δ={d:g}) = {b_gap:.3g} lies outside (0, 1), where the paper's fits keep it up to δ=10%")
  return notes


def fit_joint(
  data: ScalingData,
  loss: str = 'mse',
  huber: float = 1e-2,
  bootstrap: int = 100,
  seed: int = 0,
  max_delta: float | None = None,
  max_tokens: float | None = None,
) -> JointFit:
  """The joint fit (1)-(6), initialised from the per-run fits (8)-(9), with bootstrap CIs and diagnostics.

  loss: 'mse' (the paper's, on losses) or 'huber' (scale `huber`, on log losses). max_delta / max_tokens: fit
  only the rows (and finetunes) with δ ≤ max_delta and T ≤ max_tokens; the rest is left for forecast_check.
  """
  if loss not in LOSSES:
    raise ValueError(f'loss={loss!r} is unknown; use one of {", ".join(LOSSES)}')
  fitted_on = {'max_delta': max_delta, 'max_tokens': max_tokens}
  if max_delta is not None or max_tokens is not None:
    data = data.subset(max_delta, max_tokens)
  notes = data.validate()
  check_finite_ft(data)
  shape = law_shape.measure(data)
  per_run = fit_per_run(data, loss, huber, seed)
  deltas = np.unique(data.delta)
  rng = np.random.default_rng(seed)
  starts = [to_theta(s, FIT_SPEC) for s in _init_from_per_run(per_run.params, deltas)]
  for _ in range(4):  # Perturbed restarts around the data-driven start guard against its local minimum.
    starts.append(starts[0] + rng.normal(0, 0.3, size=len(FIT_SPEC)))
  args = (data.delta, data.tokens / TOKENS_UNIT, data.train_loss, data.test_loss)

  def joint_fit(fixed, samples, starts=starts):
    return robust_fit(
      lambda theta, rows: _joint_residuals(theta, *(a[rows] for a in args), loss),
      starts,
      FIT_SPEC,
      len(data.delta),
      huber=huber if loss == 'huber' else None,
      seed=seed,
      bootstrap=samples,
      groups=data.delta,
      derived=_law_params,
      fixed=fixed,
    )

  fixed, why_fixed, kept_free = {}, {}, {}
  joint = joint_fit(fixed, 0)
  while True:  # Fix the first fixable parameter left at a bound, refit, and look again.
    # Only a bound's value is the search's, not the data's: an interior value with a wide standard error is where
    # the data put the parameter (eq. 5's α3 is what carries the gap to δ beyond those fitted), so it stays there
    # and is reported as weakly identified; fixing it would replace a loose estimate with an arbitrary one.
    fixable = [
      (name, value(deltas), why)
      for name, value, why in FIXABLE
      if joint.unidentified.get(name, '').startswith('at its bound') and name not in fixed and name not in kept_free
    ]
    if not fixable:
      break
    name, value, why = fixable[0]
    candidate = joint_fit(dict(fixed, **{name: value}), 0)
    # A likelihood-ratio test of the fixing: the residual variance of the free fit scales the rise in cost; a rise
    # past the 95% point of χ²(1) means the data do put the parameter elsewhere, so fixing it would bend the law
    # away from them: it stays free and is reported as weakly identified instead.
    variance = 2 * joint.cost / max(2 * len(data.delta) - (len(FIT_SPEC) - len(fixed)), 1)
    rise = 2 * (candidate.cost - joint.cost) / max(variance, 1e-300)
    if rise > CHI2_1_95:
      kept_free[name] = (
        f'weakly identified ({joint.unidentified[name]}); kept free at {joint.params[name]:.4g}: '
        f'fixing it at {value:g} ({why}) raises the cost by χ² = {rise:.3g} > {CHI2_1_95}'
      )
      continue
    fixed[name] = value
    why_fixed[name] = f'fixed at {value:g} ({why}): the free fit left it {joint.unidentified[name]}'
    joint = candidate
  if bootstrap:  # From the optimum found: the same fit, now with its bootstrap.
    joint = joint_fit(fixed, bootstrap, [to_theta(joint.params, FIT_SPEC)])
  identification = {}
  for name in JOINT_NAMES:  # b_train_s is fitted as b_train_ds: it takes that parameter's status, named.
    fitted_name = FITTED_AS.get(name, name)
    status = (
      why_fixed.get(fitted_name)
      or kept_free.get(fitted_name)
      or (f'unidentified: {joint.unidentified[fitted_name]}' if fitted_name in joint.unidentified else 'identified')
    )
    if status != 'identified' and fitted_name != name:
      status += f' (of {fitted_name}, which it is fitted as)'
    identification[name] = status
  fix_notes = [f'{name} {why}' for name, why in {**why_fixed, **kept_free}.items()]
  finetune, ft_notes = fit_finetune_delta(data, bootstrap, seed)
  law = scaling.ScalingLaw(
    {k: joint.params[k] for k in JOINT_NAMES},
    TOKENS_UNIT,
    {k: tuple(v.abc) for k, v in finetune.items()},
    tuple(float(d) for d in np.unique(data.delta)),
    (float(np.min(data.tokens)), float(np.max(data.tokens))),
    fitted_on,
  )
  train, test = law.train_loss(data.delta, data.tokens), law.test_loss(data.delta, data.tokens)
  log_residual = _residuals(train, test, data.train_loss, data.test_loss, 'huber')
  residual = _residuals(train, test, data.train_loss, data.test_loss, 'mse')
  n = len(data.delta)
  by_delta = {}
  for d in np.unique(data.delta):
    mask = np.concatenate([data.delta == d, data.delta == d])
    by_delta[f'{d:g}'] = float(np.sqrt(np.mean(log_residual[mask] ** 2)))
  return JointFit(
    law=law,
    objective=loss,
    huber=huber,
    params={
      name: Parameter(joint.params[name], joint.ci.get(name), meaning, identification[name])
      for name, _, _, _, meaning in JOINT_PARAMS
    },
    per_run={
      name: Parameter(per_run.params[name], None, spec[4])
      for name, spec in zip(per_run.names, per_run.spec, strict=False)
    },
    finetune_delta=finetune,
    residuals=Residuals(
      rms_log_train=float(np.sqrt(np.mean(log_residual[:n] ** 2))),
      rms_log_test=float(np.sqrt(np.mean(log_residual[n:] ** 2))),
      rms_train=float(np.sqrt(np.mean(residual[:n] ** 2))),
      rms_test=float(np.sqrt(np.mean(residual[n:] ** 2))),
      max_abs_log=float(np.max(np.abs(log_residual))),
      rms_log_by_delta=by_delta,
      n_points=n,
    ),
    shape=shape,
    warnings=(
      notes
      + law_shape.notes(shape)
      + fix_notes
      + _sign_notes(law.params, law.fitted_deltas)
      + joint.warnings
      + [f'per-run fit (8)-(9): {w}' for w in per_run.warnings]
      + ft_notes
    ),
  )


def _power_fit(t, drop, groups, n_groups, bootstrap, seed, shared: bool):
  """Δ = a_k·T^b_k + c_k per group k, or with one b shared by all groups (shared=True)."""
  spec = [('b', 'linear', -5.0, 5.0, 'exponent of T shared by all δ')] if shared else []
  for k in range(n_groups):
    if not shared:
      spec.append((f'b[{k}]', 'linear', -5.0, 5.0, f'exponent of T of group {k}'))
    spec += [
      (f'a[{k}]', 'linear', -100.0, 100.0, f'coefficient of group {k}'),
      (f'c[{k}]', 'linear', -10.0, 10.0, f'offset of group {k}'),
    ]
  width = 2 if shared else 3

  def unpack(theta):
    body = theta[1:] if shared else theta
    a, c = body[width - 2 :: width], body[width - 1 :: width]
    b = np.full(n_groups, theta[0]) if shared else body[0::3]
    return a, b, c

  def residuals(theta, rows):
    a, b, c = unpack(theta)
    k = groups[rows]
    return a[k] * power(t[rows], b[k]) + c[k] - drop[rows]

  starts = []
  for b0 in (-1.0, -0.3, 0.3):
    x = [b0] if shared else []
    for k in range(n_groups):  # Given b, a and c are linear: start them at their least-squares values.
      rows = groups == k
      design = np.stack([t[rows] ** b0, np.ones(np.sum(rows))], axis=1)
      x += ([] if shared else [b0]) + list(np.linalg.lstsq(design, drop[rows], rcond=None)[0])
    starts.append(np.clip(np.array(x), -9.0, 9.0))
  result = robust_fit(residuals, starts, tuple(spec), len(t), huber=None, seed=seed, bootstrap=bootstrap, groups=groups)
  a, b, c = unpack(np.array([result.params[s[0]] for s in spec]))
  return a, b, c, result


def fit_finetune_delta(data: ScalingData, bootstrap: int = 100, seed: int = 0, min_points: int = MIN_FINETUNE_POINTS):
  """Eq. (7): Δ(T) = a_δ·T^b_δ + c_δ fitted per δ where a δ has ≥ min_points (5) finetuned checkpoints.

  Three parameters are never fitted to fewer points (their bootstrap intervals would collapse). Fallbacks, each
  named in the entry's 'method' and in a warning: a δ with 3-4 checkpoints fits only its a_δ and c_δ, with an
  exponent shared by every δ with 3 or more (fitted jointly); 1-2 checkpoints give a constant Δ (their mean).
  Bootstrap intervals resample the checkpoints within each δ.
  Returns ({δ: FinetuneDelta}, warnings). T is tokens / TOKENS_UNIT.
  """
  results, notes = {}, []
  if not len(data.ft_drop):
    return results, notes
  deltas = np.unique(data.ft_delta)
  for d in deltas:
    drop = data.ft_drop[data.ft_delta == d]
    if np.any(drop < 0):
      notes.append(
        f'δ={d:g}: finetuning raised the domain test loss at {int(np.sum(drop < 0))} checkpoint(s); '
        'early stopping should keep Δ ≥ 0: check the finetune evals'
      )
  counts = {float(d): int(np.sum(data.ft_delta == d)) for d in deltas}
  t_all = data.ft_tokens / TOKENS_UNIT
  for d in deltas:
    rows = data.ft_delta == d
    if counts[float(d)] < min_points:
      continue
    a, b, c, result = _power_fit(
      t_all[rows], data.ft_drop[rows], np.zeros(int(np.sum(rows)), int), 1, bootstrap, seed, shared=False
    )
    ci = {'a': result.ci.get('a[0]'), 'b': result.ci.get('b[0]'), 'c': result.ci.get('c[0]')}
    results[float(d)] = FinetuneDelta(
      [float(a[0]), float(b[0]), float(c[0])],
      ci,
      counts[float(d)],
      'per-δ fit of a·T^b + c (eq. 7)',
      float(np.sqrt(np.mean(result.residuals**2))),
    )
    if result.warnings:
      names = sorted({w.split(':')[0].split(' ')[0].split('=')[0] for w in result.warnings})
      notes.append(
        f'finetuning delta (eq. 7) at δ={d:g}: {", ".join(names)} weakly identified by '
        f'{counts[float(d)]} checkpoints; Δ far beyond the fitted T is uncertain'
      )
  few = [d for d in deltas if counts[float(d)] < min_points]
  pairs = [d for d in deltas if counts[float(d)] >= MIN_SHARED_POINTS]
  borrowing = [d for d in few if counts[float(d)] >= MIN_SHARED_POINTS]
  if borrowing:
    mask = np.isin(data.ft_delta, pairs)
    groups = np.searchsorted(np.array(pairs), data.ft_delta[mask])
    if np.sum(mask) >= 2 * len(pairs) + 2:
      a, b, c, result = _power_fit(t_all[mask], data.ft_drop[mask], groups, len(pairs), bootstrap, seed, shared=True)
      for d in borrowing:
        k = pairs.index(d)
        results[float(d)] = FinetuneDelta(
          [float(a[k]), float(b[k]), float(c[k])],
          {'b': result.ci.get('b')},
          counts[float(d)],
          'fallback: exponent shared by all δ',
          float(np.sqrt(np.mean(result.residuals**2))),
        )
      notes.append(
        f'finetuning delta (eq. 7): δ={", ".join(f"{d:g}" for d in borrowing)} have fewer than '
        f'{min_points} finetuned checkpoints; fitted a_δ and c_δ only, with the exponent '
        f'b={float(b[0]):.3g} shared by every δ with {MIN_SHARED_POINTS} or more (finetune more '
        'pretraining checkpoints for a per-δ fit)'
      )
    else:
      few += borrowing
      borrowing = []
  for d in few:
    if float(d) in results:
      continue
    results[float(d)] = FinetuneDelta(
      [0.0, 0.0, float(np.mean(data.ft_drop[data.ft_delta == d]))],
      None,
      counts[float(d)],
      'fallback: constant (mean Δ)',
    )
    notes.append(
      f'δ={d:g}: {counts[float(d)]} finetuned checkpoint(s) cannot show how Δ changes with T; using '
      'a constant Δ (finetune more pretraining checkpoints)'
    )
  return results, notes
