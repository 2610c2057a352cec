"""Orbax checkpoints of a run: the last N plus the best, the resolved config beside them, resume and init_from.

A run's workdir W holds W/config.json and W/checkpoints/<step>/{state,meta}: `state` is the TrainState pytree,
`meta` a JSON dict (the loop's own state: tokens, best eval so far, patience counter; the resolved config).
The loop's data state is the step number, so nothing else is needed for an exact resume.

Integrity: once orbax has committed a step (saves are asynchronous: a thread waits for the commit), process 0
writes W/checkpoints/<step>/manifest.json with the size and SHA-256 of every file of the step. Before orbax reads
a checkpoints folder, every step gets the light check (file list, sizes, small files hashed: orbax reads the
metrics and metadata files at start-up) and the newest one that passes gets the full check; a restore and a
params-only load (init_from) check the step they read first. A step that fails is moved, never deleted, to
W/damaged_checkpoints/<step>-<reason> with one warning line, and the next newest good one is used; nothing is
moved when no step is good (the error is then one line). A step without a manifest was saved before manifests
existed or committed in the instant before its manifest was written (orbax commits a step atomically, so it is
whole): it is used unverified, its JSON files must parse, any orbax error restoring it sets it aside like a
failed check, and once it restores its manifest is written.
"""

import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from spt_jax.model import decoder as model_lib
from spt_jax.storage import bucket, files, layout, manifest
from spt_jax.train import config as config_lib

DAMAGED = 'damaged_checkpoints'  # Checkpoints that fail their check or restore are moved here (never deleted).
# JSON files orbax reads of a step, with the reason a step whose copy does not parse is set aside under.
_JSON_FILES = (
  ('metrics/metrics', 'unreadable-metrics'),
  ('meta/metadata', 'unreadable-meta'),
  ('_CHECKPOINT_METADATA', 'unreadable-metadata'),
  ('state/_METADATA', 'unreadable-metadata'),
)
# The metric orbax ranks checkpoints by: eval domain_test loss, lower is better.
BEST_METRIC = 'domain_test_loss'
# Keys that may change between a run and its resumption without changing what it computes (init_from is only
# read by a fresh start, and a workdir may be moved).
RESUME_IGNORED = (
  'resume_mismatched',
  'data.cache_dir',
  'data.num_workers',
  'data.keep_tokenized',
  'data.remote_cache_bytes',
  'log_every',
  'init_from',
  'compilation_cache',
  'runs_together',
  'finetune.extend_grid',  # Which grid points a pipeline adds, not what any run computes.
  'grad_accum_steps',  # How a step is computed in memory, not what (a run may resume on other chips).
  'model.remat_policy',
)
# Keys added after runs were already saved without them: absent from a saved config means this value.
ADDED_DEFAULTS = {'model.scan_unroll': 1, 'data.valid_tokens': 0, 'data.heldout_seed': 0}


