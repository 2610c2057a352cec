"""Learning-rate schedules (step -> lr): cosine with a cut-off, WSD and constant, all with linear warmup."""

import math

import jax.numpy as jnp
import optax

KINDS = ('cosine', 'wsd', 'constant')
DECAY_SHAPES = ('linear', 'cosine', '1-sqrt')


def warmup_steps(config, tokens_per_step: int) -> int:
  """Warmup length in steps: schedule.warmup_tokens when > 0, else schedule.warmup_steps."""
  schedule = config.schedule
  if schedule.warmup_tokens > 0:
    return int(math.ceil(schedule.warmup_tokens / tokens_per_step))
  return int(schedule.warmup_steps)


def _check(config, total_steps: int, tokens_per_step: int):
  """Raises a one-line ValueError for any value the schedule cannot honour."""
  schedule = config.schedule
  if schedule.kind not in KINDS:
    raise ValueError(f'schedule.kind={schedule.kind!r} is unknown; use one of {", ".join(KINDS)}.')
  if total_steps <= 0 or tokens_per_step <= 0:
    raise ValueError(
      f'The run has {total_steps} steps of {tokens_per_step} tokens; set steps or tokens (and '
      'batch_size, data.seq_len) to positive values.'
    )
  for key in (
    'warmup_steps',
    'warmup_tokens',
    'horizon_tokens',
    'final_lr',
    'stable_fraction',
    'decay_fraction',
    'decay_steps',
  ):
    if getattr(schedule, key) < 0:
      raise ValueError(f'schedule.{key}={getattr(schedule, key)} is negative; set it to 0 or more.')
  if config.optimizer.lr <= 0:
    raise ValueError(f'optimizer.lr={config.optimizer.lr} must be positive.')
  if schedule.kind == 'wsd':
    if schedule.stable_fraction + schedule.decay_fraction > 1 + 1e-9:
      raise ValueError(
        f'schedule.stable_fraction + schedule.decay_fraction = '
        f'{schedule.stable_fraction + schedule.decay_fraction:g} exceeds 1; make them sum to 1 or '
        'less (fractions of the run after warmup).'
      )
    if schedule.decay_shape not in DECAY_SHAPES:
      raise ValueError(
        f'schedule.decay_shape={schedule.decay_shape!r} is unknown; use one of {", ".join(DECAY_SHAPES)}.'
      )
  if warmup_steps(config, tokens_per_step) > total_steps:
    raise ValueError(
      f'Warmup ({warmup_steps(config, tokens_per_step)} steps) is longer than the run '
      f'({total_steps} steps); shorten schedule.warmup_steps/warmup_tokens or lengthen the run.'
    )


def _decay(shape: str, progress):
  """Multiplier going from 1 (progress 0) to 0 (progress 1)."""
  if shape == 'linear':
    return 1.0 - progress
  if shape == 'cosine':
    return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return 1.0 - jnp.sqrt(progress)


def _warmup(peak: float, warmup: int) -> optax.Schedule:
  """Linear from 0 to peak over `warmup` steps (optax.linear_schedule's ramp, computed as peak · step / warmup)."""
  return lambda step: peak * jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)


def _decay_to(final: float, peak: float, steps: int, shape: str) -> optax.Schedule:
  """From peak to final over `steps` steps in `shape`, then final."""

  def lr_at(step):
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
    return final + (peak - final) * _decay(shape, progress)

  return lr_at


def make_schedule(config, total_steps: int, tokens_per_step: int) -> optax.Schedule:
  """The schedule of config.schedule for a run of total_steps steps of tokens_per_step tokens each.

  Phases are joined with optax.join_schedules: warmup, then (cosine) the decay over the horizon, cut off where
  the run ends; (constant) the peak; (WSD) the peak, then the decay. The ramp and decay keep their own
  arithmetic rather than optax.linear_schedule / cosine_decay_schedule, whose float32 rounding differs (by up
  to 1e-6 relative) and would change results already published by this code.
  """
  _check(config, total_steps, tokens_per_step)
  schedule = config.schedule
  peak = float(config.optimizer.lr)
  final = float(schedule.final_lr)
  warmup = warmup_steps(config, tokens_per_step)
  if schedule.kind == 'cosine':
    # The cosine spans the horizon (OLMo: 2T tokens); the run is cut off wherever total_steps ends.
    horizon = int(round(schedule.horizon_tokens / tokens_per_step)) if schedule.horizon_tokens > 0 else total_steps
    phases, boundaries = [_decay_to(final, peak, max(horizon - warmup, 1), 'cosine')], [warmup]
  elif schedule.kind == 'wsd':
    after_warmup = total_steps - warmup
    decay_start = warmup + int(round(schedule.stable_fraction * after_warmup))
    decay_steps = max(int(round(schedule.decay_fraction * after_warmup)), 1)
    if schedule.decay_steps > 0:  # WSD in steps: the last decay_steps of the run, never in warmup.
      decay_start = max(total_steps - int(schedule.decay_steps), warmup)
      decay_steps = max(total_steps - decay_start, 1)
    phases = [optax.constant_schedule(peak), _decay_to(final, peak, decay_steps, schedule.decay_shape)]
    boundaries = [warmup, decay_start]
  else:
    phases, boundaries = [optax.constant_schedule(peak)], [warmup]
  ramp = _warmup(peak, warmup) if warmup > 0 else optax.constant_schedule(peak)
  return optax.join_schedules([ramp, *phases], boundaries)
