"""NPT→FT against SPT→FT over seeds (§2.2, Figs. 4-5): per-seed gains and forgetting, mean ± standard deviation.

Each arm is a pipeline workdir (W/pretrain, W/finetune/<grid point>, W/summary.json). An arm's result is the best
finetune over the grid from its last pretraining checkpoint, chosen by domain test loss as the pipeline chooses
(the paper's protocol); where the data had a validation split, also the clean protocol's (the point and step
chosen on validation, its test loss reported). Forgetting is compared at each arm's selected step and at equal
finetuning steps (the earlier of the two arms' selected steps, in both arms' selected finetunes).
"""

import dataclasses
import math
import os

import numpy as np
from scipy import stats

from spt_jax.analysis import gains as gains_lib
from spt_jax.analysis import runs as runs_lib
from spt_jax.storage import files, layout, markdown, records

SETS = ('domain_test', 'general_test')


@dataclasses.dataclass(frozen=True)
class Spread:
  """Mean, sample standard deviation and the 95% confidence interval of the mean (Student's t) of n values."""

  mean: float | None
  sd: float | None
  n: int
  ci95: list | None  # [low, high]

  def plus_minus(self, digits: int = 4, suffix: str = '') -> str:
    """'mean ± sd' ('mean' alone for one value, '–' for none)."""
    if self.mean is None:
      return '–'
    sd = '' if self.sd is None else f' ± {markdown.number(self.sd, f".{digits}f")}'
    return f'{markdown.number(self.mean, f".{digits}f")}{sd}{suffix}'

  def interval(self, digits: int = 2, suffix: str = '') -> str:
    """'[low, high]' of the 95% confidence interval of the mean ('–' with fewer than two values)."""
    if self.ci95 is None:
      return '–'
    low, high = self.ci95
    return f'[{low:.{digits}f}, {high:.{digits}f}]{suffix}'


def spread(values) -> Spread:
  """The Spread of the finite values (None where there are too few)."""
  values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
  sd = float(values.std(ddof=1)) if len(values) > 1 else None
  mean = float(values.mean()) if len(values) else None
  half = None if sd is None else float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
  ci95 = None if half is None else [mean - half, mean + half]
  return Spread(mean, sd, int(len(values)), ci95)


@dataclasses.dataclass(frozen=True)
class Choice:
  """The clean protocol's choice in one arm: the point and step selected on validation, its test loss."""

  post_ft_loss: float
  forgetting: float | None
  best_finetune: str
  best_step: int


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm (a pipeline) by the paper's protocol: its best finetune from its last pretraining checkpoint."""

  run: str
  delta: float
  pretrain_tokens: float
  pre_ft_loss: float  # Domain test loss before finetuning ...
  post_ft_loss: float  # ... and at the best finetuning step.
  general_before: float
  general_after: float
  forgetting: float | None
  best_finetune: str
  best_step: int
  epochs: float  # Domain epochs seen by the best step.
  stopped_early: bool  # The domain loss turned up (else: out of steps).
  clean: Choice | None = None  # None without a validation split.


@dataclasses.dataclass(frozen=True)
class EqualSteps:
  """Both arms' forgetting after the same number of finetuning steps (None where a finetune did not evaluate)."""

  step: int
  npt: float | None
  spt: float | None


@dataclasses.dataclass(frozen=True)
class Seed:
  """One seed's two arms and the relative gain G of SPT over NPT (%)."""

  seed: int
  npt: Arm
  spt: Arm
  gain_pct: float
  equal_steps: EqualSteps
  gain_pct_clean: float | None = None  # By the clean protocol, where both arms had a validation split.


@dataclasses.dataclass(frozen=True)
class Comparison:
  """NPT→FT against SPT→FT over seeds: each seed, then the spread of every quantity over them."""

  rows: list[Seed]
  npt_pre_ft_loss: Spread
  npt_post_ft_loss: Spread
  spt_pre_ft_loss: Spread
  spt_post_ft_loss: Spread
  gain_pct: Spread
  seeds_spt_better: int
  npt_forgetting: Spread
  spt_forgetting: Spread
  npt_general_after: Spread
  spt_general_after: Spread
  npt_forgetting_equal_steps: Spread
  spt_forgetting_equal_steps: Spread
  # The clean protocol, over the seeds whose arms both had a validation split (None: no seed had one).
  gain_pct_clean: Spread | None = None
  seeds_spt_better_clean: int | None = None
  npt_forgetting_clean: Spread | None = None
  spt_forgetting_clean: Spread | None = None

  @property
  def seeds(self) -> int:
    return len(self.rows)


