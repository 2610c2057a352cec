"""The training loop for any stage: resume, train, evaluate, early-stop, checkpoint, log, summarise.

What a stage runs (its effective config, steps, schedule) is its RunPlan (run_plan.py); this module only loops.
The batch of step s is a pure function of s and the restored state is exact, so a run killed at any point and
restarted continues with the same losses step for step.
"""

import collections
import dataclasses
import functools
import json
import logging as std_logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from spt_jax.data import mixture as mixture_lib
from spt_jax.data import prepare as prepare_lib
from spt_jax.evals import heldout as evaluation
from spt_jax.model import flops, sharding
from spt_jax.storage import bucket, files, layout, records
from spt_jax.train import checkpoint, finetune_decay, run_plan, validate
from spt_jax.train import config as config_lib
from spt_jax.train import step as train


@dataclasses.dataclass
class LoopState:
  """What the loop carries between steps besides the TrainState; checkpointed as JSON with each step."""

  step: int = 0
  initial: dict | None = None  # Eval losses before the first step.
  best: dict | None = None  # Step, tokens, eval losses, epochs and MCQA accuracy of the best domain_test.
  evals_without_improvement: int = 0
  # The same of the best domain_valid, when the data has that set (the clean protocol: select on validation).
  best_valid: dict | None = None
  valid_evals_without_improvement: int = 0
  last_eval: dict | None = None
  train_loss: float | None = None
  seconds: float = 0.0  # Wall time of the sessions before this one.
  init_checkpoint: str | None = None  # The step folder (or HF directory) init_from's parameters came from.

  @classmethod
  def from_meta(cls, meta: dict) -> 'LoopState':
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in meta.items() if key in names})


def _track(best: dict | None, waited: int, name: str, losses: dict, record: Callable[[], dict]) -> tuple:
  """(best, evaluations without improvement, improved) of eval set `name` after this evaluation's losses."""
  if best is None or losses.get(name, float('nan')) < best['eval'][name]:
    return record(), 0, True
  return best, waited + 1, False


class _Preemption:
  """Turns SIGTERM into a flag checked after every step (a Cloud TPU preemption notice)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    # With several hosts, JAX's preemption service (checkpoints.manager.reached_preemption) sees the notice and
    # makes every host agree on the step; a per-host flag would send hosts into the save barrier at different
    # steps, so the handler is only installed on a single host.
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: finishing this step, then saving a checkpoint.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _truncate_metrics(path: str, step: int) -> None:
  """Drops logged steps after the restored one, so a resumed run's metrics.jsonl reads as one run."""
  if jax.process_index() == 0:
    files.clean_metrics(path, step)  # Also drops duplicated and out-of-order lines (two runs, one file).


def _check_host_rows(batch_sharding, global_shape) -> None:
  """Each host reads rows [p·B/P, (p+1)·B/P): true unless a non-batch mesh axis (tensor) spans hosts."""
  process, count = jax.process_index(), jax.process_count()
  rows = {
    (index[0].start or 0, global_shape[0] if index[0].stop is None else index[0].stop)
    for index in batch_sharding.addressable_devices_indices_map(global_shape).values()
  }
  per_host = global_shape[0] // count
  if (min(r[0] for r in rows), max(r[1] for r in rows)) != (process * per_host, (process + 1) * per_host):
    raise ValueError(
      f'host {process} of {count} holds batch rows {sorted(rows)} rather than its own slice: a '
      'non-batch mesh axis spans hosts; keep --config.mesh.tensor within one host'
    )


