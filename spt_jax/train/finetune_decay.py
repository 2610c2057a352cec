"""WSD for finetuning under early stopping: the decay starts where early stopping triggers, from the best state.

Early stopping ends a finetune long before finetune.max_steps, so a WSD decay placed at a fraction of the cap
never comes. With finetune.schedule='wsd' and finetune.decay_steps = D > 0:
  1. the finetune runs at its stable LR (its schedule decays only over the last D steps of max_steps, if the
     cap is ever reached) with early stopping as usual, keeping its best checkpoint at step s*;
  2. when early stopping triggers, a decay run in W/decay resumes from a copy of that checkpoint (parameters,
     optimizer state, step and best-so-far), with max_steps = s* + D, so that the same WSD-in-steps schedule
     decays linearly (schedule.decay_shape) to schedule.final_lr over steps s* .. s* + D, evaluating as usual.
The returned summary is the decay run's (its `initial` is the finetune's, its `best` the better of both phases)
with a `decay` entry; W/summary.json stays the stable phase's. A rerun finds both finished and trains nothing.

Hook (spt_jax/train/loop.py): `run` returns
  finetune_decay.after_early_stopping(config, workdir, summary, stage, rerun)
where rerun(config, workdir) is `run` with the same stage, grid point and data; and stage_config copies
finetune.decay_steps into schedule.decay_steps.
"""

import dataclasses
import os
import shutil

from absl import logging

from spt_jax.storage import bucket, layout, records
from spt_jax.train import config as config_lib


def wants_decay(config, stage: str, summary: records.RunSummary) -> bool:
  """Whether a finished finetune should now decay: WSD, decay_steps > 0, stopped early, not a decay run."""
  ft = config.finetune
  return (
    stage == 'finetune'
    and ft.schedule == 'wsd'
    and ft.decay_steps > 0
    and ft.decay_from_step < 0
    and summary.stop_reason == 'early_stopping'
  )


def decay_config(config, best_step: int):
  """The config of the decay run: max_steps = best_step + decay_steps, marked as the decay of best_step."""
  return config_lib.replace(
    config,
    **{
      'finetune.max_steps': int(best_step) + int(config.finetune.decay_steps),
      'finetune.decay_from_step': int(best_step),
    },
  )


def _seed(workdir: str, decay_dir: str, best_step: int) -> bool:
  """Copies the best checkpoint into the decay workdir once, so that the decay run resumes from it."""
  source = bucket.located(layout.checkpoint_dir(workdir, best_step))
  target_root = bucket.located(os.path.join(decay_dir, layout.CHECKPOINTS))
  if bucket.listdir(target_root):
    return True  # Seeded before (the decay run may have checkpoints of its own by now).
  if not bucket.isdir(source):
    return False
  if bucket.is_url(source):  # A store has no rename: the step's objects are copied in place.
    bucket.copy_folder(source, os.path.join(target_root, str(best_step)))
    return True
  tmp = target_root + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(source, os.path.join(tmp, str(best_step)))
  os.replace(tmp, target_root)
  return True


def after_early_stopping(config, workdir: str, summary: records.RunSummary, stage: str, rerun) -> records.RunSummary:
  """The summary of a run, or, for a WSD finetune that stopped early, of its decay from the best checkpoint."""
  if not wants_decay(config, stage, summary):
    return summary
  best_step = summary.best.step if summary.best else 0
  decay_dir = os.path.join(workdir, layout.DECAY)
  import jax  # noqa: PLC0415  jax on first use: importing this module stays light

  if jax.process_index() == 0 and not _seed(workdir, decay_dir, best_step):
    logging.warning('%s: no checkpoint at the best step %d; the WSD decay is skipped', workdir, best_step)
    return dataclasses.replace(summary, decay={'skipped': f'no checkpoint at the best step {best_step}'})
  decayed = rerun(decay_config(config, best_step), decay_dir)
  return dataclasses.replace(
    decayed,
    decay={
      'from_step': best_step,
      'steps': int(config.finetune.decay_steps),
      'workdir': bucket.located(decay_dir),
      'stable_steps': summary.steps,
      'stable_best': summary.best,
    },
  )
