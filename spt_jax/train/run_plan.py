"""What a run will do, computed once from its config: the stage's effective config, steps, tokens per step,
warmup and learning-rate schedule. The dry run, the loop, the pipeline and the experiments all read a RunPlan,
so they cannot disagree (steps are whole batches: config.tokens // tokens per step).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from spt_jax.storage import records
from spt_jax.train import schedules

STAGES = ('pretrain', 'finetune')


def stage_config(config, stage: str, grid_point: records.GridPoint | None = None) -> ml_collections.ConfigDict:
  """The effective config of a stage: the ONE place where pretraining and finetuning differ.

  Finetuning (Appendix B): its own batch size (in microbatches no larger than pretraining's, when it has several),
  weight decay and schedule (constant with warmup), the (lr, warmup)
  of a grid point (default: the grid's first), evaluation cadence and early-stopping patience, at most
  finetune.max_steps steps, and an untied output head when finetune.untie_embeddings.
  """
  if stage not in STAGES:
    raise ValueError(f'stage={stage!r} cannot be trained directly; use pretrain or finetune (the pipeline runs both).')
  c = ml_collections.ConfigDict(config.to_dict())
  c.stage = stage
  if stage == 'finetune':
    ft = c.finetune
    lr, warmup = records.GridPoint.of(grid_point if grid_point is not None else ft.grid[0])
    c.batch_size = ft.batch_size
    if config.grad_accum_steps > 1:  # Microbatches no larger than pretraining's, which fit the devices' memory.
      c.grad_accum_steps = -(-ft.batch_size // (config.batch_size // config.grad_accum_steps))
      while ft.batch_size % c.grad_accum_steps:
        c.grad_accum_steps += 1
    c.optimizer.lr, c.optimizer.weight_decay = lr, ft.weight_decay
    c.schedule.kind, c.schedule.warmup_steps, c.schedule.warmup_tokens = ft.schedule, warmup, 0
    c.eval_every, c.patience, c.eval_intervals = ft.eval_every, ft.patience, ()
    c.steps, c.tokens, c.schedule.decay_steps = ft.max_steps, 0, ft.decay_steps  # WSD: see finetune_decay.
    if ft.untie_embeddings:
      c.model.tie_embeddings = False
    if ft.from_steps:
      ft.from_steps = ()  # Pretraining checkpoints to finetune from; a finetune keeps no such steps.
  return c


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """One stage's length and learning rate, derived from its effective config."""

  config: ml_collections.ConfigDict  # The stage's effective config (stage_config).
  steps: int
  tokens_per_step: int
  warmup_steps: int
  schedule: optax.Schedule

  @property
  def tokens(self) -> int:
    return self.steps * self.tokens_per_step

  def lr_table(self) -> np.ndarray:
    """The learning rate of every step 0..steps (float32), computed as the compiled step would compute it."""
    return np.asarray(jax.jit(jax.vmap(self.schedule))(jnp.arange(self.steps + 1, dtype=jnp.int32)))

  def sequences_per_device(self, data_parallel_devices: int) -> int:
    """Sequences per data-parallel device per microbatch; a one-line error when the batch does not divide."""
    c = self.config
    divisor = data_parallel_devices * (c.grad_accum_steps or 1)  # 0 (chosen by the run) divides as one microbatch.
    if c.batch_size % divisor:
      raise ValueError(
        f'batch_size={c.batch_size} is not a multiple of the {data_parallel_devices} '
        f'data-parallel devices × grad_accum_steps={c.grad_accum_steps}; change --config.batch_size, '
        '--config.grad_accum_steps or --config.mesh.'
      )
    return c.batch_size // divisor


def make(config, stage: str | None = None, grid_point=None) -> RunPlan:
  """The plan of one stage (default: config.stage; a pipeline's first stage is pretraining)."""
  stage = stage or ('pretrain' if config.stage == 'pipeline' else config.stage)
  c = stage_config(config, stage, grid_point)
  tokens_per_step = c.batch_size * c.data.seq_len
  steps = c.steps or (c.tokens // tokens_per_step if tokens_per_step > 0 else 0)
  if steps <= 0:
    raise ValueError(
      f'the run has no steps (steps={c.steps}, tokens={c.tokens}); set --config.steps or --config.tokens.'
    )
  schedule = schedules.make_schedule(c, int(steps), tokens_per_step)
  return RunPlan(c, int(steps), tokens_per_step, schedules.warmup_steps(c, tokens_per_step), schedule)
