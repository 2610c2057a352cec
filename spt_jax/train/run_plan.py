"""What a run will do, computed once from its config: the stage's effective config, steps, tokens per step,
warmup and learning-rate schedule. The dry run, the loop, the pipeline and the experiments all read a RunPlan,
so they cannot disagree (steps are whole batches: config.tokens // tokens per step).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spt_jax.storage import records
from spt_jax.train import config as config_lib
from spt_jax.train import schedules

STAGES = ('pretrain', 'finetune')


def stage_config(
  config: config_lib.Experiment, stage: str, grid_point: records.GridPoint | None = None
) -> config_lib.Experiment:
  """The effective config of a stage: the ONE place where pretraining and finetuning differ.

  Finetuning (Appendix B): its own batch size (in microbatches no larger than pretraining's, when it has several),
  weight decay and schedule (constant with warmup), the (lr, warmup)
  of a grid point (default: the grid's first), evaluation cadence and early-stopping patience, at most
  finetune.max_steps steps, and an untied output head when finetune.untie_embeddings.
  """
  if stage not in STAGES:
    raise ValueError(f'stage={stage!r} cannot be trained directly; use pretrain or finetune (the pipeline runs both).')
  if stage == 'pretrain':
    return config_lib.replace(config, stage=stage)
  ft = config.finetune
  lr, warmup = records.GridPoint.of(grid_point if grid_point is not None else ft.grid[0])
  grad_accum_steps = config.grad_accum_steps
  if grad_accum_steps > 1:  # Microbatches no larger than pretraining's, which fit the devices' memory.
    grad_accum_steps = -(-ft.batch_size // (config.batch_size // config.grad_accum_steps))
    while ft.batch_size % grad_accum_steps:
      grad_accum_steps += 1
  return config_lib.replace(
    config,
    **{
      'stage': stage,
      'batch_size': ft.batch_size,
      'grad_accum_steps': grad_accum_steps,
      'optimizer.lr': lr,
      'optimizer.weight_decay': ft.weight_decay,
      'schedule.kind': ft.schedule,
      'schedule.warmup_steps': warmup,
      'schedule.warmup_tokens': 0,
      'schedule.decay_steps': ft.decay_steps,  # WSD: see finetune_decay.
      'eval_every': ft.eval_every,
      'patience': ft.patience,
      'eval_intervals': (),
      'steps': ft.max_steps,
      'tokens': 0,
      'model.tie_embeddings': config.model.tie_embeddings and not ft.untie_embeddings,
      'finetune.from_steps': (),  # Pretraining checkpoints to finetune from; a finetune keeps no such steps.
    },
  )


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """One stage's length and learning rate, derived from its effective config."""

  config: config_lib.Experiment  # The stage's effective config (stage_config).
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


def make(config: config_lib.Experiment, stage: str | None = None, grid_point=None) -> RunPlan:
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
