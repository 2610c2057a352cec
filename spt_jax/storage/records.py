"""Typed records of what the runs and the pipeline write and the analysis reads back from `summary.json`.

A run's `summary.json` is a `RunSummary` (its best evaluations are `Evaluation`s), written by the loop. A
pipeline's `W/summary.json` is a `PipelineSummary`: its pretraining run's summary, one `FinetunePoint` per
finetuning run and the best of them under each protocol (`best`: the paper's, stopping and selecting on the
domain test split; `best_clean`: selecting on a validation split held out beside it, `Selection`). The pipeline
builds them; the analysis and the studies read them back with `from_json`, which takes the JSON a run wrote
(older runs may lack later fields: they read as their defaults).
"""

import dataclasses
import math
from typing import NamedTuple


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """An evaluation a run kept: its best on the domain test split (or on the validation split)."""

  step: int
  tokens: int = 0
  eval: dict = dataclasses.field(default_factory=dict)  # Loss of each eval set: {'domain_test': 2.1, ...}.
  epochs: dict = dataclasses.field(default_factory=dict)  # Epochs of each source seen by that step.
  mcqa: dict = dataclasses.field(default_factory=dict)  # Multiple-choice accuracies, when the run has tasks.

  @classmethod
  def from_json(cls, record: dict | None) -> 'Evaluation | None':
    return None if record is None else cls(**_known(cls, record))


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """How one run (a pretraining, a finetune) ended: its workdir's summary.json, written when it stops."""

  stage: str  # pretrain | finetune
  steps: int
  tokens: int
  stop_reason: str  # budget | early_stopping | preempted | nonfinite_loss
  initial: dict | None = None  # Eval losses before the first step.
  final: dict | None = None  # The latest loss of every eval set.
  best: Evaluation | None = None  # The lowest domain test loss.
  best_valid: Evaluation | None = None  # The lowest validation loss, when the data has that split.
  data: dict = dataclasses.field(default_factory=dict)  # The mixture's accounting: tokens and epochs by source.
  model: str = ''  # The model preset.
  domain_fraction: float | None = None  # The δ the run is labelled by (mixture.summary_deltas).
  stage_deltas: list | None = None  # Each stage's δ (None in summaries older than stages).
  params: int | None = None
  seq_len: int | None = None
  tokenizer: str = ''
  sources: dict = dataclasses.field(default_factory=dict)  # Digest of each source's files (prepare.source_digests).
  lr: float | None = None
  warmup_steps: int | None = None
  batch_size: int | None = None
  init_from: str | None = None
  workdir: str = ''
  init_checkpoint: str | None = None  # The step folder (or HF directory) the parameters came from.
  init_step: int | None = None
  last_checkpoint: int | None = None
  wall_time_s: float | None = None
  train_tokens_per_second: float | None = None
  eval_seconds: float | None = None
  timing: dict = dataclasses.field(default_factory=dict)  # Seconds by part of the run (loop.time_split).
  decay: dict | None = None  # A WSD finetune's decay from its best step (finetune_decay), when it had one.

  @classmethod
  def from_json(cls, record: dict) -> 'RunSummary':
    """The summary a run wrote; keys this version does not know are ignored, missing ones read as defaults."""
    missing = [name for name in ('stage', 'steps', 'tokens', 'stop_reason') if name not in record]
    if missing:
      raise ValueError(f'a run summary without {", ".join(missing)}: not a summary.json that spt_jax wrote')
    fields = _known(cls, record)
    for key in ('best', 'best_valid'):
      fields[key] = Evaluation.from_json(fields.get(key))
    return cls(**fields)

  @property
  def domain_set_tokens(self) -> int | None:
    """Tokens of the domain training set the run drew from (its tokens ÷ its epochs), None when it drew none."""
    tokens, epochs = self.data.get('tokens', {}).get('domain', 0), self.data.get('epochs', {}).get('domain', 0)
    return round(tokens / epochs) if epochs else None

  @property
  def finished(self) -> bool:
    """Whether it ended as planned (its budget, or early stopping), not by preemption or a non-finite loss."""
    return self.stop_reason in ('budget', 'early_stopping')


@dataclasses.dataclass(frozen=True)
class Selection:
  """A finetuning run's step chosen on the validation split (the clean protocol), reported on the test split."""

  step: int
  domain_valid_loss: float  # What chose the step.
  domain_test_loss: float  # What is reported.
  general_test_loss_after: float | None = None
  epochs: float | None = None  # Domain epochs seen at that step.


