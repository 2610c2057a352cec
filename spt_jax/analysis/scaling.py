"""Overfitting scaling laws of the domain loss during SPT (eqs. 1-6) and the finetuning delta (eq. 7): the law.

This module holds the law and what it predicts (forecasts, overfitting onset, best δ, crossovers); the fits are
in scaling_fit.py and the out-of-sample check of a fit in forecast_check.py.

Units. Every public function takes δ as a fraction (0.02 for 2%) and T as a raw token count. Inside the
formulas δ is a fraction too, as in the paper's fits: eq. (4) b(δ) = δ·b_s + (1 − δ)·b_g is then a convex mix of
the exponents of specialized (δ = 1) and general (δ = 0) data. (In percent 1 − δ turns negative past 1% and the
sign bounds pin b_gap_s; fit.json records `delta_unit` and files of the percent form are refused.) T is
tokens / TOKENS_UNIT, with TOKENS_UNIT = 1e9 fixed for every fit. With A_train shared by all δ the unit is part
of the model family (A·(T/u)^b(δ) = A·u^-b(δ)·T^b(δ): changing u changes how the coefficient varies with δ), so a
unit chosen from the data would make fits of different runs different laws; 1e9 is the paper's scale (billions
of tokens) and CPU-scale runs use the same unit (T ≈ 1e-3 there).

Sign conditions (§5.1), enforced as bounds of the fit and checked after it (`sign_conditions`): training
exponents negative with |b_train_g| < |b_train_s| (b_train_s < b_train_g < 0), gap exponents b_gap_g < 0 < b_gap_s.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize

TOKENS_UNIT = 1e9  # T inside every formula is tokens / TOKENS_UNIT, for every fit (see the module docstring).
DELTA_UNIT = 'fraction'  # δ inside every formula; recorded in fit.json so that a file of another unit is refused.
MAX_LOG_POWER = 300.0  # Powers are exp(clip(b·log T)): a product of two of them stays below float64's e^709.

# Joint law (1)-(6) with δ a fraction: name, transform, lower, upper (in natural units), meaning. The exponents'
# s-utilities are the exponents at δ = 1, so b_gap(10%) in (0, 1) allows b_gap_s up to about 10 + 9·|b_gap_g|;
# rates per unit δ (α3, κ3) are a hundred times their per-percent values.
JOINT_PARAMS = (
  ('A_train', 'log', 1e-8, 1e4, 'train-loss power-law coefficient, shared by all δ (eq. 1)'),
  ('b_train_s', 'linear', -20.0, 0.0, 'train exponent utility of specialized data: b_train at δ = 1 (eq. 4); < b_g'),
  ('b_train_g', 'linear', -5.0, 0.0, 'train exponent utility of general data: b_train at δ = 0 (eq. 4); < 0'),
  ('kappa0', 'linear', -50.0, 50.0, 'train offset C(δ) = κ0 − κ1·log(δ + κ2) − κ3·δ: constant (eq. 6)'),
  ('kappa1', 'linear', -20.0, 20.0, 'train offset: log coefficient (eq. 6)'),
  ('kappa2', 'log', 1e-6, 10.0, 'train offset: shift of δ (a fraction) inside the log (eq. 6)'),
  ('kappa3', 'linear', -2000.0, 2000.0, 'train offset: linear coefficient per unit δ (eq. 6)'),
  ('alpha1', 'log', 1e-12, 1e12, 'gap coefficient A_gap(δ) = α1·δ^α2·exp(α3·δ): scale, δ a fraction (eq. 5)'),
  ('alpha2', 'linear', 0.0, 10.0, 'gap coefficient: power of δ (eq. 5)'),
  ('alpha3', 'linear', -2000.0, 2000.0, 'gap coefficient: exponential rate per unit δ (eq. 5)'),
  ('b_gap_s', 'linear', 0.0, 50.0, 'gap exponent utility of specialized data: b_gap at δ = 1 (eq. 4); > 0'),
  ('b_gap_g', 'linear', -5.0, 0.0, 'gap exponent utility of general data: b_gap at δ = 0 (eq. 4); < 0'),
)
JOINT_NAMES = tuple(p[0] for p in JOINT_PARAMS)


def sign_conditions(p: dict, margin: float = 1e-6) -> dict:
  """The paper's sign conditions on the exponents (§5.1): {condition: holds by more than margin}.

  A fit bounded by them can only meet one at equality; within margin of it (at the bound) it counts as failed.
  """
  return {
    'b_train_s < b_train_g < 0 (training exponents negative, |b_g| < |b_s|)': bool(
      p['b_train_s'] + margin < p['b_train_g'] < -margin
    ),
    'b_gap_g < 0 < b_gap_s (more δ overfits faster)': bool(p['b_gap_g'] < -margin and p['b_gap_s'] > margin),
  }


def offset_c(p: dict, delta):
  """Eq. (6): the train-loss offset C(δ), δ a fraction."""
  return p['kappa0'] - p['kappa1'] * np.log(delta + p['kappa2']) - p['kappa3'] * delta


def gap_coefficient(p: dict, delta):
  """Eq. (5): the gap coefficient A_gap(δ), δ a fraction; computed in logs so that no factor overflows."""
  delta = np.asarray(delta, float)
  with np.errstate(divide='ignore', invalid='ignore'):
    log_power = np.where(
      delta > 0, p['alpha2'] * np.log(np.maximum(delta, 1e-300)), 0.0 if p['alpha2'] == 0 else -np.inf
    )
  log_value = np.log(p['alpha1']) + log_power + p['alpha3'] * delta
  return np.exp(np.minimum(log_value, MAX_LOG_POWER))


def exponent(s: float, g: float, delta):
  """Eq. (4): b(δ) = δ·b_s + (1 − δ)·b_g, δ a fraction: a convex mix of the two utilities."""
  return delta * s + (1.0 - delta) * g


def power(t, b):
  """T^b as exp(b·log T), clipped so that extreme fitted exponents give a huge finite value, never inf or nan."""
  return np.exp(np.clip(b * np.log(t), -MAX_LOG_POWER, MAX_LOG_POWER))


@dataclasses.dataclass
class ScalingLaw:
  """A fitted (or generating) law: predicts domain losses at any (δ, T)."""

  params: dict
  tokens_unit: float = TOKENS_UNIT
  # Finetuning delta (eq. 7) per fitted δ (fraction): (a, b, c) of Δ = a·T^b + c, T in tokens_unit.
  finetune_delta: dict = dataclasses.field(default_factory=dict)
  fitted_deltas: tuple = ()
  token_range: tuple = ()
  fitted_on: dict = dataclasses.field(default_factory=dict)  # The subset fitted: max_delta, max_tokens.

  def _x(self, delta, tokens):
    delta = np.asarray(delta, float)
    if np.any(delta > 1) or np.any(delta < 0):
      raise ValueError(f'δ={np.max(delta)} is not a fraction in [0, 1]; pass 0.02 for 2% (not 2)')
    return delta, np.asarray(tokens, float) / self.tokens_unit

  def train_loss(self, delta, tokens):
    """Eq. (1): domain train loss."""
    delta, t = self._x(delta, tokens)
    p = self.params
    return p['A_train'] * power(t, exponent(p['b_train_s'], p['b_train_g'], delta)) + offset_c(p, delta)

  def gap(self, delta, tokens):
    """Eq. (2): domain train-test gap."""
    delta, t = self._x(delta, tokens)
    p = self.params
    return gap_coefficient(p, delta) * power(t, exponent(p['b_gap_s'], p['b_gap_g'], delta))

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
      np.shape(t)
    ), 'interpolated in δ between fitted δ'

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
    return {
      'params': dict(self.params),
      'tokens_unit': self.tokens_unit,
      'delta_unit': DELTA_UNIT,
      'finetune_delta': {repr(k): list(v) for k, v in self.finetune_delta.items()},
      'fitted_deltas': list(self.fitted_deltas),
      'token_range': list(self.token_range),
      'fitted_on': dict(self.fitted_on),
    }

  @classmethod
  def from_json(cls, d: dict) -> 'ScalingLaw':
    if d.get('delta_unit') != DELTA_UNIT:
      raise ValueError(
        f'fit file has δ in {d.get("delta_unit") or "percent"} inside its formulas (an older format '
        'this version would misread); refit it with `python -m spt_jax.plan fit`'
      )
    params = {k: (v['value'] if isinstance(v, dict) else v) for k, v in d['params'].items()}
    missing = sorted(set(JOINT_NAMES) - set(params))
    if missing:
      raise ValueError(f'fit file lacks parameters {missing}; regenerate it with `python -m spt_jax.plan fit`')
    ft = {float(k): tuple(v['abc'] if isinstance(v, dict) else v) for k, v in d.get('finetune_delta', {}).items()}
    return cls(
      params,
      float(d['tokens_unit']),
      ft,
      tuple(d.get('fitted_deltas', ())),
      tuple(d.get('token_range', ())),
      dict(d.get('fitted_on') or {}),
    )


def _power_offset(abc, t):
  a, b, c = abc
  return a * power(np.asarray(t, float), b) + c


def law_from_fit(fit: dict) -> ScalingLaw:
  return ScalingLaw.from_json(fit)


def overfitting_onset(law: ScalingLaw, delta: float) -> float | None:
  """Tokens at which the domain test loss (eq. 3) at δ is lowest; None when the law has no onset in range."""
  return onset_with_reason(law, delta)[0]


def onset_with_reason(law: ScalingLaw, delta: float) -> tuple:
  """(tokens or None, why None): the closed-form minimum of eq. (3) over T, computed in logs (never overflows)."""
  p = law.params
  b_train = float(exponent(p['b_train_s'], p['b_train_g'], delta))
  b_gap = float(exponent(p['b_gap_s'], p['b_gap_g'], delta))
  a_gap = float(gap_coefficient(p, delta))
  if not b_gap > 0:
    return None, f'the gap exponent b_gap({delta:g}) = {b_gap:.3g} ≤ 0: the gap shrinks with T, never overfits'
  if not b_train < 0 or not a_gap > 0 or not p['A_train'] > 0:
    return None, f'no gap or no falling train loss at δ={delta:g}: the test loss never turns up'
  # d/dT [A·T^b_train + A_gap·T^b_gap] = 0 at log T = log(−A·b_train / (A_gap·b_gap)) / (b_gap − b_train).
  log_t = (math.log(p['A_train']) + math.log(-b_train) - math.log(a_gap) - math.log(b_gap)) / (b_gap - b_train)
  log_tokens = log_t + math.log(law.tokens_unit)
  if not math.isfinite(log_tokens) or not 0 < log_tokens < math.log(1e30):
    return None, f"the law's minimum at δ={delta:g} lies at e^{log_tokens:.4g} tokens, outside any budget"
  return math.exp(log_tokens), ''


def best_delta(
  law: ScalingLaw, tokens: float, objective: str = 'post_ft', delta_max: float | None = None, candidates=None
) -> tuple:
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
  refined = optimize.minimize_scalar(
    lambda d: float(law.loss(objective, d, tokens)), bounds=(lo, hi), method='bounded', options={'xatol': 1e-6}
  )
  if refined.success and refined.fun <= losses[i]:
    return float(refined.x), float(refined.fun)
  return float(grid[i]), float(losses[i])


def crossovers(law: ScalingLaw, delta_a: float, delta_b: float, token_range: tuple, objective: str = 'post_ft') -> list:
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


@dataclasses.dataclass(frozen=True)
class BudgetPick:
  """The δ with the lowest forecast loss at one budget, and the best of the candidates when some were given."""

  tokens: float
  objective: str
  best_delta: float
  loss: float
  notes: tuple[str, ...] = ()
  best_candidate: float | None = None
  candidate_loss: float | None = None

  def to_json(self) -> dict:
    record = dict(tokens=self.tokens, objective=self.objective, best_delta=self.best_delta, loss=self.loss)
    if self.notes:
      record['notes'] = list(self.notes)
    if self.best_candidate is not None:
      record.update(best_candidate=self.best_candidate, candidate_loss=self.candidate_loss)
    return record


@dataclasses.dataclass(frozen=True)
class Crossover:
  """A budget where the forecast losses of two δ cross, and which δ leads after it."""

  deltas: tuple[float, float]
  tokens: float
  better_after: float

  def to_json(self) -> dict:
    return {'crossover': list(self.deltas), 'tokens': self.tokens, 'better_after': self.better_after}


@dataclasses.dataclass(frozen=True)
class Recommendation:
  """The best δ per budget (`plan recommend`): written as JSON lines, a note first, then picks, then crossovers."""

  picks: tuple[BudgetPick, ...]
  crossovers: tuple[Crossover, ...] = ()
  note: str = ''

  def lines(self) -> list[dict]:
    return [{'note': self.note}] * bool(self.note) + [p.to_json() for p in self.picks + self.crossovers]

  @classmethod
  def from_lines(cls, lines: list[dict]) -> 'Recommendation':
    picks = tuple(
      BudgetPick(**{**line, 'notes': tuple(line.get('notes', ()))}) for line in lines if 'best_delta' in line
    )
    crossovers = tuple(
      Crossover(tuple(line['crossover']), line['tokens'], line['better_after']) for line in lines if 'crossover' in line
    )
    return cls(picks, crossovers, next((line['note'] for line in lines if 'note' in line), ''))


def recommend(
  law: ScalingLaw,
  tokens: list,
  objective: str = 'post_ft',
  delta_max: float | None = None,
  candidates=None,
  crossover=None,
) -> Recommendation:
  """The best δ for each budget (over [0, delta_max], and among candidates), and where two δ cross."""
  delta_max = delta_max or max(law.fitted_deltas or (0.1,))
  note = ''
  if law.fitted_deltas and delta_max > max(law.fitted_deltas):
    note = f'--delta_max {delta_max:g} lies beyond the fitted δ up to {max(law.fitted_deltas):g}: extrapolated'
  picks = []
  for budget in tokens:
    delta, loss = best_delta(law, budget, objective, delta_max)
    candidate, candidate_loss = best_delta(law, budget, objective, candidates=candidates) if candidates else (None,) * 2
    picks.append(
      BudgetPick(
        budget, objective, delta, loss, tuple(extrapolation_notes(law, budget, loss)), candidate, candidate_loss
      )
    )
  found = []
  if crossover:
    span = (min(tokens) / 10, max(tokens) * 10)
    pairs = crossovers(law, crossover[0], crossover[1], span, objective)
    found = [Crossover(tuple(crossover), f['tokens'], f['better_after']) for f in pairs]
  return Recommendation(tuple(picks), tuple(found), note)


def forecast(law: ScalingLaw, delta: float, tokens: float) -> dict:
  """Every prediction of the law at one (δ, T)."""
  drop, how = law.delta_finetune(delta, tokens)
  train, gap = float(law.train_loss(delta, tokens)), float(law.gap(delta, tokens))
  result = {
    'delta': delta,
    'tokens': tokens,
    'train_loss': train,
    'gap': gap,
    'test_loss': train + gap,
    'finetune_delta': float(drop),
    'post_ft_loss': train + gap - float(drop),
    'finetune_delta_from': how,
  }
  notes = []
  if law.fitted_deltas and not min(law.fitted_deltas) <= delta <= max(law.fitted_deltas):
    notes.append(
      f'δ={delta:g} is outside the fitted δ range [{min(law.fitted_deltas):g}, '
      f'{max(law.fitted_deltas):g}]: extrapolated'
    )
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