def config_dict(config) -> dict:
  """A plain, JSON-able dict of an Experiment, a ConfigDict or a saved config (tuples become lists, as after a JSON
  round trip)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  elif isinstance(config, config_lib.Experiment):
    config = config_lib.to_dict(config)
  return json.loads(json.dumps(config, default=str))


def write_config(workdir: str, config) -> None:
  """Writes the resolved config as W/config.json (process 0 only)."""
  if jax.process_index() != 0:
    return
  files.write_json(os.path.join(workdir, layout.CONFIG), config_dict(config))


def read_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, layout.CONFIG)
  return json.loads(bucket.read_text(path)) if bucket.exists(path) else None


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
  return sorted(
    key for key in set(a) | set(b) if a.get(key, '<absent>') != b.get(key, '<absent>') and key not in ignored
  )


def check_resumable(workdir: str, config) -> None:
  """Refuses to resume a workdir whose config.json differs from config, unless config.resume_mismatched."""
  saved = read_config(workdir)
  if saved is None or config.resume_mismatched:
    return
  differences = config_differences(saved, config)
  if differences:
    shown = ', '.join(
      f'{key}: {_flatten(saved).get(key, "<absent>")!r} -> {_flatten(config_dict(config)).get(key, "<absent>")!r}'
      for key in differences[:8]
    )
    more = f' (and {len(differences) - 8} more)' if len(differences) > 8 else ''
    raise ValueError(
      f'{workdir} holds a run of a different config ({shown}{more}); use another --workdir or '
      'set --config.resume_mismatched=True.'
    )


def _is_finite(value) -> bool:
  return value is None or math.isfinite(float(value))


class DamagedCheckpoint(ValueError):
  """A step that does not match its manifest (or whose JSON files do not parse)."""

  def __init__(self, step_dir: str, problem: manifest.Problem):
    super().__init__(f'checkpoint {step_dir} is damaged ({problem})')
    self.problem = problem


def check_step(step_dir: str, full: bool = True) -> manifest.Problem | None:
  """Why a step folder may not be used (None when it passes): its manifest, or for a step without one, its JSON.
  A step in a bucket passes: a store writes each object whole or not at all (storage/bucket.py)."""
  if bucket.is_url(step_dir):
    return None
  if manifest.has_manifest(step_dir):
    return manifest.check(step_dir, full=full)
  if not os.path.isdir(step_dir):
    return manifest.Problem('missing-file', f'{step_dir} is gone')
  for relative, reason in _JSON_FILES:
    path = os.path.join(step_dir, relative)
    if os.path.exists(path):
      try:
        with open(path, encoding='utf-8') as f:
          json.load(f)
      except (OSError, ValueError) as error:
        return manifest.Problem(reason, f'{relative}: {type(error).__name__}')
  return None


def _step_numbers(directory: str) -> list[int]:
  """The step folders of a checkpoints folder, newest first (orbax's temporary folders are not steps)."""
  in_bucket = bucket.is_url(directory)  # A store lists folders only.
  return sorted(
    (
      int(name)
      for name in bucket.listdir(directory)
      if name.isdigit() and (in_bucket or os.path.isdir(os.path.join(directory, name)))
    ),
    reverse=True,
  )


def _set_aside(directory: str, step: int, reason: str) -> str:
  """Moves step's folder to <workdir>/damaged_checkpoints/<step>-<reason> (a free name); says where it went.
  In a bucket it stays where it is (a store has no rename); the run goes on from an older step."""
  if bucket.is_url(directory):
    return 'left it in the bucket'
  base = os.path.join(os.path.dirname(directory), DAMAGED, f'{step}-{reason}')
  target, suffix = base, 1
  while os.path.exists(target):
    target, suffix = f'{base}.{suffix}', suffix + 1
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(directory, str(step)), target)
  return f'moved it to {target}'


def _use_first_good(
  directory: str,
  steps: Sequence[int],
  load: Callable[[str], Any],
  outcome: str,
  checked: set | None = None,
  restores: bool = True,
) -> tuple[int, Any] | None:
  """(step, load(step folder)) of the first of steps that passes its check and loads; None when there are none.

  The steps that failed before it are set aside, each with one warning line ending in outcome.format(step);
  when none is good nothing is moved (the cause may be this code rather than the files) and the failures are
  raised as one line. `checked` holds the steps fully checked in this process (and receives the one used).
  restores: load really restores the step, so that one without a manifest, once loaded, gets one.
  """
  failures = []
  for step in steps:
    step_dir = os.path.join(directory, str(step))
    problem = None if checked is not None and step in checked else check_step(step_dir)
    if problem is None:
      if checked is not None:
        checked.add(step)
      try:
        result = load(step_dir)
      except Exception as error:
        problem = (
          error.problem
          if isinstance(error, DamagedCheckpoint)
          else manifest.Problem('restore-error', _first_line(error))
        )
    if problem is not None:
      failures.append((step, problem))
      continue
    for bad_step, bad_problem in failures:
      target = _set_aside(directory, bad_step, bad_problem.reason)
      logging.warning('Checkpoint %d is damaged (%s); %s; %s.', bad_step, bad_problem, target, outcome.format(step))
    if restores and not bucket.is_url(step_dir) and not manifest.has_manifest(step_dir) and jax.process_index() == 0:
      manifest.write(step_dir)  # It restored: from now on it is checked like the others.
    return step, result
  if failures:
    step, problem = failures[0]
    raise ValueError(
      f'no checkpoint in {directory} is usable (step {step}: {problem}; {len(failures)} tried); '
      f'move {directory} aside to start the run over, or use another --workdir'
    )
  return None


