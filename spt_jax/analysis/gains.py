"""The paper's headline metrics (Section 2.2): relative gain, compute multiplier, gap closed, forgetting."""

import dataclasses
import math

import numpy as np

from spt_jax.analysis import runs as runs_lib
from spt_jax.storage import markdown


@dataclasses.dataclass(frozen=True)
class Multiplier:
  """The compute multiplier of an SPT run: value (None: the curves do not cross), '=' or a bound '>', and why."""

  value: float | None
  bound: str  # '=', '>' (a lower bound) or '' (no value).
  spt_tokens: float | None  # The SPT tokens that reach NPT's final loss, when interpolated.
  note: str


@dataclasses.dataclass
class Row:
  """One pipeline's post-finetuning curve over its finetuned pretraining checkpoints."""

  run: str
  path: str
  delta: float
  model: str
  pretrain_tokens: float
  post_ft_loss: float  # At the last checkpoint.
  forgetting: float | None  # General test loss after finetuning minus before.
  curve: dict  # {'tokens': [...], 'loss': [...]}.


@dataclasses.dataclass
class SptRow(Row):
  """An SPT pipeline's row, against the NPT one (and the larger NPT model, when given)."""

  relative_gain: float | None = None
  compute_multiplier: Multiplier | None = None
  gap_closed: float | None = None


@dataclasses.dataclass
class Gains:
  """The headline table: the NPT row, one row per SPT run, the larger NPT model's row, and notes."""

  npt: Row
  spt: list = dataclasses.field(default_factory=list)  # SptRow each.
  npt_large: Row | None = None
  notes: list = dataclasses.field(default_factory=list)


def relative_gain(npt_loss: float, spt_loss: float) -> float:
  """G = 100 · (L_NPT→FT − L_SPT→FT) / L_NPT→FT, in percent."""
  return 100.0 * (npt_loss - spt_loss) / npt_loss


def gap_closed(small_npt_loss: float, small_spt_loss: float, large_npt_loss: float) -> float | None:
  """100 · (L_small,NPT − L_small,SPT) / (L_small,NPT − L_large,NPT); None when the larger model is not better."""
  denominator = small_npt_loss - large_npt_loss
  if denominator <= 0:
    return None
  return 100.0 * (small_npt_loss - small_spt_loss) / denominator


def tokens_to_reach(tokens, losses, target: float) -> dict:
  """Pretraining tokens at which a post-FT loss curve first reaches target, interpolated in log tokens.

  Never extrapolates: status says 'interpolated', 'at or before the first checkpoint' (tokens is then an upper
  bound) or 'not reached' (the curve stays above target within its range).
  """
  tokens, losses = np.asarray(tokens, float), np.asarray(losses, float)
  reached = np.nonzero(losses <= target)[0]
  if not len(reached):
    return {'tokens': None, 'status': 'not reached', 'range': [float(tokens[0]), float(tokens[-1])]}
  i = int(reached[0])
  if i == 0:
    return {
      'tokens': float(tokens[0]),
      'status': 'at or before the first checkpoint',
      'range': [float(tokens[0]), float(tokens[-1])],
    }
  fraction = (target - losses[i - 1]) / (losses[i] - losses[i - 1])
  log_t = math.log(tokens[i - 1]) + fraction * (math.log(tokens[i]) - math.log(tokens[i - 1]))
  return {'tokens': math.exp(log_t), 'status': 'interpolated', 'range': [float(tokens[0]), float(tokens[-1])]}


def compute_multiplier(npt_tokens, npt_losses, spt_tokens, spt_losses) -> Multiplier:
  """NPT's final budget ÷ the tokens SPT needs to reach NPT's final post-FT loss (or the reverse when SPT is worse).

  'bound' is '>' or '<' when the crossing lies outside the finetuned checkpoints: value is then a bound.
  """
  target, budget = float(npt_losses[-1]), float(npt_tokens[-1])
  reach = tokens_to_reach(spt_tokens, spt_losses, target)
  if reach['status'] == 'interpolated':
    return Multiplier(budget / reach['tokens'], '=', reach['tokens'], '')
  if reach['status'] == 'at or before the first checkpoint':
    return Multiplier(
      budget / reach['tokens'],
      '>',
      None,
      f"SPT already beats NPT's final loss at its first finetuned checkpoint ({reach['tokens']:.3g} "
      'tokens): finetune earlier SPT checkpoints for an exact multiplier',
    )
  # SPT never reaches NPT's final loss: how many NPT tokens match SPT's final loss instead (a multiplier < 1).
  spt_final, spt_budget = float(spt_losses[-1]), float(spt_tokens[-1])
  back = tokens_to_reach(npt_tokens, npt_losses, spt_final)
  if back['status'] == 'interpolated':
    return Multiplier(
      back['tokens'] / spt_budget,
      '=',
      None,
      "SPT does not reach NPT's final loss; NPT tokens to reach SPT's final loss ÷ SPT's budget",
    )
  return Multiplier(
    None, '', None, 'the curves do not cross within the finetuned checkpoints; no multiplier without extrapolating'
  )