def _clean(run: runs_lib.Run, pretrain_tokens: float) -> Choice | None:
  """The clean protocol's choice among the finetunes of one pretraining checkpoint (None without validation)."""
  best = records.best_clean([f for f in run.finetunes if float(f.pretrain_tokens) == pretrain_tokens])
  if best is None:
    return None
  return Choice(float(best.clean.domain_test_loss), best.clean_forgetting, best.name, int(best.clean.step))


def arm(run: runs_lib.Run) -> Arm:
  """One arm's numbers: pre- and post-finetuning domain loss, general loss before and after, forgetting (and
  the same by the clean protocol)."""
  points = runs_lib.finetune_points(run)
  if not points:
    raise ValueError(f'{run.path}: no finetune with a finite best_domain_test_loss; rerun the study to finish it')
  best = points[-1]
  return Arm(
    run=run.name,
    delta=run.domain_fraction,
    pretrain_tokens=float(best.pretrain_tokens),
    pre_ft_loss=float(best.domain_test_loss_before),
    post_ft_loss=float(best.best_domain_test_loss),
    general_before=float(best.general_test_loss_before),
    general_after=float(best.general_test_loss_after),
    forgetting=best.forgetting,
    best_finetune=best.name,
    best_step=int(best.best_step),
    epochs=float(best.epochs),
    stopped_early=best.stop_reason == 'early_stopping',
    clean=_clean(run, float(best.pretrain_tokens)),
  )


def _general_at(run: runs_lib.Run, finetune: str, step: int) -> float | None:
  """The general test loss a finetune logged at `step` (None when it did not evaluate there)."""
  path = os.path.join(layout.finetune_dir(run.path, finetune), layout.METRICS)
  key = 'eval/general_test/loss'
  losses = [r[key] for r in files.read_jsonl(path) if r.get('step') == step and key in r]
  return float(losses[-1]) if losses else None


def _equal_steps(npt_run, spt_run, a: Arm, b: Arm) -> EqualSteps:
  """Both arms' forgetting after the same number of finetuning steps: the earlier of their selected steps."""
  step = min(a.best_step, b.best_step)
  forgetting = []
  for run, numbers in ((npt_run, a), (spt_run, b)):
    general = _general_at(run, numbers.best_finetune, step)
    forgetting.append(None if general is None else general - numbers.general_before)
  return EqualSteps(step, *forgetting)


def compare(pairs: dict) -> Comparison:
  """pairs: seed -> (NPT Run, SPT Run). Per-seed rows and, over seeds, mean and sample standard deviation."""
  rows = []
  for seed, (npt, spt) in sorted(pairs.items()):
    runs_lib.check_consistent([npt, spt])
    a, b = arm(npt), arm(spt)
    clean = gains_lib.relative_gain(a.clean.post_ft_loss, b.clean.post_ft_loss) if a.clean and b.clean else None
    gain = gains_lib.relative_gain(a.post_ft_loss, b.post_ft_loss)
    rows.append(Seed(seed, a, b, gain, _equal_steps(npt, spt, a, b), clean))
  clean = [r for r in rows if r.gain_pct_clean is not None]
  return Comparison(
    rows=rows,
    npt_pre_ft_loss=spread(r.npt.pre_ft_loss for r in rows),
    npt_post_ft_loss=spread(r.npt.post_ft_loss for r in rows),
    spt_pre_ft_loss=spread(r.spt.pre_ft_loss for r in rows),
    spt_post_ft_loss=spread(r.spt.post_ft_loss for r in rows),
    gain_pct=spread(r.gain_pct for r in rows),
    seeds_spt_better=sum(r.gain_pct > 0 for r in rows),
    npt_forgetting=spread(r.npt.forgetting for r in rows),
    spt_forgetting=spread(r.spt.forgetting for r in rows),
    npt_general_after=spread(r.npt.general_after for r in rows),
    spt_general_after=spread(r.spt.general_after for r in rows),
    npt_forgetting_equal_steps=spread(r.equal_steps.npt for r in rows),
    spt_forgetting_equal_steps=spread(r.equal_steps.spt for r in rows),
    **(
      {
        'gain_pct_clean': spread(r.gain_pct_clean for r in clean),
        'seeds_spt_better_clean': sum(r.gain_pct_clean > 0 for r in clean),
        'npt_forgetting_clean': spread(r.npt.clean.forgetting for r in clean),
        'spt_forgetting_clean': spread(r.spt.clean.forgetting for r in clean),
      }
      if clean
      else {}
    ),
  )


