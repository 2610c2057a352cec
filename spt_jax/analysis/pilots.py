"""A best δ from a few small pilot pipelines (`plan recommend --pilots`) instead of a fitted law.

Each pilot is a pipeline (pretraining, then the finetuning grid) at one δ; the pick is the pilot δ with the lowest
post-finetuning domain test loss, under the paper's protocol (stopped and selected on the test split) and the clean
one (selected on the validation split). How pilots are made so that their best δ may stand for a larger run's is the
study's choice (experiments/pilots.py: scale models of the target run); this module reads and compares them, and
counts their training compute (model FLOPs per token × tokens, spt_jax/model/flops.py).
"""

import dataclasses
import math

from spt_jax.analysis import runs as runs_lib
from spt_jax.model import flops
from spt_jax.storage import markdown, records


@dataclasses.dataclass(frozen=True)
class Pilot:
  """One pilot pipeline: its δ, size, training compute and best losses (None where a protocol has no value)."""

  name: str  # The workdir's folder name.
  delta: float
  params: int
  tokens: int
  train_flops: float  # Pretraining model FLOPs (the finetunes are not counted).
  domain_tokens: int | None  # The domain training set the pretraining drew from (its accounting; None at δ = 0).
  pre_ft: float | None  # Domain test loss at the end of pretraining.
  post_ft: float | None  # Best post-finetuning domain test loss, the paper's protocol.
  post_ft_clean: float | None  # The test loss at the step and grid point chosen on validation.


@dataclasses.dataclass(frozen=True)
class PilotPick:
  """The δ each loss picks among the pilots."""

  pilots: tuple[Pilot, ...]
  best_delta: float  # Lowest post-FT loss, the paper's protocol (the pick).
  best_delta_clean: float | None  # The same under the clean protocol (None: no validation split).
  best_delta_pre_ft: float | None  # Lowest pre-FT loss (what pretraining alone would pick).

  @property
  def train_flops(self) -> float:
    return sum(p.train_flops for p in self.pilots)

  def to_json(self) -> dict:
    return {
      'best_delta': self.best_delta,
      'best_delta_clean': self.best_delta_clean,
      'best_delta_pre_ft': self.best_delta_pre_ft,
      'train_flops': self.train_flops,
      'pilots': [dataclasses.asdict(p) for p in self.pilots],
    }


def pipeline_flops(run: runs_lib.Run) -> float:
  """Pretraining model FLOPs of a run: training FLOPs per token of its model and sequence length × its tokens."""
  model = run.config.get('model')
  if not model or not run.seq_len:
    raise ValueError(f'{run.path}: config.json gives no model or seq_len; is it a spt_jax pipeline?')
  return flops.train_flops_per_token(model, int(run.seq_len)) * run.summary.tokens


def _final_step_points(run: runs_lib.Run) -> list:
  """The finetunes from the last pretraining checkpoint (earlier checkpoints' finetunes are other budgets)."""
  if not run.finetunes:
    raise ValueError(f'{run.path} has no finetuning runs: a pilot is a whole pipeline (--config.stage=pipeline)')
  last = max(point.pretrain_step for point in run.finetunes)
  return [point for point in run.finetunes if point.pretrain_step == last]


def read(workdirs: list[str]) -> list[Pilot]:
  """The pilots' pipeline workdirs as Pilots; one-line errors for missing runs, mixed setups or repeated δ."""
  pilots_read = [runs_lib.read(w) for w in workdirs]
  runs_lib.check_consistent(pilots_read)
  pilots = []
  for run in pilots_read:
    points = _final_step_points(run)
    paper, clean = records.best(points), records.best_clean(points)
    final = run.summary.final or {}
    pilots.append(
      Pilot(
        name=run.name,
        delta=run.domain_fraction,
        params=int(run.summary.params or 0),
        tokens=int(run.summary.tokens),
        train_flops=pipeline_flops(run),
        domain_tokens=run.summary.domain_set_tokens,
        pre_ft=final.get('domain_test'),
        post_ft=paper.best_domain_test_loss if paper else None,
        post_ft_clean=clean.clean.domain_test_loss if clean else None,
      )
    )
  deltas = [p.delta for p in pilots]
  if len(set(deltas)) != len(deltas):
    raise ValueError(f'pilots repeat a δ ({", ".join(f"{d:g}" for d in deltas)}): give one pilot per δ')
  if len(pilots) < 2:
    raise ValueError('give at least two pilots at different δ to choose between')
  return pilots


def _argmin(pilots, loss) -> float | None:
  scored = [(loss(p), p.delta) for p in pilots if loss(p) is not None and math.isfinite(loss(p))]
  return min(scored)[1] if scored else None


def pick(pilots: list[Pilot]) -> PilotPick:
  """The δ with the lowest post-FT loss (paper's protocol), with the clean protocol's and pre-FT's picks beside."""
  best = _argmin(pilots, lambda p: p.post_ft)
  if best is None:
    raise ValueError('no pilot has a finished finetune (a finite best domain test loss): rerun the pilots')
  return PilotPick(
    tuple(sorted(pilots, key=lambda p: p.delta)),
    best,
    _argmin(pilots, lambda p: p.post_ft_clean),
    _argmin(pilots, lambda p: p.pre_ft),
  )


def _loss(value: float | None) -> str:
  return '–' if value is None else f'{value:.4f}'


def format_table(result: PilotPick) -> str:
  """The pilots as a markdown table, the picks below it."""
  rows = [
    [
      p.name,
      f'{100 * p.delta:g}%',
      f'{p.params:,}',
      f'{p.tokens:,}',
      f'{p.train_flops:.3g}',
      _loss(p.pre_ft),
      _loss(p.post_ft),
      _loss(p.post_ft_clean),
    ]
    for p in result.pilots
  ]
  header = ['pilot', 'δ', 'parameters', 'tokens', 'FLOPs', 'pre-FT loss', 'post-FT (paper)', 'post-FT (clean)']

  def shown(delta):
    return '–' if delta is None else f'{100 * delta:g}%'

  picks = (
    f'Pick: δ = {shown(result.best_delta)} (post-FT, paper protocol); clean protocol {shown(result.best_delta_clean)}; '
    f'pre-FT {shown(result.best_delta_pre_ft)}. Pilots together: {result.train_flops:.3g} training FLOPs.'
  )
  return '\n'.join([*markdown.table(header, rows), '', picks])