class _QuietOrbax(std_logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the progress log (its warnings and errors still show)."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


@functools.cache
def _start_profiler_server(port: int) -> None:
  jax.profiler.start_server(port)
  logging.info("Profiler server on port %d: capture a trace from TensorBoard's profile tab.", port)


def run(
  config: config_lib.Experiment, workdir: str, *, stage: str | None = None, grid_point=None, data=None
) -> records.RunSummary:
  """Trains one stage into workdir (resuming it when it holds a checkpoint) and returns its summary.

  config: the Experiment an entry point read and validated (validate.check); it is not checked again here.
  data: a PreparedData to reuse (the pipeline prepares once for every stage); None prepares from the config.
  """
  return run_many([Run(config, workdir, stage, grid_point, data)])[0]


@dataclasses.dataclass(frozen=True)
class Run:
  """One stage to train into its own workdir (see `run` for the fields)."""

  config: config_lib.Experiment
  workdir: str
  stage: str | None = None
  grid_point: records.GridPoint | None = None
  data: Any = None

  @property
  def stage_name(self) -> str:
    return self.stage or ('pretrain' if self.config.stage == 'pipeline' else self.config.stage)


def runs_at_once(runs_together: int) -> int:
  """config.runs_together, its 0 resolved: 8 on accelerators, 1 on CPU (a stack of 8 small runs measured 5.2× the
  runs one by one on an H200, and no faster on a 2-core CPU)."""
  return runs_together or (1 if jax.default_backend() == 'cpu' else 8)


def run_many(runs: Sequence[Run], together: int = 1) -> list[records.RunSummary | None]:
  """Trains several runs, each into its own workdir exactly as `run` would, and returns their summaries in order
  (None for a run that did not start because an earlier one was preempted).

  Runs that share every compiled shape (model, optimizer but its learning rate, batch, sequence length, mesh:
  seeds, δs, finetuning grid points) train `together` at a time as one program over a leading run axis
  (Trainer.stacked_train_step), each with its own data order, mixture, schedule, evaluation, early stopping,
  checkpoints, metrics.jsonl and summary.json; a run that stops leaves the stack. 1: one after another.
  Each run's plan is made once, here, from its validated Experiment.
  """
  if together < 1:
    raise ValueError(f'together={together}: train at least 1 run at a time (1: one after another).')
  for r in runs:
    config_lib.require_experiment(r.config, 'loop.run')
  plans = [run_plan.make(r.config, r.stage_name, r.grid_point) for r in runs]
  summaries = dict.fromkeys(range(len(runs)))
  # Held before build creates a checkpoint manager, which would clean up another run's in-flight save (a no-op for
  # folders the caller, main or the pipeline, already holds).
  with files.WorkdirLock([r.workdir for r in runs], enabled=jax.process_index() == 0):
    groups = collections.defaultdict(list)  # Runs that can share one compiled step, by what it depends on.
    for index, plan in enumerate(plans):
      c = plan.config
      groups[(_trainer_key(c, sharding.make_mesh(c.mesh)), c.batch_size, c.data.seq_len)].append(index)
    for group in groups.values():
      for start in range(0, len(group), together):
        if any(s is not None and s.stop_reason == 'preempted' for s in summaries.values()):
          break  # A preemption notice stops the whole set: what has not started starts on the rerun.
        chunk = group[start : start + together]
        built = [_build(plans[index], runs[index].workdir, runs[index].data) for index in chunk]
        if all(isinstance(b, records.RunSummary) for b in built):  # Finished before.
          summaries.update(zip(chunk, built, strict=True))
        elif len(chunk) == 1:
          loop_, state, loop_state = built[0]
          summaries[chunk[0]] = loop_.train(state, loop_state)
        else:  # Finished runs keep their slots, so that the stack is as wide as on a first run.
          summaries.update(zip(chunk, _train_together(built), strict=True))
  return [
    finetune_decay.after_early_stopping(  # WSD finetunes decay from their best step.
      r.config,
      r.workdir,
      summary,
      r.stage or r.config.stage,
      functools.partial(run, stage=r.stage, grid_point=r.grid_point, data=r.data),  # Its decay.
    )
    if summary is not None
    else None
    for r, summary in zip(runs, summaries.values(), strict=True)
  ]


def stack_width(running: int, width: int) -> int:
  """The width of a stack of `width` slots while `running` of its runs still train: halved while the runs fit."""
  while running <= width // 2:
    width //= 2
  return width


def _train_together(entries: list) -> list[records.RunSummary]:
  """Trains runs that share one Trainer as one stack and returns their summaries.

  entries: (loop, state, loop state) of each run of the chunk, or the summary of one that has finished (its slot
  stays, idle). A run that stops keeps its state; the stack shrinks by halves (stack_width), one more compile
  each. A run's arithmetic depends on the width of the stack it is computed in (XLA picks kernels by shape), not
  on its partners or its slot; so that a resumed stack computes every step at the width it had on a first run,
  the runs step in lockstep (one resumed from a later checkpoint waits for the others) and the width at step s
  counts the runs that had not stopped by s, the finished ones included.
  """
  live = [entry for entry in entries if not isinstance(entry, records.RunSummary)]
  trainer = live[0][0].trainer
  for loop_, state, loop_state in live:
    loop_.begin(state, loop_state)
  for loop_, *_ in live:  # The first windows start together, after every first evaluation.
    loop_.last_time = time.time()
  loops = [None if isinstance(entry, records.RunSummary) else entry[0] for entry in entries]
  finished_at = [entry.steps if isinstance(entry, records.RunSummary) else None for entry in entries]
  filler = live[0]  # What an idle slot holds: never updated, its outputs discarded.
  stacked = trainer.stack([(filler if isinstance(entry, records.RunSummary) else entry)[1] for entry in entries])
  del live, filler  # The stack holds the states now (and the step donates it).
  # Each run's learning-rate table, padded with its last value to the longest run's, on the device once.
  width = max(len(loop_.host_lr_table) for loop_ in loops if loop_)
  tables = [loop_.host_lr_table if loop_ else np.zeros(1, np.float32) for loop_ in loops]
  host_tables = np.stack([np.pad(table, (0, width - len(table)), 'edge') for table in tables])
  tables = jax.device_put(host_tables, trainer.replicated)
  batches = {i: loop_.host_batches(loop_.step) for i, loop_ in enumerate(loops) if loop_ and loop_.running()}
  some = next(loop_ for loop_ in loops if loop_)
  shape = (some.c.batch_size, some.c.data.seq_len + 1)
  _check_host_rows(trainer.batch_sharding, shape)
  idle = np.zeros((shape[0] // jax.process_count(), shape[1]), np.int32)  # The batch of an idle slot.
  slots = list(range(len(entries)))  # The run in each slot of the stack (None: idle).
  summaries = {i: loop_.finish() for i, loop_ in enumerate(loops) if loop_ and not loop_.running()}
  waited = collections.Counter()  # Seconds spent waiting for the device's metrics (that is, for the steps).
  with _Preemption() as preemption:
    while True:
      running = [k for k, i in enumerate(slots) if i is not None and loops[i] and loops[i].running()]
      if not running:
        break
      clock = min(loops[slots[k]].step for k in running)
      unstopped = sum(
        bool(loop_ and loop_.running()) or (loop_.step if loop_ else finished_at[i]) > clock
        for i, loop_ in enumerate(loops)
      )
      width = stack_width(unstopped, len(slots))
      if width < len(slots):  # Drop the slots of stopped runs.
        keep = running + [running[0]] * (width - len(running))
        stacked, host_tables = trainer.select(stacked, keep), host_tables[keep]
        tables = jax.device_put(host_tables, trainer.replicated)
        slots = [slots[k] for k in running] + [None] * (width - len(running))
        running = list(range(len(running)))
      stepping = [k for k in running if loops[slots[k]].step == clock]  # Runs ahead of the clock wait.
      active = np.isin(np.arange(len(slots)), stepping)
      rows = np.stack([next(batches[slots[k]]) if a else idle for k, a in enumerate(active)])
      device_batch = jax.make_array_from_process_local_data(trainer.stacked_batch_sharding, rows, (len(rows), *shape))
      stacked, metrics = trainer.stacked_train_step(stacked, device_batch, tables, active)
      view = _StackedMetrics(metrics, waited)
      heldout, evaluating = _stack_heldout(
        trainer, stacked, [loops[i] if i is not None else None for i in slots], stepping, view
      )
      share = evaluating / max(len(heldout), 1)  # Each evaluated run's share of the stack's evaluation.
      for k, i in enumerate(slots):
        if i is not None and loops[i] is not None and i not in summaries:
          loops[i].others_seconds += evaluating - (share if k in heldout else 0.0)
      for k in stepping:
        started, loop_, waited_before = time.time(), loops[slots[k]], waited['seconds']
        loop_.after_step(
          functools.partial(trainer.unstack, stacked, k),
          view.run(k),
          preemption,
          heldout.get(k),
          share if k in heldout else 0.0,
        )
        if not loop_.running():  # Its summary now, with its own wall time.
          summaries[slots[k]] = loop_.finish()
        # The others' time windows exclude this run's evaluation and saving (not the wait for the shared step).
        spent = time.time() - started - (waited['seconds'] - waited_before)
        for i in slots:
          if i is not None and loops[i] is not None and i != slots[k] and i not in summaries:
            loops[i].others_seconds += spent
  summaries.update({i: loop_.finish() for i, loop_ in enumerate(loops) if loop_ and i not in summaries})
  return [summaries[i] if loop_ else entry for i, (loop_, entry) in enumerate(zip(loops, entries, strict=True))]


def _stack_heldout(trainer, stacked, loops: list, stepping: list[int], view: '_StackedMetrics') -> tuple[dict, float]:
  """{slot: held-out results} of the stepping runs whose evaluation is due after this step, computed for all of
  them in one vmapped pass over the stack (always at the stack's width, so that a resumed stack computes the same
  values bit for bit), and its seconds; ({}, 0) when none is due or the runs' eval batches differ (each evaluates
  alone)."""
  due = {k: loops[k].eval_sets_due(loops[k].step + 1) for k in stepping}
  due = {k: names for k, names in due.items() if names is None or names}
  if not due or len({loops[k].evaluator.batch_size for k in due}) > 1:
    return {}, 0.0
  view.host()  # Waiting for the step is the step's time, not evaluation's.
  started = time.time()
  results = evaluation.heldout_stacked(
    [loops[k].evaluator if k in due else None for k in range(len(loops))],
    trainer,
    stacked.params,
    [due.get(k) for k in range(len(loops))],
  )
  return {k: results[k] for k in due}, time.time() - started


class _StackedMetrics:
  """The metrics of one stacked step, read from the device once for all of its runs."""

  def __init__(self, metrics, waited: collections.Counter):
    self.metrics, self._host, self.waited = metrics, None, waited

  def run(self, slot: int) -> '_RunMetrics':
    return _RunMetrics(self, slot)

  def host(self) -> dict:
    if self._host is None:
      started = time.time()
      self._host = jax.device_get(self.metrics)
      self.waited.update(seconds=time.time() - started)
    return self._host


@dataclasses.dataclass(frozen=True)
class _RunMetrics:
  stacked: _StackedMetrics
  slot: int

  def host(self) -> dict:
    return {name: values[self.slot] for name, values in self.stacked.host().items()}


class Built(NamedTuple):
  """A run ready to train: its loop, its TrainState and its LoopState."""

  loop: '_Loop'
  state: Any
  loop_state: LoopState


def build(
  config: config_lib.Experiment, workdir: str, *, stage: str | None = None, grid_point=None, data=None
) -> Built | records.RunSummary:
  """A run ready to train, or the summary of a run that already finished in workdir (config: as in `run`)."""
  config_lib.require_experiment(config, 'loop.build')
  stage = stage or config.stage
  return _build(run_plan.make(config, stage, grid_point), workdir, data)


def _build(plan: run_plan.RunPlan, workdir: str, data) -> Built | records.RunSummary:
  """build() of a validated run's plan."""
  started = time.time()
  c = plan.config
  if not any(isinstance(f, _QuietOrbax) for f in logging.get_absl_logger().filters):
    logging.get_absl_logger().addFilter(_QuietOrbax())
  os.makedirs(workdir, exist_ok=True)
  checkpoint.check_resumable(workdir, c)
  mesh = sharding.make_mesh(c.mesh)
  plan.sequences_per_device(sharding.batch_divisor(mesh))
  trainer = _trainer(c, mesh)
  checkpoints = checkpoint.Checkpoints(workdir, keep=c.keep_checkpoints, keep_steps=tuple(c.finetune.from_steps))
  resume_step = checkpoints.latest_step()
  finished = _finished_summary(workdir, resume_step)
  if finished is not None:
    checkpoints.close()
    logging.info('%s already finished (%s); nothing to do.', bucket.located(workdir), finished.stop_reason)
    return finished
  params = init_checkpoint = None
  if resume_step is None and c.init_from:  # Shapes are checked here, before data or compilation.
    params, init_checkpoint = checkpoint.restore_params_from(c.init_from, trainer.abstract_state.params)
  elif resume_step is None and c.stage == 'finetune':
    raise ValueError('finetuning needs parameters: set --config.init_from to a pretrain workdir or checkpoint.')
  data = prepare_lib.prepare(c) if data is None else data
  validate.check_vocab(c, data)  # The prepared tokenizer against the model, before anything is compiled.
  mixture = mixture_lib.Mixture(
    data.train, mixture_lib.stages_from_config(c, c.stage), c.batch_size, c.data.seq_len, c.seed
  )
  evaluator = evaluation.Evaluator(c, trainer, data)

  if resume_step is not None:
    resume_step, state, meta = checkpoints.restore_newest(trainer.abstract_state)
    loop_state = LoopState.from_meta(meta)
    logging.info('Resumed %s at step %d', bucket.located(workdir), resume_step)
  else:
    state = trainer.init_state(c.seed) if params is None else trainer.state_from_params(params, c.seed)
    loop_state = LoopState(init_checkpoint=init_checkpoint)
  checkpoint.write_config(workdir, c)  # Only now that the run really starts: a rejected config leaves none.
  if data.tokenizer is not None and jax.process_index() == 0:  # The run carries its tokenizer to any machine.
    files.write_text(os.path.join(workdir, layout.TOKENIZER), data.tokenizer.to_str())
  loop_ = _Loop(plan, workdir, trainer, checkpoints, mixture, evaluator, data)
  loop_.setup_seconds = time.time() - started  # Data, restore, evaluation sets: this session's set-up.
  return Built(loop_, state, loop_state)


_TRAINERS = collections.OrderedDict()  # The few last Trainers, by everything their compiled steps depend on.


def _trainer_key(c, mesh) -> str:
  """Everything a Trainer's compiled steps depend on (not the learning rate: an input of the step)."""
  optimizer = {k: v for k, v in config_lib.to_dict(c.optimizer).items() if k != 'lr'}
  devices = [mesh.axis_names, mesh.devices.shape, [d.id for d in mesh.devices.flat]]
  return json.dumps([config_lib.to_dict(c.model), optimizer, c.grad_accum_steps, *devices], sort_keys=True, default=str)


def _trainer(c, mesh) -> train.Trainer:
  """A Trainer whose learning-rate schedule is an input of its step, shared by runs that differ only in their
  schedule: every point of a finetuning grid (and every checkpoint finetuned from) reuses one compiled step."""
  key = _trainer_key(c, mesh)
  if key not in _TRAINERS:
    _TRAINERS[key] = train.Trainer(
      c.model,
      mesh,
      functools.partial(train.make_optimizer, c),
      z_loss=c.optimizer.z_loss,
      microbatches=c.grad_accum_steps,
    )
    while len(_TRAINERS) > 2:
      _TRAINERS.popitem(last=False)
  _TRAINERS.move_to_end(key)
  return _TRAINERS[key]


def _finished_summary(workdir: str, latest_step) -> records.RunSummary | None:
  """The summary of a run that ended on its budget or by early stopping at its latest checkpoint."""
  path = os.path.join(workdir, layout.SUMMARY)
  if latest_step is None or not os.path.exists(path):
    return None
  with open(path) as f:
    summary = records.RunSummary.from_json(json.load(f))
  return summary if summary.finished and summary.steps == latest_step else None


def _step_of(step_dir: str | None) -> int | None:
  """The step a checkpoint folder holds (None for a Hugging Face directory or no folder)."""
  name = os.path.basename(step_dir or '')
  return int(name) if name.isdigit() else None


class _Loop:
  """One training run between steps: logging, evaluation, early stopping, checkpoints."""

  def __init__(self, plan: run_plan.RunPlan, workdir, trainer, checkpoints, mixture, evaluator, data):
    c = plan.config
    self.plan, self.c, self.workdir, self.trainer, self.checkpoints = plan, c, workdir, trainer, checkpoints
    self.mixture, self.evaluator, self.data = mixture, evaluator, data
    self.steps, self.tokens_per_step, self.schedule = plan.steps, plan.tokens_per_step, plan.schedule
    table = self.host_lr_table = plan.lr_table()  # An input of the step: no recompiling per learning rate or warmup.
    self.lr_table = jax.make_array_from_callback(table.shape, trainer.replicated, lambda index: table[index])
    self.metrics_path = os.path.join(workdir, layout.METRICS)
    self.writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    self.flops_per_token = flops.train_flops_per_token(c.model, c.data.seq_len)
    self.peak_flops = flops.peak_flops(c.peak_flops)
    self.stop_reason = None
    self.setup_seconds = 0.0  # Set by build: data, restore and evaluation sets before the first step.
    self.keep_steps = set(c.finetune.from_steps)  # Checkpointed and kept: finetuned from.
    # Steps/s and the ETA to TensorBoard and the log; a profiler trace of chosen steps into the workdir.
    self.periodic_actions = [
      periodic_actions.ReportProgress(
        num_train_steps=self.steps, writer=self.writer, every_steps=c.log_every or None, every_secs=None
      )
    ]
    if c.profile_from_step > 0:
      self.periodic_actions.append(
        periodic_actions.Profile(
          logdir=workdir,
          num_profile_steps=c.profile_steps,
          profile_duration_ms=0,
          first_profile=c.profile_from_step,
          every_steps=None,
          every_secs=None,
        )
      )
    if c.profiler_port > 0:  # TensorBoard's "capture profile" traces the running loop on demand.
      _start_profiler_server(c.profiler_port)

  def host_batches(self, start_step: int):
    """This host's rows of the batches from start_step on, read ahead by Grain threads while the device works."""
    dataset = self.mixture.batch_dataset(
      jax.process_index(), jax.process_count(), start_step, max(self.steps - start_step, 1)
    )
    # Rows read by range from remote token files wait on the network, not the CPU: more steps read at once.
    remote = any(getattr(rows, 'remote', False) for rows in self.mixture.sources.values())
    options = grain.ReadOptions(num_threads=16, prefetch_buffer_size=32) if remote else grain.ReadOptions(2, 4)
    for local in dataset.to_iter_dataset(options):
      yield np.asarray(local, np.int32)

  def device_batches(self, start_step: int):
    """The global batches from start_step on, each host contributing its rows."""
    shape = (self.c.batch_size, self.c.data.seq_len + 1)
    _check_host_rows(self.trainer.batch_sharding, shape)
    for local in self.host_batches(start_step):
      yield jax.make_array_from_process_local_data(self.trainer.batch_sharding, local, shape)

  def log(self, step: int, scalars: dict) -> None:
    accounting = self.mixture.accounting(step)
    record = {'step': step, 'tokens': step * self.tokens_per_step, 'lr': float(self.schedule(max(step - 1, 0)))}
    record.update({f'data/tokens/{s}': int(n) for s, n in accounting['tokens'].items()})
    record.update({f'data/epochs/{s}': float(e) for s, e in accounting['epochs'].items()})
    record.update(scalars)
    self.writer.write_scalars(step, {k: v for k, v in record.items() if k != 'step'})
    if jax.process_index() == 0:
      with open(self.metrics_path, 'a') as f:
        f.write(files.dumps(record) + '\n')

  def read(self, step: int, metrics) -> dict | None:
    """Host values of a finished step's metrics; None (and the stop reason set) when the loss is not finite."""
    host = metrics.host() if isinstance(metrics, _RunMetrics) else jax.device_get(metrics)
    values = {f'train/{k}': float(v) for k, v in host.items() if k != 'lr'}
    if not all(math.isfinite(values.get(f'train/{k}', 0.0)) for k in ('loss', 'grad_norm', 'param_norm')):
      logging.error(
        'Step %d: non-finite training loss or gradient (%s); stopping without saving. The last '
        'good checkpoint in %s is untouched; lower optimizer.lr or raise warmup.',
        step,
        values,
        self.checkpoints.directory,
      )
      self.stop_reason = 'nonfinite_loss'
      return None
    return values

  def eval_results(self, params_of: Callable[[], Any], names=None, heldout: dict | None = None) -> dict:
    """The results of the eval sets due (default: all), with the multiple-choice tasks whenever domain_test is due;
    heldout: the held-out sets' results computed already (by the run's stack)."""
    results = self.evaluator.heldout(params_of(), names) if heldout is None else dict(heldout)
    if self.evaluator.mcqa_tasks and (names is None or 'domain_test' in names):
      results.update(self.evaluator.mcqa(params_of()))
    return results

  def evaluate(self, step: int, results: dict, loop_state: LoopState, names=None) -> bool:
    """Records the results of the eval sets due (default: all); whether domain_test improved (updating the best
    and the patience count; a step that does not evaluate domain_test changes neither). domain_valid, when the
    data has it, keeps its own best and patience count the same way."""
    losses = evaluation.losses(results)
    previous = (loop_state.last_eval or {}).get('eval') or {}
    loop_state.last_eval = {'step': step, 'eval': {**previous, **losses}}  # The latest loss of every set.

    def record():
      return {
        'step': step,
        'tokens': step * self.tokens_per_step,
        'eval': losses,
        'epochs': self.mixture.accounting(step)['epochs'],
        'mcqa': evaluation.accuracies(results),
      }

    if 'domain_valid' in losses:
      loop_state.best_valid, loop_state.valid_evals_without_improvement, _ = _track(
        loop_state.best_valid, loop_state.valid_evals_without_improvement, 'domain_valid', losses, record
      )
    if names is not None and 'domain_test' not in names:
      return False
    loop_state.best, loop_state.evals_without_improvement, improved = _track(
      loop_state.best, loop_state.evals_without_improvement, 'domain_test', losses, record
    )
    return improved

  def patience_spent(self, loop_state: LoopState) -> bool:
    """Early stopping: domain_test (and domain_valid, when evaluated) without improvement for `patience` evals;
    with both sets the run goes on until both have stopped, so that either protocol's choice is in its record."""
    patience = self.c.patience
    if not patience or loop_state.evals_without_improvement < patience:
      return False
    return 'domain_valid' not in self.evaluator.sets or loop_state.valid_evals_without_improvement >= patience

  def seconds(self, loop_state: LoopState) -> float:
    """Wall time of the run so far, over all its sessions (resumptions included)."""
    return loop_state.seconds + time.time() - self.started

  def save(self, step: int, state, loop_state: LoopState, domain_test_loss=None) -> None:
    meta = dict(
      dataclasses.asdict(loop_state), step=step, tokens=step * self.tokens_per_step, seconds=self.seconds(loop_state)
    )
    if self.checkpoints.save(step, state, meta, domain_test_loss=domain_test_loss):
      logging.info('Checkpoint %d started.', step)
    bucket.push_all(jax.process_index(), jax.process_count())  # A bucket's mirror: the metrics so far go there.

  def progress(self, step: int, loss: float, tokens_per_second: float) -> dict:
    """Logs the step's progress line; returns its performance scalars (tokens/s, and MFU when the peak is known)."""
    mfu = flops.mfu(self.flops_per_token, tokens_per_second, self.peak_flops)
    logging.info(
      'step %d/%d tokens %.4g loss %.4f %.4g tokens/s%s',
      step,
      self.steps,
      step * self.tokens_per_step,
      loss,
      tokens_per_second,
      '' if mfu is None else f' MFU {100 * mfu:.1f}%',
    )
    return {'perf/tokens_per_second': tokens_per_second, **({} if mfu is None else {'perf/mfu': mfu})}

  def is_due(self, every: int, step: int) -> bool:
    return bool(every) and step % every == 0

  def eval_sets_due(self, step: int):
    """None (every set) at the end or when no set has its own interval; else the names due at this step."""
    intervals = dict(self.c.eval_intervals)
    if step == self.steps or not intervals:
      return None if step == self.steps or self.is_due(self.c.eval_every, step) else []
    return [name for name in self.evaluator.sets if self.is_due(intervals.get(name, self.c.eval_every), step)]

  def train(self, state, loop_state: LoopState) -> records.RunSummary:
    """Trains from loop_state.step to the end of the run (or a stop) and returns the summary."""
    self.begin(state, loop_state)
    with _Preemption() as preemption:
      batches = self.device_batches(self.step)
      while self.running():
        state, metrics = self.trainer.train_step(state, next(batches), self.lr_table)
        self.after_step(lambda: state, metrics, preemption)  # noqa: B023  called before `state` changes again
    return self.finish()

  def begin(self, state, loop_state: LoopState) -> None:
    """The start of this session: metrics logged after the restored step dropped; at step 0, the first evaluation."""
    self.started = time.time()
    self.loop_state, self.step = loop_state, loop_state.step
    self.first_step = self.last_step = self.step
    self.pending = None  # (step, metrics) of the step dispatched last: read after the next one is dispatched.
    self.timing = collections.Counter()  # This session's training and evaluation time, for the summary.
    # A fresh start drops what a run killed before its first checkpoint logged; a resume, the steps after it.
    _truncate_metrics(self.metrics_path, self.step if loop_state.initial is not None else -1)
    if self.step == 0 and loop_state.initial is None:
      evaluating = time.time()
      results = self.eval_results(lambda: state.params)
      self.evaluate(0, results, loop_state)
      self.timing.update(eval_seconds=time.time() - evaluating)
      loop_state.initial = evaluation.losses(results)
      self.log(0, evaluation.scalars(results))
    self.last_time = time.time()
    self.others_seconds = 0.0  # Seconds the other runs of a stack spent on their own bookkeeping since last_time.

  def running(self) -> bool:
    return self.step < self.steps and self.stop_reason is None

  def after_step(
    self,
    state_of: Callable[[], Any],
    metrics,
    preemption: _Preemption,
    heldout: dict | None = None,
    heldout_seconds: float = 0.0,
  ) -> None:
    """The bookkeeping of a step just dispatched: the previous step's metrics checked, then (when due) progress,
    evaluation, early stopping and checkpoints. state_of() gives the state after the step (read only when due).
    heldout: the results of the held-out sets due, computed by the run's stack in heldout_seconds (its share)."""
    c, loop_state = self.c, self.loop_state
    state_of = functools.cache(state_of)  # Read once for evaluation and saving.
    self.step = step = self.step + 1
    for action in self.periodic_actions:
      action(step)
    if self.pending is not None and self.read(*self.pending) is None:
      return
    self.pending = (step, metrics)
    due = self.eval_sets_due(step)
    is_eval = due is None or bool(due)
    is_checkpoint = self.is_due(c.checkpoint_every, step) or step in self.keep_steps
    preempted = preemption.requested or (jax.process_count() > 1 and self.checkpoints.manager.reached_preemption(step))
    if not (self.is_due(c.log_every, step) or is_eval or is_checkpoint or preempted):
      return
    values = self.read(*self.pending)
    self.pending = None
    if values is None:
      return
    loop_state.train_loss = values['train/loss']
    now = time.time()
    # Without what other runs of a stack did meanwhile, nor this run's share of the stack's evaluation.
    window = now - self.last_time - self.others_seconds - heldout_seconds
    self.timing.update(other_runs_seconds=self.others_seconds)
    tokens_per_second = self.tokens_per_step * max(step - self.last_step, 1) / window
    if self.last_step > self.first_step:  # Throughput excludes the first window (compilation) and evaluations.
      self.timing.update(train_seconds=window, train_steps=step - self.last_step)  # Counter: adds.
    else:
      self.timing.update(first_window_seconds=window)
    scalars = dict(values, **self.progress(step, values['train/loss'], tokens_per_second))
    domain_test, improved = None, False
    if is_eval:
      eval_started = time.time()
      results = self.eval_results(lambda: state_of().params, due, heldout)
      improved = self.evaluate(step, results, loop_state, due)
      self.timing.update(eval_seconds=time.time() - eval_started + heldout_seconds)
      scalars.update(evaluation.scalars(results))
      domain_test = results.get('domain_test', {}).get('loss')
    self.log(step, scalars)
    if self.patience_spent(loop_state):
      self.stop_reason = 'early_stopping'
    # Checkpoint on schedule, at the end, on preemption and (with early stopping) at each new best.
    if (
      is_checkpoint
      or preempted
      or step == self.steps
      or self.stop_reason
      or (c.patience and domain_test is not None and improved)
    ):
      saving = time.time()
      self.save(step, state_of(), loop_state, domain_test)
      self.timing.update(checkpoint_seconds=time.time() - saving)
    if preempted:
      self.stop_reason = 'preempted'
    self.last_time, self.last_step, self.others_seconds = time.time(), step, 0.0

  def finish(self) -> records.RunSummary:
    """The end of the session: the last metrics checked, checkpoints committed, the summary written."""
    if self.pending is not None and self.stop_reason is None:
      self.read(*self.pending)
    waiting = time.time()
    self.checkpoints.wait()  # The summary only speaks of committed checkpoints.
    self.timing.update(checkpoint_seconds=time.time() - waiting)
    self.writer.flush()
    self.writer.close()
    summary = self.summarise(self.step, self.loop_state)
    self.checkpoints.close()
    return summary

  def time_split(self) -> dict:
    """Where this session's wall time went, in seconds: set-up (data, restore), the first window of steps (with
    the compiles), the other steps, evaluation, checkpointing, and the rest (logging, the loop's own work)."""
    split = {
      'setup': self.setup_seconds,
      'first_window': self.timing['first_window_seconds'],
      'steps': self.timing['train_seconds'],
      'eval': self.timing['eval_seconds'],
      'checkpoint': self.timing['checkpoint_seconds'],
      'other_runs': self.timing['other_runs_seconds'],  # Trained together: the other runs' evaluations and saves.
    }
    wall = split['setup'] + time.time() - self.started
    return {
      **{k: round(v, 3) for k, v in split.items()},
      'other': round(wall - sum(split.values()), 3),
      'wall': round(wall, 3),
    }

  def summarise(self, step: int, loop_state: LoopState) -> records.RunSummary:
    c, stop_reason, train_seconds = self.c, self.stop_reason or 'budget', self.timing['train_seconds']
    summary = records.RunSummary(
      stage=c.stage,
      steps=step,
      tokens=step * self.tokens_per_step,
      stop_reason=stop_reason,
      initial=loop_state.initial,
      final=(loop_state.last_eval or {}).get('eval'),
      best=records.Evaluation.from_json(loop_state.best),
      best_valid=records.Evaluation.from_json(loop_state.best_valid),
      data={k: dict(v) for k, v in self.mixture.accounting(step).items()},
      model=c.model.preset,
      **mixture_lib.summary_deltas(c, step * self.tokens_per_step),
      params=flops.count_params(c.model)[0],
      seq_len=c.data.seq_len,
      tokenizer=(self.data.metadata or {}).get('tokenizer', ''),
      sources=prepare_lib.source_digests(self.data.metadata or {}),
      lr=c.optimizer.lr,
      warmup_steps=self.plan.warmup_steps,
      batch_size=c.batch_size,
      init_from=c.init_from,
      workdir=bucket.located(self.workdir),  # A bucket's mirror: the bucket's URL.
      init_checkpoint=loop_state.init_checkpoint,
      init_step=_step_of(loop_state.init_checkpoint),
      last_checkpoint=self.checkpoints.latest_step(),
      wall_time_s=round(self.seconds(loop_state), 1),
      train_tokens_per_second=self.timing['train_steps'] * self.tokens_per_step / max(train_seconds, 1e-9),
      eval_seconds=self.timing['eval_seconds'],
      timing=self.time_split(),
    )
    if jax.process_index() == 0:  # Atomically: a rerun reads it to skip finished runs.
      files.write_json(os.path.join(self.workdir, layout.SUMMARY), summary)
    logging.info(
      '%s finished: %s after %d steps; best domain_test %s',
      c.stage,
      stop_reason,
      step,
      summary.best.eval.get('domain_test') if summary.best else None,
    )
    return summary
