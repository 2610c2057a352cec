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

import grain
import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from spt_jax.data import mixture as mixture_lib
from spt_jax.data import prepare as prepare_lib
from spt_jax.evals import heldout as evaluation
from spt_jax.model import flops, sharding
from spt_jax.storage import files
from spt_jax.train import checkpoint, finetune_decay, run_plan, validate
from spt_jax.train import step as train


@dataclasses.dataclass
class LoopState:
  """What the loop carries between steps besides the TrainState; checkpointed as JSON with each step."""

  step: int = 0
  initial: dict | None = None  # Eval losses before the first step.
  best: dict | None = None  # Step, tokens, eval losses, epochs and MCQA accuracy of the best domain_test.
  evals_without_improvement: int = 0
  last_eval: dict | None = None
  train_loss: float | None = None
  seconds: float = 0.0  # Wall time of the sessions before this one.
  init_checkpoint: str | None = None  # The step folder (or HF directory) init_from's parameters came from.

  @classmethod
  def from_meta(cls, meta: dict) -> 'LoopState':
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in meta.items() if key in names})


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


def run(config, workdir: str, *, stage: str | None = None, grid_point=None, data=None) -> dict:
  """Trains one stage into workdir (resuming it when it holds a checkpoint) and returns its summary.

  data: a PreparedData to reuse (the pipeline prepares once for every stage); None prepares from the config.
  """
  stage_name = stage or ('pretrain' if config.stage == 'pipeline' else config.stage)
  validate.check(config, data=data, stage=stage_name, grid_point=grid_point, vocab=False)  # Before the folder exists.
  # Held before build creates the checkpoint manager, which would clean up another run's in-flight save (a no-op
  # when the caller, main or the pipeline, already holds it).
  with files.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    built = build(config, workdir, stage=stage, grid_point=grid_point, data=data, checked=True)
    summary = built if isinstance(built, dict) else built[0].train(*built[1:])
  return finetune_decay.after_early_stopping(
    config,
    workdir,
    summary,
    stage or config.stage,
    functools.partial(run, stage=stage, grid_point=grid_point, data=data),
  )  # WSD finetunes decay from their best step.


def build(config, workdir: str, *, stage: str | None = None, grid_point=None, data=None, checked: bool = False):
  """(loop, state, loop state) ready to train, or the summary of a run that already finished in workdir.

  checked: the caller (run) already validated the config before taking the workdir's lock.
  """
  plan = run_plan.make(config, stage or config.stage, grid_point)
  c = plan.config
  if not any(isinstance(f, _QuietOrbax) for f in logging.get_absl_logger().filters):
    logging.get_absl_logger().addFilter(_QuietOrbax())
  if not checked:
    validate.check(config, data=data, stage=c.stage, grid_point=grid_point, vocab=False)  # Before any write.
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
    logging.info('%s already finished (%s); nothing to do.', workdir, finished['stop_reason'])
    return finished
  params = init_checkpoint = None
  if resume_step is None and c.init_from:  # Shapes are checked here, before data or compilation.
    params, init_checkpoint = checkpoint.restore_params_from(c.init_from, trainer.abstract_state.params)
  elif resume_step is None and c.stage == 'finetune':
    raise ValueError('finetuning needs parameters: set --config.init_from to a pretrain workdir or checkpoint.')
  if data is None:
    validate.check_vocab(c)  # The tokenizer against the model, before data is prepared.
  data = prepare_lib.prepare(c) if data is None else data
  validate.check_vocab(c, data)  # The prepared tokenizer against the model, before anything is compiled.
  mixture = mixture_lib.Mixture(
    data.train, mixture_lib.stages_from_config(c, c.stage), c.batch_size, c.data.seq_len, c.seed
  )
  evaluator = evaluation.Evaluator(c, trainer, data)

  if resume_step is not None:
    resume_step, state, meta = checkpoints.restore_newest(trainer.abstract_state)
    loop_state = LoopState.from_meta(meta)
    logging.info('Resumed %s at step %d', workdir, resume_step)
  else:
    state = trainer.init_state(c.seed) if params is None else trainer.state_from_params(params, c.seed)
    loop_state = LoopState(init_checkpoint=init_checkpoint)
  checkpoint.write_config(workdir, c)  # Only now that the run really starts: a rejected config leaves none.
  if data.tokenizer is not None and jax.process_index() == 0:  # The run carries its tokenizer to any machine.
    files.write_text(os.path.join(workdir, checkpoint.TOKENIZER_FILE), data.tokenizer.to_str())
  return _Loop(plan, workdir, trainer, checkpoints, mixture, evaluator, data), state, loop_state


