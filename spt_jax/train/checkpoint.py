"""Orbax checkpoints of a run: the last N plus the best, the resolved config beside them, resume and init_from.

A run's workdir W holds W/config.json and W/checkpoints/<step>/{state,meta}: `state` is the TrainState pytree,
`meta` a JSON dict (the loop's own state: tokens, best eval so far, patience counter; the resolved config).
The loop's data state is the step number, so nothing else is needed for an exact resume.
"""

import json
import math
import os
from typing import Any, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from spt_jax.storage import files
from spt_jax.model import decoder as model_lib

CHECKPOINTS = 'checkpoints'
DAMAGED = 'damaged_checkpoints'  # Checkpoints that failed to restore are moved here (never deleted).
CONFIG_FILE = 'config.json'
TOKENIZER_FILE = 'tokenizer.json'  # The tokenizer the run's token ids belong to, beside its config.
# The metric orbax ranks checkpoints by: eval domain_test loss, lower is better.
BEST_METRIC = 'domain_test_loss'
# Keys that may change between a run and its resumption without changing what it computes (init_from is only
# read by a fresh start, and a workdir may be moved).
RESUME_IGNORED = ('resume_mismatched', 'data.cache_dir', 'data.num_workers', 'log_every', 'init_from',
                  'compilation_cache')
# Keys added after runs were already saved without them: absent from a saved config means this value.
ADDED_DEFAULTS = {'model.scan_unroll': 1}


def config_dict(config) -> dict:
  """A plain, JSON-able dict of a ConfigDict (tuples become lists, as after a JSON round trip)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=str))


def write_config(workdir: str, config) -> None:
  """Writes the resolved config as W/config.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  files.write_json(os.path.join(workdir, CONFIG_FILE), config_dict(config))


def read_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _flatten(tree, prefix='') -> dict:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def config_differences(saved: dict, config, ignored: Sequence[str] = RESUME_IGNORED) -> list[str]:
  """Dotted keys whose values differ between a saved config.json and a config (ignoring harmless keys)."""
  b = _flatten(config_dict(config))
  a = {**{key: value for key, value in ADDED_DEFAULTS.items() if key in b}, **_flatten(saved)}
  return sorted(key for key in set(a) | set(b)
                if a.get(key, '<absent>') != b.get(key, '<absent>') and key not in ignored)


def check_resumable(workdir: str, config) -> None:
  """Refuses to resume a workdir whose config.json differs from config, unless config.resume_mismatched."""
  saved = read_config(workdir)
  if saved is None or config.get('resume_mismatched', False):
    return
  differences = config_differences(saved, config)
  if differences:
    shown = ', '.join(f'{key}: {_flatten(saved).get(key, "<absent>")!r} -> '
                      f'{_flatten(config_dict(config)).get(key, "<absent>")!r}' for key in differences[:8])
    more = f' (and {len(differences) - 8} more)' if len(differences) > 8 else ''
    raise ValueError(f'{workdir} holds a run of a different config ({shown}{more}); use another --workdir or '
                     'set --config.resume_mismatched=True.')


def _is_finite(value) -> bool:
  return value is None or math.isfinite(float(value))


