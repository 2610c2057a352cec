"""Typed records of what the pipeline writes and the analysis reads back from `summary.json`.

A pipeline's `W/summary.json` holds one `FinetunePoint` per finetuning run (`finetunes`) and the best of them
(`best`). The pipeline builds them; the analysis and the studies read them with `FinetunePoint.from_json`,
which takes the JSON a run wrote (older runs may lack later fields: they read as their defaults).
"""

import dataclasses
import math


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

  @classmethod
  def from_json(cls, record: dict) -> 'FinetunePoint':
    """The record of a summary.json entry; keys this version does not know are ignored."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in record.items() if key in names})

  @property
  def forgetting(self) -> float | None:
    """General test loss after finetuning (at the best step) minus before."""
    if self.general_test_loss_after is None or self.general_test_loss_before is None:
      return None
    return self.general_test_loss_after - self.general_test_loss_before

  @property
  def finished(self) -> bool:
    """Whether it has a best step with a finite domain test loss (what comparing points needs)."""
    loss = self.best_domain_test_loss
    return bool(self.best_step) and loss is not None and math.isfinite(loss)