_TRAINERS = collections.OrderedDict()  # The few last Trainers, by everything their compiled steps depend on.


def _trainer(c, mesh) -> train.Trainer:
  """A Trainer whose learning-rate schedule is an input of its step, shared by runs that differ only in their
  schedule: every point of a finetuning grid (and every checkpoint finetuned from) reuses one compiled step."""
  optimizer = {k: v for k, v in c.optimizer.to_dict().items() if k != 'lr'}
  key = json.dumps(
    [
      c.model.to_dict(),
      optimizer,
      c.grad_accum_steps,
      mesh.axis_names,
      mesh.devices.shape,
      [d.id for d in mesh.devices.flat],
    ],
    sort_keys=True,
    default=str,
  )
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


def _finished_summary(workdir: str, latest_step) -> dict | None:
  """The summary of a run that ended on its budget or by early stopping at its latest checkpoint."""
  path = os.path.join(workdir, 'summary.json')
  if latest_step is None or not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  if summary.get('stop_reason') in ('budget', 'early_stopping') and summary.get('steps') == latest_step:
    return summary
  return None


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
    table = plan.lr_table()  # An input of the step: no recompiling per learning rate or warmup.
    self.lr_table = jax.make_array_from_callback(table.shape, trainer.replicated, lambda index: table[index])
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    self.flops_per_token = flops.train_flops_per_token(c.model, c.data.seq_len)
    self.peak_flops = flops.peak_flops(c.peak_flops)
    self.stop_reason = None
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

  def batches(self, start_step: int):
    """This host's rows of the batches from start_step on, read ahead by Grain threads while the device works."""
    shape = (self.c.batch_size, self.c.data.seq_len + 1)
    _check_host_rows(self.trainer.batch_sharding, shape)
    dataset = self.mixture.batch_dataset(
      jax.process_index(), jax.process_count(), start_step, max(self.steps - start_step, 1)
    )
    for local in dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)):
      yield jax.make_array_from_process_local_data(self.trainer.batch_sharding, np.asarray(local, np.int32), shape)

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
    values = {f'train/{k}': float(v) for k, v in jax.device_get(metrics).items() if k != 'lr'}
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

  def evaluate(self, step: int, state, loop_state: LoopState, names=None) -> tuple[dict, bool]:
    """The results of the eval sets due (default: all), and whether domain_test improved (updating the best and
    the patience count; a step that does not evaluate domain_test changes neither)."""
    results = self.evaluator(state.params, names, mcqa=names is None or 'domain_test' in names)
    losses = evaluation.losses(results)
    previous = (loop_state.last_eval or {}).get('eval') or {}
    loop_state.last_eval = {'step': step, 'eval': {**previous, **losses}}  # The latest loss of every set.
    if names is not None and 'domain_test' not in names:
      return results, False
    domain = losses.get('domain_test', float('nan'))
    improved = loop_state.best is None or domain < loop_state.best['eval']['domain_test']
    if improved:
      loop_state.best = {
        'step': step,
        'tokens': step * self.tokens_per_step,
        'eval': losses,
        'epochs': self.mixture.accounting(step)['epochs'],
        'mcqa': evaluation.accuracies(results),
      }
      loop_state.evals_without_improvement = 0
    else:
      loop_state.evals_without_improvement += 1
    return results, improved

  def seconds(self, loop_state: LoopState) -> float:
    """Wall time of the run so far, over all its sessions (resumptions included)."""
    return loop_state.seconds + time.time() - self.started

  def save(self, step: int, state, loop_state: LoopState, domain_test_loss=None) -> None:
    meta = dict(
      dataclasses.asdict(loop_state), step=step, tokens=step * self.tokens_per_step, seconds=self.seconds(loop_state)
    )
    if self.checkpoints.save(step, state, meta, domain_test_loss=domain_test_loss):
      logging.info('Checkpoint %d started.', step)

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

  def train(self, state, loop_state: LoopState) -> dict:
    c = self.c
    self.started = time.time()
    step = first_step = loop_state.step
    self.timing = collections.Counter()  # This session's training and evaluation time, for the summary.
    # A fresh start drops what a run killed before its first checkpoint logged; a resume, the steps after it.
    _truncate_metrics(self.metrics_path, step if loop_state.initial is not None else -1)
    if step == 0 and loop_state.initial is None:
      results, _ = self.evaluate(0, state, loop_state)
      loop_state.initial = evaluation.losses(results)
      self.log(0, evaluation.scalars(results))
    with _Preemption() as preemption:
      pending = None  # (step, device metrics) of the step dispatched last: read after the next is dispatched.
      last_time, last_step = time.time(), step
      batches = self.batches(step)
      while step < self.steps and self.stop_reason is None:
        state, metrics = self.trainer.train_step(state, next(batches), self.lr_table)
        step += 1
        for action in self.periodic_actions:
          action(step)
        if pending is not None and self.read(*pending) is None:
          break
        pending = (step, metrics)
        due = self.eval_sets_due(step)
        is_eval = due is None or bool(due)
        is_checkpoint = self.is_due(c.checkpoint_every, step) or step in self.keep_steps
        preempted = preemption.requested or (
          jax.process_count() > 1 and self.checkpoints.manager.reached_preemption(step)
        )
        if not (self.is_due(c.log_every, step) or is_eval or is_checkpoint or preempted):
          continue
        values = self.read(*pending)
        pending = None
        if values is None:
          break
        loop_state.train_loss = values['train/loss']
        now = time.time()
        tokens_per_second = self.tokens_per_step * max(step - last_step, 1) / (now - last_time)
        if last_step > first_step:  # Throughput excludes the first window (compilation) and evaluations.
          self.timing.update(train_seconds=now - last_time, train_steps=step - last_step)  # Counter: adds.
        scalars = dict(values, **self.progress(step, values['train/loss'], tokens_per_second))
        domain_test, improved = None, False
        if is_eval:
          eval_started = time.time()
          results, improved = self.evaluate(step, state, loop_state, due)
          self.timing.update(eval_seconds=time.time() - eval_started)
          scalars.update(evaluation.scalars(results))
          domain_test = results.get('domain_test', {}).get('loss')
        self.log(step, scalars)
        if c.patience and loop_state.evals_without_improvement >= c.patience:
          self.stop_reason = 'early_stopping'
        # Checkpoint on schedule, at the end, on preemption and (with early stopping) at each new best.
        if (
          is_checkpoint
          or preempted
          or step == self.steps
          or self.stop_reason
          or (c.patience and domain_test is not None and improved)
        ):
          self.save(step, state, loop_state, domain_test)
        if preempted:
          self.stop_reason = 'preempted'
        last_time, last_step = time.time(), step
      if pending is not None and self.stop_reason is None:
        self.read(*pending)
    self.checkpoints.wait()  # The summary only speaks of committed checkpoints.
    self.writer.flush()
    self.writer.close()
    summary = self.summarise(step, loop_state)
    self.checkpoints.close()
    return summary

  def summarise(self, step: int, loop_state: LoopState) -> dict:
    c, stop_reason, train_seconds = self.c, self.stop_reason or 'budget', self.timing['train_seconds']
    accounting = self.mixture.accounting(step)
    summary = {
      'stage': c.stage,
      'steps': step,
      'tokens': step * self.tokens_per_step,
      'stop_reason': stop_reason,
      'initial': loop_state.initial,
      'final': (loop_state.last_eval or {}).get('eval'),
      'best': loop_state.best,
      'data': {k: dict(v) for k, v in accounting.items()},
      'model': c.model.get('preset', ''),
      **mixture_lib.summary_deltas(c, step * self.tokens_per_step),
      'params': flops.count_params(c.model)[0],
      'seq_len': c.data.seq_len,
      'tokenizer': (self.data.metadata or {}).get('tokenizer', ''),
      'lr': c.optimizer.lr,
      'warmup_steps': self.plan.warmup_steps,
      'batch_size': c.batch_size,
      'init_from': c.init_from,
      'workdir': os.path.abspath(self.workdir),
      'init_checkpoint': loop_state.init_checkpoint,
      'init_step': _step_of(loop_state.init_checkpoint),
      'last_checkpoint': self.checkpoints.latest_step(),
      'wall_time_s': round(self.seconds(loop_state), 1),
      'train_tokens_per_second': self.timing['train_steps'] * self.tokens_per_step / max(train_seconds, 1e-9),
      'eval_seconds': self.timing['eval_seconds'],
    }
    if jax.process_index() == 0:  # Atomically: a rerun reads it to skip finished runs.
      files.write_json(os.path.join(self.workdir, 'summary.json'), summary)
    logging.info(
      '%s finished: %s after %d steps; best domain_test %s',
      c.stage,
      stop_reason,
      step,
      (summary['best'] or {}).get('eval', {}).get('domain_test'),
    )
    return summary