def trajectory(run: runs_lib.Run) -> dict:
  """Domain and general test loss through pretraining, then through the best finetune (tokens continue)."""
  best = arm(run)
  finetune = files.read_jsonl(os.path.join(layout.finetune_dir(run.path, best.best_finetune), layout.METRICS))
  return trajectory_of(run.metrics, finetune, best.pretrain_tokens, best.best_step)


def trajectory_of(pretrain_metrics: list, finetune_metrics: list, start_tokens: float, best_step: int) -> dict:
  """The evaluations of both test sets in a pretraining's and a finetune's metrics.jsonl records, the finetune's
  tokens counted on from start_tokens (the pretraining tokens it started from)."""
  pretrain = [r for r in pretrain_metrics if all(f'eval/{s}/loss' in r for s in SETS)]
  finetune = [r for r in finetune_metrics if all(f'eval/{s}/loss' in r for s in SETS)]
  out = {
    'pretrain_tokens': [float(r['tokens']) for r in pretrain],
    'finetune_tokens': [start_tokens + float(r['tokens']) for r in finetune],
    'finetune_steps': [int(r['step']) for r in finetune],
    'best_step': best_step,
  }
  for name in SETS:
    out[f'pretrain_{name}'] = [float(r[f'eval/{name}/loss']) for r in pretrain]
    out[f'finetune_{name}'] = [float(r[f'eval/{name}/loss']) for r in finetune]
  return out


def format_tables(result: Comparison) -> str:
  """Markdown: one row per seed, then mean ± sd over seeds."""
  rows = []
  for r in result.rows:
    a, b = r.npt, r.spt
    rows.append(
      [r.seed, *(f'{x:.4f}' for x in (a.pre_ft_loss, a.post_ft_loss, b.pre_ft_loss, b.post_ft_loss))]
      + [f'{r.gain_pct:+.2f}%', f'{a.forgetting:+.4f}', f'{b.forgetting:+.4f}']
      + [f'{arm.best_finetune} @{arm.best_step} ({arm.epochs:.1f} ep)' for arm in (a, b)]
    )
  rows.append(
    ['mean ± sd']
    + [
      x.plus_minus()
      for x in (result.npt_pre_ft_loss, result.npt_post_ft_loss, result.spt_pre_ft_loss, result.spt_post_ft_loss)
    ]
    + [
      result.gain_pct.plus_minus(2, '%'),
      result.npt_forgetting.plus_minus(),
      result.spt_forgetting.plus_minus(),
      '',
      '',
    ]
  )
  header = ['seed', 'NPT pre-FT', 'NPT→FT', 'SPT pre-FT', 'SPT→FT', 'G', 'NPT forgetting', 'SPT forgetting']
  lines = markdown.table([*header, 'NPT best FT', 'SPT best FT'], rows)
  equal = [[r.seed, r.equal_steps.step, _signed(r.equal_steps.npt), _signed(r.equal_steps.spt)] for r in result.rows]
  equal.append(
    ['mean ± sd', '', result.npt_forgetting_equal_steps.plus_minus(), result.spt_forgetting_equal_steps.plus_minus()]
  )
  lines += ['', 'Forgetting at equal finetuning steps (the earlier of the two selected steps):', '']
  lines += markdown.table(['seed', 'step', 'NPT forgetting', 'SPT forgetting'], equal)
  if result.gain_pct_clean is not None:
    clean = [
      [r.seed, f'{r.npt.clean.post_ft_loss:.4f}', f'{r.spt.clean.post_ft_loss:.4f}', f'{r.gain_pct_clean:+.2f}%']
      + [_signed(r.npt.clean.forgetting), _signed(r.spt.clean.forgetting)]
      + [f'{c.best_finetune} @{c.best_step}' for c in (r.npt.clean, r.spt.clean)]
      for r in result.rows
      if r.gain_pct_clean is not None
    ]
    clean.append(
      ['mean ± sd', '', '', result.gain_pct_clean.plus_minus(2, '%')]
      + [result.npt_forgetting_clean.plus_minus(), result.spt_forgetting_clean.plus_minus(), '', '']
    )
    lines += ['', 'The clean protocol (point and step selected on the validation split, test loss reported):', '']
    header = ['seed', 'NPT→FT', 'SPT→FT', 'G', 'NPT forgetting', 'SPT forgetting', 'NPT chosen', 'SPT chosen']
    lines += markdown.table(header, clean)
  return '\n'.join(lines)


def _signed(value) -> str:
  return '–' if value is None else f'{value:+.4f}'