@dataclasses.dataclass(frozen=True)
class FinetunePoint:
  """One finetuning run of a pipeline: where it started, its grid point, how it ended and its best step."""

  name: str  # The folder under W/finetune/.
  pretrain_step: int  # The pretraining checkpoint it started from ...
  pretrain_tokens: int  # ... and the pretraining tokens at that step.
  lr: float
  warmup: int
  stop_reason: str  # budget | early_stopping | preempted | nonfinite_loss
  steps: int
  init_step: int | None = None  # The step actually loaded: differs from pretrain_step when that one was damaged.
  best_step: int | None = None  # The finetuning step with the lowest domain test loss.
  best_domain_test_loss: float | None = None
  epochs: float | None = None  # Domain epochs seen at the best step.
  domain_test_loss_before: float | None = None  # At finetuning step 0.
  general_test_loss_before: float | None = None
  general_test_loss_after: float | None = None  # At the best step.
  domain_train_loss_after: float | None = None
  wall_time_s: float | None = None
  mcqa_at_best: dict = dataclasses.field(default_factory=dict)  # Multiple-choice accuracies at the best step.
  clean: Selection | None = None  # The step chosen on domain_valid, when the data has that split.

  @classmethod
  def from_json(cls, record: dict) -> 'FinetunePoint':
    """The record of a summary.json entry; keys this version does not know are ignored."""
    fields = _known(cls, record)
    if fields.get('clean') is not None:
      fields['clean'] = Selection(**fields['clean'])
    return cls(**fields)

  @property
  def forgetting(self) -> float | None:
    """General test loss after finetuning (at the best step) minus before."""
    if self.general_test_loss_after is None or self.general_test_loss_before is None:
      return None
    return self.general_test_loss_after - self.general_test_loss_before

  @property
  def clean_forgetting(self) -> float | None:
    """General test loss at the step chosen on validation minus before finetuning."""
    if self.clean is None or self.clean.general_test_loss_after is None or self.general_test_loss_before is None:
      return None
    return self.clean.general_test_loss_after - self.general_test_loss_before

  @property
  def finished(self) -> bool:
    """Whether it has a best step with a finite domain test loss (what comparing points needs)."""
    loss = self.best_domain_test_loss
    return bool(self.best_step) and loss is not None and math.isfinite(loss)


def best(points: list[FinetunePoint]) -> FinetunePoint | None:
  """The paper's protocol: the finished point with the lowest domain test loss (stopped and selected on test)."""
  finished = [p for p in points if p.finished]
  return min(finished, key=lambda p: p.best_domain_test_loss) if finished else None


def best_clean(points: list[FinetunePoint]) -> FinetunePoint | None:
  """The clean protocol: the finished point with the lowest validation loss (its test loss is what is reported)."""
  chosen = [p for p in points if p.finished and p.clean is not None]
  return min(chosen, key=lambda p: p.clean.domain_valid_loss) if chosen else None


def _known(cls, record: dict) -> dict:
  """The entries of record that are fields of cls (a newer version's extra keys are ignored)."""
  names = {field.name for field in dataclasses.fields(cls)}
  return {key: value for key, value in record.items() if key in names}


class GridPoint(NamedTuple):
  """A finetuning run's point of the grid: its peak learning rate and warmup steps (a config's finetune.grid holds
  these pairs)."""

  lr: float
  warmup: int

  @classmethod
  def of(cls, pair) -> 'GridPoint':
    """A (lr, warmup) pair of the config (a tuple or a list from config.json) as a GridPoint."""
    lr, warmup = pair
    return cls(float(lr), int(warmup))

  def folder(self, pretrain_step: int | None = None) -> str:
    """Its folder under W/finetune/, e.g. lr1e-05_wu50 (step1000_lr1e-05_wu50 from an earlier checkpoint)."""
    name = f'lr{self.lr:g}_wu{self.warmup}'
    return name if pretrain_step is None else f'step{int(pretrain_step)}_{name}'


def grid_points(grid) -> list[GridPoint]:
  """A config's finetune.grid as GridPoints."""
  return [GridPoint.of(pair) for pair in grid]


@dataclasses.dataclass(frozen=True)
class Extension:
  """A finetuning point the pipeline added past the edge of its grid, and why."""

  name: str  # The folder under W/finetune/.
  why: str


@dataclasses.dataclass
class PipelineSummary:
  """What a pipeline did: W/summary.json (the pipeline's report is written from it)."""

  pretrain: RunSummary | None  # The pretraining run's summary (None: the run did not start, preempted).
  stop_reason: str = 'budget'  # budget | early_stopping | preempted | nonfinite_loss: the pipeline's, of its stages.
  finetunes: list[FinetunePoint] = dataclasses.field(default_factory=list)
  best: FinetunePoint | None = None  # The paper's protocol: lowest domain test loss.
  best_clean: FinetunePoint | None = None  # The clean protocol: lowest validation loss, its test loss reported.
  extended: list[Extension] = dataclasses.field(default_factory=list)  # The points the grid gained.
  timing: dict = dataclasses.field(default_factory=dict)  # Seconds: prepare, pretrain, finetune, report.
  wall_time_s: float | None = None

  @classmethod
  def from_json(cls, record: dict) -> 'PipelineSummary':
    fields = _known(cls, record)
    if fields.get('pretrain') is not None:
      fields['pretrain'] = RunSummary.from_json(fields['pretrain'])
    fields['finetunes'] = [FinetunePoint.from_json(f) for f in fields.get('finetunes') or []]
    fields['extended'] = [Extension(**e) for e in fields.get('extended') or []]
    for key in ('best', 'best_clean'):
      fields[key] = None if fields.get(key) is None else FinetunePoint.from_json(fields[key])
    return cls(**fields)