def _agree(value: int) -> int:
  """Process 0's value on every process: all hosts then see the same steps (process 0 moves damaged ones)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # noqa: PLC0415  jax on first use: importing this module stays light

  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def screen(directory: str) -> int | None:
  """Checks a checkpoints folder before orbax reads it; returns the newest good step (None: there is no step).

  Process 0 fully checks the steps newest first until one passes and gives the older ones the light check;
  those that fail are set aside. When no step is good, nothing is moved and the error is one line. A bucket's
  steps are left to orbax, which lists only the committed ones.
  """
  if bucket.is_url(directory):
    return None
  good, error = -1, None
  if jax.process_index() == 0:
    steps = _step_numbers(directory)
    try:
      found = _use_first_good(
        directory, steps, lambda step_dir: None, 'the newest good checkpoint is step {}', restores=False
      )
    except ValueError as failure:
      good, error = -2, failure
    else:
      good = -1 if found is None else found[0]
      for step in (step for step in steps if step < good):
        problem = check_step(os.path.join(directory, str(step)), full=False)
        if problem is not None:
          target = _set_aside(directory, step, problem.reason)
          logging.warning(
            'Checkpoint %d is damaged (%s); %s; the newest good checkpoint is step %d.',
            step,
            problem,
            target,
            good,
          )
  good = _agree(good)
  if good == -2:
    raise error or ValueError(
      f'no checkpoint in {directory} is usable (process 0 checked them); move '
      f'{directory} aside to start the run over, or use another --workdir'
    )
  return None if good < 0 else good


class Checkpoints:
  """Keeps the last `keep` checkpoints, the best by domain_test loss, and any `keep_steps`; saves asynchronously."""

  def __init__(self, workdir: str, keep: int, keep_steps: Sequence[int] = (), async_save: bool = True):
    if keep < 1:
      raise ValueError(f'keep_checkpoints={keep}: keep at least 1 checkpoint.')
    policies = [
      ocp.checkpoint_managers.LatestN(n=keep),
      ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[BEST_METRIC], reverse=True, n=1, keep_checkpoints_without_metrics=False
      ),
    ]
    if keep_steps:
      policies.append(ocp.checkpoint_managers.CustomSteps(steps=list(keep_steps)))
    # best_fn only makes orbax persist each step's metrics (the preservation policy does the keeping), so that
    # the best checkpoint is still known after a restart.
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=lambda metrics: metrics[BEST_METRIC],
      best_mode='min',
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
      create=True,
    )
    # In the bucket when the workdir is a bucket's mirror (storage/bucket.py): every host writes its shards there.
    self.directory = bucket.located(os.path.join(os.path.abspath(workdir), layout.CHECKPOINTS))
    # Before orbax reads the steps: its start-up parses every step's metrics and metadata.
    newest_good = screen(self.directory)
    self.checked = set() if newest_good is None else {newest_good}  # Steps fully checked by this process.
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'meta'))
    self._manifest_thread = None

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
      raise ValueError(
        f'refusing to checkpoint step {step}: its loss is not finite '
        f'(train {meta.get("train_loss")}, domain_test {domain_test_loss}).'
      )
    if step in self.manager.all_steps():
      return False
    self._join_manifest()  # The previous step's manifest before orbax starts (and may delete old steps).
    metrics = None if domain_test_loss is None else {BEST_METRIC: float(domain_test_loss)}
    started = self.manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(files.finite(meta))),
      metrics=metrics,
      force=True,
    )
    if started:
      self._manifest_thread = threading.Thread(
        target=self._write_manifest, args=(step,), daemon=True, name=f'manifest-{step}'
      )
      self._manifest_thread.start()
    return started

  def _write_manifest(self, step: int) -> None:
    """Waits for orbax to commit step, then records its files (process 0); runs beside training."""
    try:
      self.manager.wait_until_finished()
    except Exception:
      return  # The save failed: wait() raises it in the training thread.
    step_dir = os.path.join(self.directory, str(step))
    if jax.process_index() != 0 or bucket.is_url(step_dir) or not os.path.isdir(step_dir):
      return
    try:
      manifest.write(step_dir)
    except OSError as error:
      logging.warning('Checkpoint %d: its manifest could not be written (%s); it will be used unverified.', step, error)

  def _join_manifest(self) -> None:
    if self._manifest_thread is not None:
      self._manifest_thread.join()
      self._manifest_thread = None

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict]:
    """(state, meta) of a step (default: latest) into abstract_state's shapes, dtypes and shardings.

    The step is checked against its manifest first (DamagedCheckpoint when it does not match).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise ValueError(f'no checkpoint in {self.directory} to restore.')
    self.wait()
    if step not in self.checked:
      problem = check_step(os.path.join(self.directory, str(step)))
      if problem is not None:
        raise DamagedCheckpoint(os.path.join(self.directory, str(step)), problem)
      self.checked.add(step)
    restored = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    )
    return restored.state, dict(restored.meta)

  def restore_newest(self, abstract_state) -> tuple[int, Any, dict]:
    """(step, state, meta) of the newest checkpoint that passes its check and restores; newer ones are set aside.

    A checkpoint damaged by a full disk, a truncated copy, flipped bits or a dying filesystem is moved to
    W/damaged_checkpoints/<step>-<reason> with one warning naming its step, and the run resumes from the one
    before. When none is good, nothing is moved and the error is one line.
    """
    self.wait()
    steps = sorted(self.all_steps(), reverse=True)
    found = _use_first_good(
      self.directory,
      steps,
      lambda step_dir: self.restore(abstract_state, int(os.path.basename(step_dir))),
      'resumed from step {}',
      checked=self.checked,
    )
    if found is None:
      raise ValueError(f'no checkpoint in {self.directory} to restore.')
    step, (state, meta) = found
    if step != steps[0]:
      self.manager.reload()
    return step, state, meta

  def wait(self) -> None:
    """Until the last save is committed and its manifest written."""
    self.manager.wait_until_finished()
    self._join_manifest()

  def close(self) -> None:
    self.wait()
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