class Checkpoints:
  """Keeps the last `keep` checkpoints, the best by domain_test loss, and any `keep_steps`; saves asynchronously."""

  def __init__(self, workdir: str, keep: int, keep_steps: Sequence[int] = (), async_save: bool = True):
    if keep < 1:
      raise ValueError(f'keep_checkpoints={keep}: keep at least 1 checkpoint.')
    policies = [ocp.checkpoint_managers.LatestN(n=keep),
                ocp.checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics[BEST_METRIC], reverse=True,
                                              n=1, keep_checkpoints_without_metrics=False)]
    if keep_steps:
      policies.append(ocp.checkpoint_managers.CustomSteps(steps=list(keep_steps)))
    # best_fn only makes orbax persist each step's metrics (the preservation policy does the keeping), so that
    # the best checkpoint is still known after a restart.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=lambda metrics: metrics[BEST_METRIC], best_mode='min',
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the lowest domain_test loss (None when no checkpoint carries one)."""
    return _best(self.manager, self.manager.all_steps())

  def save(self, step: int, state, meta: dict, domain_test_loss: float | None = None) -> bool:
    """Starts an asynchronous save; refuses non-finite losses and never overwrites an existing step."""
    if not _is_finite(meta.get('train_loss')) or not _is_finite(domain_test_loss):
      raise ValueError(f'refusing to checkpoint step {step}: its loss is not finite '
                       f'(train {meta.get("train_loss")}, domain_test {domain_test_loss}).')
    if step in self.manager.all_steps():
      return False
    metrics = None if domain_test_loss is None else {BEST_METRIC: float(domain_test_loss)}
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           meta=ocp.args.JsonSave(files.finite(meta))),
                             metrics=metrics, force=True)

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict]:
    """(state, meta) of a step (default: latest) into abstract_state's shapes, dtypes and shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f'no checkpoint in {self.directory} to restore.')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def restore_newest(self, abstract_state) -> tuple[int, Any, dict]:
    """(step, state, meta) of the newest checkpoint that restores; newer ones that fail are set aside.

    A checkpoint damaged by a full disk, a truncated copy or a dying filesystem is moved to W/damaged_checkpoints/
    with one warning naming its step, and the run resumes from the one before. When none restores, nothing is
    moved (the cause may be this code rather than the files) and the error is one line.
    """
    steps = sorted(self.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        state, meta = self.restore(abstract_state, step)
      except Exception as error:  # pylint: disable=broad-except
        failures.append((step, _first_line(error)))
        continue
      for bad_step, reason in failures:
        moved = self._set_aside(bad_step)
        logging.warning('Checkpoint %d does not restore (%s); moved it to %s and resumed from step %d.',
                        bad_step, reason, moved, step)
      if failures:
        self.manager.reload()
      return step, state, meta
    raise ValueError(f'no checkpoint in {self.directory} restores (step {failures[0][0]}: {failures[0][1]}); '
                     f'move {self.directory} aside to start the run over, or use another --workdir')

  def _set_aside(self, step: int) -> str:
    self.manager.wait_until_finished()
    target = os.path.join(os.path.dirname(self.directory), DAMAGED, str(step))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    suffix = 1
    while os.path.exists(target):
      target = os.path.join(os.path.dirname(self.directory), DAMAGED, f'{step}.{suffix}')
      suffix += 1
    os.replace(os.path.join(self.directory, str(step)), target)
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:200]}' if text else type(error).__name__


def _best(manager, steps) -> int | None:
  """The step with the lowest domain_test loss among steps (metrics live in each step's metadata)."""
  scored = []
  for step in steps:
    metrics = manager.metadata(step).metrics or {}
    if BEST_METRIC in metrics:
      scored.append((metrics[BEST_METRIC], step))
  return min(scored)[1] if scored else None


def _step_dirs(directory: str) -> list[int]:
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name, 'state')))


def resolve_checkpoint(path: str) -> str:
  """A step folder from a run workdir (finetune runs: best; others: latest), a checkpoints folder or a step folder."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise ValueError(f'init_from={path} does not exist; point it at a pretrain workdir or a checkpoint folder.')
  if os.path.isdir(os.path.join(path, 'state')):
    return path
  directory = os.path.join(path, CHECKPOINTS) if os.path.isdir(os.path.join(path, CHECKPOINTS)) else path
  steps = _step_dirs(directory) if os.path.isdir(directory) else []
  if not steps:
    raise ValueError(f'init_from={path} holds no checkpoint; point it at a workdir with {CHECKPOINTS}/<step>/ '
                     'or at a step folder.')
  step = steps[-1]
  saved = read_config(path) or {}
  if saved.get('stage') == 'finetune':
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_names=('state', 'meta'))
    step = _best(manager, steps) or step
    manager.close()
  return os.path.join(directory, str(step))


def _key_name(path) -> str:
  return '/'.join(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path)


def restore_params(path: str, abstract_params, optional: Sequence[str] = ('lm_head',)):
  """Parameters only (for init_from), checked against the model's shapes before anything is compiled.

  abstract_params: ShapeDtypeStructs (with shardings) of the model to load into. Top-level entries named in
  `optional` (the untied head) may be absent from the checkpoint: they are then absent from the result too, so
  that the caller can create them (Trainer.state_from_params unties the head from the embedding).
  A Hugging Face OLMo directory (config.json + safetensors) is read through spt_jax.interop.hf.
  """
  from spt_jax.interop import hf  # pylint: disable=g-import-not-at-top
  if hf.is_hf_dir(path):
    return hf.load_for_init(path, abstract_params)
  step_dir = resolve_checkpoint(path)
  stored = ocp.PyTreeCheckpointHandler().metadata(epath.Path(step_dir) / 'state').tree['params']
  target = {key: value for key, value in abstract_params.items() if key in stored or key not in optional}
  stored_shapes = {_key_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored)}
  model_shapes = {_key_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
  differences = model_lib.shape_differences(model_shapes, stored_shapes, 'checkpoint')
  if differences:
    raise ValueError(f'init_from={path} holds a model of another shape ({differences}); '
                     'use the model preset it was trained with.')
  logging.info('Loading parameters from %s', step_dir)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    item = {'params': target}
    restored = checkpointer.restore(os.path.join(step_dir, 'state'), args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  finally:
    checkpointer.close()
  return restored['params']