def post_ft_curve(run: runs_lib.Run):
  """(tokens, best post-FT domain test loss, entries) over the run's finetuned checkpoints."""
  points = runs_lib.finetune_points(run)
  if not points:
    raise ValueError(
      f'{run.path}: W/summary.json has no finetunes with a best_domain_test_loss; run the pipeline '
      '(stage=pipeline) so that its checkpoints are finetuned'
    )
  return (
    np.array([float(p.pretrain_tokens) for p in points]),
    np.array([float(p.best_domain_test_loss) for p in points]),
    points,
  )


def _row(run, tokens, losses, entries, kind=Row) -> Row:
  return kind(
    run=run.name,
    path=run.path,
    delta=run.domain_fraction,
    model=run.model,
    pretrain_tokens=float(tokens[-1]),
    post_ft_loss=float(losses[-1]),
    forgetting=entries[-1].forgetting,
    curve={'tokens': tokens.tolist(), 'loss': losses.tolist()},
  )


def gains(npt: runs_lib.Run, spts: list, npt_large: runs_lib.Run | None = None) -> Gains:
  """The headline table: one row per SPT run against the NPT run (and the larger NPT model if given)."""
  runs_lib.check_consistent([npt] + list(spts) + ([npt_large] if npt_large else []))
  notes = []
  npt_tokens, npt_losses, npt_entries = post_ft_curve(npt)
  result = Gains(_row(npt, npt_tokens, npt_losses, npt_entries), notes=notes)
  if npt.domain_fraction > 0:
    notes.append(f'the NPT run {npt.name} has δ={npt.domain_fraction:g} > 0: it is not naive pretraining')
  large_loss = None
  if npt_large is not None:
    large_tokens, large_losses, large_entries = post_ft_curve(npt_large)
    result.npt_large = _row(npt_large, large_tokens, large_losses, large_entries)
    large_loss = float(large_losses[-1])
    if large_tokens[-1] != npt_tokens[-1]:
      notes.append(f'the larger NPT model pretrained {large_tokens[-1]:.3g} tokens, the NPT run {npt_tokens[-1]:.3g}')
  for spt in spts:
    tokens, losses, entries = post_ft_curve(spt)
    row = _row(spt, tokens, losses, entries, SptRow)
    if tokens[-1] != npt_tokens[-1]:
      notes.append(
        f'{spt.name} pretrained {tokens[-1]:.3g} tokens, NPT {npt_tokens[-1]:.3g}: the relative gain '
        'compares different budgets'
      )
    row.relative_gain = relative_gain(float(npt_losses[-1]), float(losses[-1]))
    row.compute_multiplier = compute_multiplier(npt_tokens, npt_losses, tokens, losses)
    if row.compute_multiplier.note:
      notes.append(f'{spt.name}: {row.compute_multiplier.note}')
    if large_loss is not None:
      row.gap_closed = gap_closed(float(npt_losses[-1]), float(losses[-1]), large_loss)
      if row.gap_closed is None:
        notes.append(
          f'the larger NPT model ({large_loss:.4f}) is not better than the smaller ({npt_losses[-1]:.4f}); '
          'gap closed is undefined'
        )
    result.spt.append(row)
  return result


def _fmt(value, spec: str, suffix: str = '') -> str:
  return '—' if value is None else f'{value:{spec}}{suffix}'


def format_table(result: Gains) -> str:
  """A markdown table of the headline metrics."""
  lines = markdown.table(
    ['run', 'δ', 'tokens', 'post-FT loss', 'relative gain', 'compute multiplier', 'gap closed', 'forgetting'], []
  )
  for row, kind in (
    [(result.npt, 'NPT')]
    + ([(result.npt_large, 'NPT large')] if result.npt_large else [])
    + [(r, 'SPT') for r in result.spt]
  ):
    compared = isinstance(row, SptRow)
    multiplier = row.compute_multiplier if compared else None
    multiplier_text = '—'
    if multiplier and multiplier.value is not None:
      multiplier_text = f'{"> " if multiplier.bound == ">" else ""}{multiplier.value:.2f}x'
    lines.append(
      markdown.row(
        [
          f'{row.run} ({kind})',
          f'{100 * row.delta:g}%',
          f'{row.pretrain_tokens:.3g}',
          f'{row.post_ft_loss:.4f}',
          _fmt(row.relative_gain if compared else None, '.2f', '%'),
          multiplier_text,
          _fmt(row.gap_closed if compared else None, '.0f', '%'),
          _fmt(row.forgetting, '+.4f'),
        ]
      )
    )
  lines += [f'- {note}' for note in result.notes]
  return '\n'.join(lines)
