"""A run's regime beside the paper's: the ratios that decide whether a small run behaves like the paper's run.

Tokens per parameter, domain tokens per parameter, domain epochs at each δ, the learning rate at each budget
point ÷ its peak, the finetuning learning rates ÷ the pretraining peak, one finetuning batch ÷ the domain set,
and (measured from a finetune's evaluations) the finetuning epochs before the domain test loss turns up.
The paper's column is computed from the base config (OLMo-1B, Appendix B) the same way as any config's.
"""

import dataclasses
import math

from spt_jax.data import paper_data
from spt_jax.model import decoder, flops
from spt_jax.storage import markdown
from spt_jax.train import config as config_lib
from spt_jax.train import run_plan

PAPER_DELTAS = (0.001, 0.01, 0.02, 0.05, 0.10)  # Appendix B's sweeps: {0, 0.1, 1, 2, 5}% and the 10% curve.
PAPER_BUDGETS = (40e9, 120e9, 200e9)  # Budgets the paper compares at (§4.2 data size; the 200B cut).
PAPER_FINETUNE_EPOCHS_BEFORE_TURN = 5.0  # §3: "domain test loss starts rising after about 5 FT epochs".
BUDGET_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)  # A CPU run's budget points: checkpoints of its one long run.


@dataclasses.dataclass(frozen=True)
class Regime:
  """The ratios of one run (see the module docstring)."""

  name: str
  params: int
  tokens: int
  domain_tokens: int
  tokens_per_param: float
  domain_tokens_per_param: float
  domain_epochs: dict  # δ -> epochs of the domain set over the run.
  lr_at_budget: dict  # budget tokens -> LR there ÷ peak LR.
  finetune_lr_ratio: tuple  # (lowest, highest) finetuning LR of the grid ÷ pretraining peak.
  finetune_batch_over_domain: float  # Tokens of one finetuning batch ÷ domain training tokens.
  finetune_epochs_before_turn: float | None  # Measured (or the paper's); None when unknown.