def _recorded_loss(step_dir: str) -> float | None:
  """The domain_test loss orbax recorded with a step (metrics/metrics), None when it has none or it is unreadable."""
  try:
    return float(json.loads(bucket.read_text(os.path.join(step_dir, 'metrics', 'metrics')))[BEST_METRIC])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _set_aside_names(directory: str, step: int) -> list[str]:
  """The names step's folder was set aside under, beside a checkpoints folder."""
  damaged = os.path.join(os.path.dirname(directory), DAMAGED)
  return [name for name in os.listdir(damaged) if name.split('-')[0] == str(step)] if os.path.isdir(damaged) else []


def _candidates(path: str) -> tuple[str, list[int]]:
  """(checkpoints folder, its steps in the order a params-only load prefers them) for an init_from path.

  A run workdir or checkpoints folder: the best step of a finetune run, else the newest, then the others newest
  first. A step folder: that step, then the older ones beside it (a fallback when it is damaged).
  """
  local = path if bucket.is_url(path) else os.path.abspath(os.path.expanduser(path))
  path = bucket.located(local)  # A bucket's mirror keeps a run's config; its checkpoints are in the bucket.
  parent, name = os.path.split(path)
  # A step folder set aside by an earlier load: its older neighbours still serve (a rerun of the same command).
  set_aside = name.isdigit() and bool(_set_aside_names(parent, int(name)))
  if not bucket.exists(path) and not set_aside:
    raise ValueError(f'init_from={path} does not exist; point it at a pretrain workdir or a checkpoint folder.')
  if name.isdigit() and (set_aside or bucket.isdir(os.path.join(path, 'state')) or manifest.has_manifest(path)):
    return parent, [step for step in _step_numbers(parent) if step <= int(name)]
  directory = os.path.join(path, layout.CHECKPOINTS)
  directory = directory if bucket.isdir(directory) else path
  steps = [
    step
    for step in _step_numbers(directory)
    if bucket.isdir(os.path.join(directory, str(step), 'state'))
    or manifest.has_manifest(os.path.join(directory, str(step)))
  ]
  if not steps:
    raise _no_checkpoint(path)
  if (read_config(local) or {}).get('stage') == 'finetune':
    losses = {step: _recorded_loss(os.path.join(directory, str(step))) for step in steps}
    # The lowest loss (the earlier step of a tie, as orbax ranks them), then steps without one, newest first.
    steps = sorted(
      steps, key=lambda step: (losses[step] is None, losses[step] or 0.0, step if losses[step] is not None else -step)
    )
  return directory, steps


def _no_checkpoint(path: str) -> ValueError:
  return ValueError(
    f'init_from={path} holds no checkpoint; point it at a workdir with {layout.CHECKPOINTS}/<step>/ or a step folder.'
  )


def _load_usable(path: str, load: Callable[[str], Any], restores: bool = True) -> tuple[str, Any]:
  """(step folder, load(step folder)) of the first usable checkpoint init_from=path names (see _candidates)."""
  directory, steps = _candidates(path)
  found = _use_first_good(directory, steps, load, 'loading step {} instead', restores=restores)
  if found is None:
    raise _no_checkpoint(path)
  return os.path.join(directory, str(found[0])), found[1]


def resolve_checkpoint(path: str) -> str:
  """A step folder from a run workdir (finetune runs: best; others: latest), a checkpoints folder or a step folder.

  The step passes its manifest check; damaged ones before it are set aside (one warning line each).
  """
  return _load_usable(path, lambda step_dir: None, restores=False)[0]


def _key_name(path) -> str:
  return '/'.join(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path)


