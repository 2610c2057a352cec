"""Typed records of what the pipeline writes and the analysis reads back from `summary.json`.

A pipeline's `W/summary.json` is a `PipelineSummary`: its pretraining run's summary, one `FinetunePoint` per
finetuning run and the best of them under each protocol (`best`: the paper's, stopping and selecting on the
domain test split; `best_clean`: selecting on a validation split held out beside it, `Selection`). The pipeline
builds them; the analysis and the studies read them back with `from_json`, which takes the JSON a run wrote
(older runs may lack later fields: they read as their defaults).
"""

import dataclasses
import math


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


@dataclasses.dataclass
class PipelineSummary:
  """What a pipeline did: W/summary.json (the pipeline's report is written from it)."""

  pretrain: dict | None  # The pretraining run's summary.json (None: the run did not start, preempted).
  stop_reason: str = 'budget'  # budget | early_stopping | preempted | nonfinite_loss: the pipeline's, of its stages.
  finetunes: list[FinetunePoint] = dataclasses.field(default_factory=list)
  best: FinetunePoint | None = None  # The paper's protocol: lowest domain test loss.
  best_clean: FinetunePoint | None = None  # The clean protocol: lowest validation loss, its test loss reported.
  extended: list[dict] = dataclasses.field(default_factory=list)  # {'name', 'why'} of each point the grid gained.
  timing: dict = dataclasses.field(default_factory=dict)  # Seconds: prepare, pretrain, finetune, report.
  wall_time_s: float | None = None

  @classmethod
  def from_json(cls, record: dict) -> 'PipelineSummary':
    fields = _known(cls, record)
    fields['finetunes'] = [FinetunePoint.from_json(f) for f in fields.get('finetunes') or []]
    for key in ('best', 'best_clean'):
      fields[key] = None if fields.get(key) is None else FinetunePoint.from_json(fields[key])
    return cls(**fields)