def of_config(
  name: str,
  config: config_lib.Experiment,
  domain_tokens: int,
  deltas=PAPER_DELTAS,
  budgets=None,
  finetune_epochs_before_turn: float | None = None,
) -> Regime:
  """The regime of a config whose domain training set holds `domain_tokens` tokens; budgets in tokens."""
  plan = run_plan.make(config, 'pretrain')
  params = flops.count_params(config.model)[0]
  budgets = budgets or tuple(plan.tokens * f for f in BUDGET_FRACTIONS)
  peak = float(config.optimizer.lr)
  lr_at = {float(b): float(plan.schedule(min(int(b // plan.tokens_per_step), plan.steps))) / peak for b in budgets}
  grid_lrs = [float(lr) for lr, _ in config.finetune.grid]
  return Regime(
    name=name,
    params=params,
    tokens=plan.tokens,
    domain_tokens=int(domain_tokens),
    tokens_per_param=plan.tokens / params,
    domain_tokens_per_param=domain_tokens / params,
    domain_epochs={float(d): d * plan.tokens / domain_tokens for d in deltas},
    lr_at_budget=lr_at,
    finetune_lr_ratio=(min(grid_lrs) / peak, max(grid_lrs) / peak),
    finetune_batch_over_domain=config.finetune.batch_size * config.data.seq_len / domain_tokens,
    finetune_epochs_before_turn=finetune_epochs_before_turn,
  )


# Lengths in steps and in tokens that a scale model cuts by its factor, so that each keeps its share of the run.
_STEP_KEYS = ('eval_every', 'checkpoint_every', 'log_every', 'schedule.warmup_steps')
_TOKEN_KEYS = ('data.domain_max_tokens', 'data.general_max_tokens', 'schedule.horizon_tokens', 'schedule.warmup_tokens')


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = getattr(config, part)
  return config


def scale_model(config: config_lib.Experiment, delta: float, preset: str, compute: float, count: int) -> tuple:
  """A pilot at δ: the run of `config` in miniature, one of `count` that together cost `compute` of its
  pretraining FLOPs. Returns (the pilot's Experiment, k).

  The model is `preset` (the run's vocabulary and dtype); the run's tokens, its domain and general sets (by whole
  documents; the held-out sets stay the same) and its lengths in steps and tokens (warmup, evaluations,
  checkpoints, the cosine's horizon) shrink by one factor k, and so does a finetuning batch. So δ, the domain
  epochs at δ, the LR at the end ÷ peak, a finetuning batch ÷ the domain set and a finetuning epoch in steps stay
  the run's. k is the run's parameters ÷ the pilot's, which keeps tokens and domain tokens per parameter the run's
  too, when `count` such pilots fit in `compute`; else the larger k that fits, and tokens per parameter fall by
  (the run's parameters ÷ the pilot's) ÷ k.
  """
  if not config.data.domain_max_tokens:
    raise ValueError("a scale model shrinks the domain set: set --config.data.domain_max_tokens to the run's size")
  if config.mixture.stages:
    raise ValueError('a scale model of a staged mixture (mixture.stages) is not supported; give a domain_fraction')
  small = dataclasses.replace(
    decoder.preset_config(preset), dtype=config.model.dtype, vocab_size=config.model.vocab_size
  )
  seq_len = config.data.seq_len
  per_token = flops.train_flops_per_token(config.model, seq_len) / flops.train_flops_per_token(small, seq_len)
  if per_token < 1:
    raise ValueError(
      f"the model {preset} is larger than the run's ({1 / per_token:.2f} of its FLOPs per token); choose a "
      'smaller preset'
    )
  k = max(flops.count_params(config.model)[0] / flops.count_params(small)[0], count / (compute * per_token))
  if k <= 1:
    raise ValueError(
      f'the model {preset} costs {1 / per_token:.2f} of the run per token: {count} scale models within {compute:g} '
      'of its compute would need more tokens than the run; choose a smaller preset'
    )
  plan = run_plan.make(config, 'pretrain')
  steps = int(plan.tokens / k) // plan.tokens_per_step  # Rounded down: the scale models stay within their compute.
  if steps < 1:
    raise ValueError(f'a scale model of 1/{k:.1f} of the run has no whole step: give it more compute')
  values = {
    'model': small,
    'tokens': steps * plan.tokens_per_step,
    'steps': 0,
    'mixture.domain_fraction': delta,
    'finetune.batch_size': max(1, round(config.finetune.batch_size / k)),
    'finetune.from_steps': (),
    'eval_intervals': tuple((name, max(1, round(every / k))) for name, every in config.eval_intervals),
  }
  for key in _STEP_KEYS:
    value = _get(config, key)
    values[key] = max(1, round(value / k)) if value > 0 else value
  for key in _TOKEN_KEYS:
    value = _get(config, key)
    values[key] = max(1, int(value / k)) if value > 0 else value
  return config_lib.replace(config, **values), k


def paper() -> Regime:
  """The paper's run: OLMo-1B, 200B tokens, a 300M-token domain set, Appendix B's finetuning grid."""
  return of_config(
    'paper (OLMo-1B, 200B tokens)',
    config_lib.defaults('olmo-1b'),
    paper_data.DOMAIN_TOKENS,
    budgets=PAPER_BUDGETS,
    finetune_epochs_before_turn=PAPER_FINETUNE_EPOCHS_BEFORE_TURN,
  )


def epochs_before_turn(steps, domain_test_losses, batch_tokens: int, domain_tokens: int) -> float | None:
  """Domain epochs a finetune had seen at its lowest domain_test loss, when the loss rose after it; else None."""
  pairs = [
    (step, loss)
    for step, loss in zip(steps, domain_test_losses, strict=True)
    if loss is not None and math.isfinite(loss)
  ]
  if len(pairs) < 2:
    return None
  best = min(range(len(pairs)), key=lambda i: pairs[i][1])
  if best == len(pairs) - 1:
    return None  # Still falling at its last evaluation: it never turned up.
  return pairs[best][0] * batch_tokens / domain_tokens


def _range(values) -> str:
  values = list(values)
  low, high = min(values), max(values)
  return f'{low:.3g}' if math.isclose(low, high) else f'{low:.3g}-{high:.3g}'


def table(regimes: list[Regime]) -> str:
  """A Markdown table, one column per regime (the paper's first)."""
  deltas = sorted({d for r in regimes for d in r.domain_epochs})
  rows = [
    ('parameters', [f'{r.params:,}' for r in regimes]),
    ('pretraining tokens', [f'{r.tokens:,}' for r in regimes]),
    ('domain training tokens', [f'{r.domain_tokens:,}' for r in regimes]),
    ('tokens per parameter', [f'{r.tokens_per_param:.3g}' for r in regimes]),
    ('domain tokens per parameter', [f'{r.domain_tokens_per_param:.3g}' for r in regimes]),
    *[
      (
        f'domain epochs at δ = {100 * d:g}%',
        [f'{r.domain_epochs[d]:.3g}' if d in r.domain_epochs else '–' for r in regimes],
      )
      for d in deltas
    ],
    ('LR at the budget points ÷ peak', [_range(r.lr_at_budget.values()) for r in regimes]),
    ('finetuning LR ÷ pretraining peak', [_range(r.finetune_lr_ratio) for r in regimes]),
    ('finetuning batch ÷ domain set', [f'{r.finetune_batch_over_domain:.3g}' for r in regimes]),
    (
      'finetuning epochs before the domain loss turns up',
      ['–' if r.finetune_epochs_before_turn is None else f'{r.finetune_epochs_before_turn:.3g}' for r in regimes],
    ),
  ]
  return '\n'.join(markdown.table(['', *(r.name for r in regimes)], [[name, *cells] for name, cells in rows]))