def restore_params(path: str, abstract_params, optional: Sequence[str] = ('lm_head',)):
  """Parameters only (for init_from), checked against the model's shapes before anything is compiled.

  abstract_params: ShapeDtypeStructs (with shardings) of the model to load into. Top-level entries named in
  `optional` (the untied head) may be absent from the checkpoint: they are then absent from the result too, so
  that the caller can create them (Trainer.state_from_params unties the head from the embedding).
  A Hugging Face OLMo directory (config.json + safetensors) is read through spt_jax.interop.hf.
  """
  return restore_params_from(path, abstract_params, optional)[0]


def restore_params_from(path: str, abstract_params, optional: Sequence[str] = ('lm_head',)) -> tuple[Any, str]:
  """(parameters, the step folder they came from) as restore_params; a damaged step falls back to an older one."""
  from spt_jax.interop import hf  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if hf.is_hf_dir(path):
    return hf.load_for_init(path, abstract_params), os.path.abspath(path)
  shape_error = []

  def load(step_dir):
    stored = ocp.PyTreeCheckpointHandler().metadata(epath.Path(step_dir) / 'state').tree['params']
    target = {key: value for key, value in abstract_params.items() if key in stored or key not in optional}
    stored_shapes = {_key_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored)}
    model_shapes = {_key_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    differences = model_lib.shape_differences(model_shapes, stored_shapes, 'checkpoint')
    if differences:  # The model's fault, not the files': no fallback.
      shape_error.append(
        ValueError(
          f'init_from={path} holds a model of another shape ({differences}); use the model preset it was trained with.'
        )
      )
      return None
    logging.info('Loading parameters from %s', step_dir)
    checkpointer = ocp.PyTreeCheckpointer()
    try:
      item = {'params': target}
      restored = checkpointer.restore(
        os.path.join(step_dir, 'state'),
        args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
        ),
      )
    finally:
      checkpointer.close()
    return restored['params']

  step_dir, params = _load_usable(path, load)
  if shape_error:
    raise shape_error[0]
  return params, step_dir


def measure(parameters: int, folder: str, repeats: int = 3) -> dict:
  """Seconds to save a state of `parameters` float32 parameters (plus AdamW's two moments) until orbax commits
  it, to write its manifest, and to check it (light and full): the best of `repeats`."""
  leaves = 8  # A model's state is many arrays; orbax writes them in parallel.
  size = max(int(parameters) // leaves, 1)
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 3 * leaves))  # Random: orbax compresses constant arrays.
  state = {
    part: [jax.random.normal(next(keys), (size,), jax.numpy.float32) for _ in range(leaves)]
    for part in ('params', 'mu', 'nu')
  }
  jax.block_until_ready(state)
  timings = {}
  for repeat in range(repeats):
    checkpoints = Checkpoints(os.path.join(folder, f'measure_{parameters}_{repeat}'), keep=1)
    step_dir = os.path.join(checkpoints.directory, '1')
    started = time.perf_counter()
    checkpoints.manager.save(
      1, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({'step': 1})), force=True
    )
    checkpoints.manager.wait_until_finished()
    seconds = {'save': time.perf_counter() - started}
    started = time.perf_counter()
    manifest.write(step_dir)
    seconds['manifest'] = time.perf_counter() - started
    for name, full in (('light_check', False), ('full_check', True)):
      started = time.perf_counter()
      assert check_step(step_dir, full=full) is None
      seconds[name] = time.perf_counter() - started
    checkpoints.close()
    timings = {key: min(value, timings.get(key, value)) for key, value in seconds.items()}
  state_bytes = 3 * leaves * size * 4
  on_disk = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(step_dir) for name in names)
  return dict(
    parameters=int(parameters),
    state_megabytes=round(state_bytes / 1e6, 1),
    on_disk_megabytes=round(on_disk / 1e6, 1),
    **{f'{key}_seconds': round(value, 4) for key, value in timings.items()},
    manifest_fraction=round(timings['manifest'] / timings['save'], 3),
    full_check_fraction=round(timings['full_check'] / timings['save'], 3),
  )


if __name__ == '__main__':
  # python -m spt_jax.train.checkpoint --parameters=160e3,1.6e6,100e6 --folder=/tmp/measure: the manifest's cost.
  from absl import (
    app,
    flags,
  )

  _PARAMETERS = flags.DEFINE_list('parameters', ['160e3', '1.6e6'], 'State sizes to measure, in parameters.')
  _FOLDER = flags.DEFINE_string('folder', None, 'An empty folder on the disk to measure (it is filled).', required=True)

  def main(argv):
    del argv
    for parameters in _PARAMETERS.value:
      print(json.dumps(measure(int(float(parameters)), _FOLDER.value)), flush=True)

  app.run(main)
