"""The training loop for any stage: resume, train, evaluate, early-stop, checkpoint, log, summarise.

Pretraining and finetuning differ only in `stage_config` (the effective config of a stage); everything after it
is one code path. The batch of step s is a pure function of s and the restored state is exact, so a run killed
at any point and restarted continues with the same losses step for step.
"""

import collections
import functools
import json
import logging as std_logging
import math
import os
import signal
import threading
import time

from absl import logging
from clu import metric_writers
import grain
import jax
import ml_collections
import numpy as np

from spt_jax import checkpoint
from spt_jax import evaluation
from spt_jax import schedules
from spt_jax import sharding
from spt_jax import train

# Peak dense bf16 FLOP/s per chip, for MFU; unknown devices (CPUs) report no MFU unless config.peak_flops is set.
PEAK_FLOPS = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v5': 459e12,
              'TPU v6 lite': 918e12, 'TPU v6e': 918e12, 'A100': 312e12, 'H100': 989e12, 'H200': 989e12,
              'B200': 2250e12}


def stage_config(config, stage: str, grid_point=None) -> ml_collections.ConfigDict:
  """The effective config of a stage: the ONE place where pretraining and finetuning differ.

  Finetuning (Appendix B): its own batch size, weight decay and schedule (constant with warmup), the (lr, warmup)
  of a grid point (default: the grid's first), evaluation cadence and early-stopping patience, at most
  finetune.max_steps steps, and an untied output head when finetune.untie_embeddings.
  """
  if stage not in ('pretrain', 'finetune'):
    raise ValueError(f'stage={stage!r} cannot be trained directly; use pretrain or finetune (the pipeline runs '
                     'both).')
  c = ml_collections.ConfigDict(config.to_dict())
  c.stage = stage
  if stage == 'finetune':
    ft = c.finetune
    lr, warmup = grid_point if grid_point is not None else tuple(ft.grid[0])
    c.batch_size = ft.batch_size
    c.optimizer.lr, c.optimizer.weight_decay = float(lr), ft.weight_decay
    c.schedule.kind, c.schedule.warmup_steps, c.schedule.warmup_tokens = ft.schedule, int(warmup), 0
    c.eval_every, c.patience = ft.eval_every, ft.patience
    c.steps, c.tokens = ft.max_steps, 0
    if ft.untie_embeddings:
      c.model.tie_embeddings = False
    if ft.from_steps:
      ft.from_steps = ()  # Pretraining checkpoints to finetune from; a finetune keeps no such steps.
  return c


def total_steps(c) -> int:
  """The run length in steps: config.steps, else config.tokens over the tokens of one batch."""
  steps = c.steps or c.tokens // (c.batch_size * c.data.seq_len)
  if steps <= 0:
    raise ValueError(f'the run has no steps (steps={c.steps}, tokens={c.tokens}); set --config.steps or '
                     '--config.tokens.')
  return int(steps)


def make_mixture(c, data):
  """The training mixture of c.stage over the prepared sources."""
  from spt_jax.data import mixture as mixture_lib  # pylint: disable=g-import-not-at-top
  stages = mixture_lib.stages_from_config(c, c.stage)
  return mixture_lib.Mixture(data.train, stages, c.batch_size, c.data.seq_len, c.seed)


def prepare_data(c):
  from spt_jax.data import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  return prepare_lib.prepare(c)


def peak_flops(c) -> float:
  """Peak FLOP/s of all devices together, for MFU: config.peak_flops (per chip) when > 0, the table for known
  accelerators, else a quick matmul measurement (once per process); config.peak_flops < 0 turns MFU off."""
  if c.peak_flops < 0:
    return 0.0
  if c.peak_flops > 0:
    return float(c.peak_flops) * jax.device_count()
  kind = jax.devices()[0].device_kind
  # The most specific name wins: 'TPU v5 lite' (v5e) must not match 'TPU v5' (v5p).
  matches = sorted((name for name in PEAK_FLOPS if name.lower() in kind.lower()), key=len)
  per_chip = PEAK_FLOPS[matches[-1]] if matches else 0.0
  return per_chip * jax.device_count() if per_chip else _measured_peak_flops()


@functools.cache
def _measured_peak_flops() -> float:
  try:
    from spt_jax import bench  # pylint: disable=g-import-not-at-top
    cpu = jax.default_backend() == 'cpu'
    return bench.peak_matmul_flops('float32' if cpu else 'bfloat16', 1024 if cpu else 4096, repeats=3)
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('No peak FLOP/s measurement (%s): MFU is not reported.', error)
    return 0.0


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
  if not os.path.exists(path) or jax.process_index() != 0:
    return
  def kept(line: str) -> bool:  # A line cut short by a kill is dropped with the steps after the restore.
    try:
      return json.loads(line)['step'] <= step
    except (json.JSONDecodeError, KeyError):
      return False
  with open(path) as f:
    lines = [line for line in f if line.strip() and kept(line)]
  with open(path + '.tmp', 'w') as f:
    f.writelines(lines)
  os.replace(path + '.tmp', path)


def _check_host_rows(batch_sharding, global_shape) -> None:
  """Each host reads rows [p·B/P, (p+1)·B/P): true unless a non-batch mesh axis (tensor) spans hosts."""
  process, count = jax.process_index(), jax.process_count()
  rows = {(index[0].start or 0, global_shape[0] if index[0].stop is None else index[0].stop)
          for index in batch_sharding.addressable_devices_indices_map(global_shape).values()}
  per_host = global_shape[0] // count
  if (min(r[0] for r in rows), max(r[1] for r in rows)) != (process * per_host, (process + 1) * per_host):
    raise ValueError(f'host {process} of {count} holds batch rows {sorted(rows)} rather than its own slice: a '
                     'non-batch mesh axis spans hosts; keep --config.mesh.tensor within one host')


class _QuietOrbax(std_logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the progress log (its warnings and errors still show)."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def run(config, workdir: str, *, stage: str | None = None, grid_point=None, data=None) -> dict:
  """Trains one stage into workdir (resuming it when it holds a checkpoint) and returns its summary.

  data: a PreparedData to reuse (the pipeline prepares once for every stage); None prepares from the config.
  """
  built = build(config, workdir, stage=stage, grid_point=grid_point, data=data)
  if isinstance(built, dict):
    return built
  loop, state, meta = built
  return loop.train(state, meta)


def build(config, workdir: str, *, stage: str | None = None, grid_point=None, data=None):
  """(loop, state, meta) ready to train, or the summary of a run that already finished in workdir."""
  c = stage_config(config, stage or config.stage, grid_point)
  if not any(isinstance(f, _QuietOrbax) for f in logging.get_absl_logger().filters):
    logging.get_absl_logger().addFilter(_QuietOrbax())
  steps = total_steps(c)
  tokens_per_step = c.batch_size * c.data.seq_len
  os.makedirs(workdir, exist_ok=True)
  checkpoint.check_resumable(workdir, c)
  schedule = schedules.make_schedule(c, steps, tokens_per_step)
  mesh = sharding.make_mesh(c.mesh)
  if c.batch_size % (sharding.batch_divisor(mesh) * c.grad_accum_steps):
    raise ValueError(f'batch_size={c.batch_size} is not a multiple of the {sharding.batch_divisor(mesh)} '
                     f'data-parallel devices × grad_accum_steps={c.grad_accum_steps}; change --config.batch_size, '
                     '--config.grad_accum_steps or --config.mesh.')
  optimizer = train.make_optimizer(c, schedule)
  trainer = train.Trainer(c.model, mesh, optimizer, schedule, z_loss=c.optimizer.z_loss,
                          microbatches=c.grad_accum_steps)
  keep_steps = tuple(c.finetune.from_steps)
  checkpoints = checkpoint.Checkpoints(workdir, keep=c.keep_checkpoints, keep_steps=keep_steps)
  resume_step = checkpoints.latest_step()
  finished = _finished_summary(workdir, resume_step)
  if finished is not None:
    checkpoints.close()
    logging.info('%s already finished (%s); nothing to do.', workdir, finished['stop_reason'])
    return finished
  params = None
  if resume_step is None and c.init_from:  # Shapes are checked here, before data or compilation.
    params = checkpoint.restore_params(c.init_from, trainer.abstract_state.params)
  elif resume_step is None and c.stage == 'finetune':
    raise ValueError('finetuning needs parameters: set --config.init_from to a pretrain workdir or checkpoint.')
  checkpoint.write_config(workdir, c)
  data = prepare_data(c) if data is None else data
  if data.tokenizer is not None and jax.process_index() == 0:  # The run carries its tokenizer to any machine.
    data.tokenizer.save(os.path.join(workdir, checkpoint.TOKENIZER_FILE))
  mixture = make_mixture(c, data)
  evaluator = evaluation.Evaluator(c, trainer, data)

  if resume_step is not None:
    state, meta = checkpoints.restore(trainer.abstract_state, resume_step)
    logging.info('Resumed %s at step %d', workdir, resume_step)
  else:
    state = trainer.init_state(c.seed) if params is None else trainer.state_from_params(params, c.seed)
    meta = {'step': 0, 'best': None, 'evals_without_improvement': 0, 'initial': None, 'train_loss': None}
  return _Loop(c, workdir, trainer, checkpoints, mixture, evaluator, data, steps, schedule), state, meta


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


class _Loop:
  """The state of one training run between steps: logging, evaluation, early stopping, checkpoints."""

  def __init__(self, c, workdir, trainer, checkpoints, mixture, evaluator, data, steps, schedule):
    self.c, self.workdir, self.trainer, self.checkpoints = c, workdir, trainer, checkpoints
    self.mixture, self.evaluator, self.data, self.steps, self.schedule = mixture, evaluator, data, steps, schedule
    self.tokens_per_step = c.batch_size * c.data.seq_len
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    self.flops_per_step = train.train_flops_per_token(c.model, c.data.seq_len) * self.tokens_per_step
    self.peak_flops = peak_flops(c)
    self.stop_reason = None
    self.keep_steps = set(c.finetune.from_steps)  # Checkpointed and kept: finetuned from.

  def batches(self, start_step: int):
    """This host's rows of the batches from start_step on, read ahead by Grain threads while the device works."""
    _check_host_rows(self.trainer.batch_sharding, (self.c.batch_size, self.c.data.seq_len + 1))
    dataset = self.mixture.batch_dataset(jax.process_index(), jax.process_count(), start_step,
                                         max(self.steps - start_step, 1))
    for local in dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)):
      yield jax.make_array_from_process_local_data(self.trainer.batch_sharding, np.asarray(local, np.int32),
                                                   (self.c.batch_size, self.c.data.seq_len + 1))

  def log(self, step: int, scalars: dict) -> None:
    accounting = self.mixture.accounting(step)
    record = {'step': step, 'tokens': step * self.tokens_per_step, 'lr': float(self.schedule(max(step - 1, 0)))}
    record.update({f'data/tokens/{s}': int(n) for s, n in accounting['tokens'].items()})
    record.update({f'data/epochs/{s}': float(e) for s, e in accounting['epochs'].items()})
    record.update(scalars)
    self.writer.write_scalars(step, {k: v for k, v in record.items() if k != 'step'})
    if jax.process_index() == 0:
      with open(self.metrics_path, 'a') as f:
        f.write(json.dumps(record) + '\n')

  def read(self, step: int, metrics) -> dict | None:
    """Host values of a finished step's metrics; None (and the stop reason set) when the loss is not finite."""
    values = {f'train/{k}': float(v) for k, v in jax.device_get(metrics).items() if k != 'lr'}
    if not all(math.isfinite(values.get(f'train/{k}', 0.0)) for k in ('loss', 'grad_norm', 'param_norm')):
      logging.error('Step %d: non-finite training loss or gradient (%s); stopping without saving. The last '
                    'good checkpoint in %s is untouched; lower optimizer.lr or raise warmup.', step, values,
                    self.checkpoints.directory)
      self.stop_reason = 'nonfinite_loss'
      return None
    return values

  def evaluate(self, step: int, state, meta: dict) -> dict:
    """Runs every eval set and updates the best-so-far and the early-stopping counter in meta."""
    results = self.evaluator(state.params)
    losses = evaluation.losses(results)
    domain = losses.get('domain_test', float('nan'))
    if meta['best'] is None or domain < meta['best']['eval']['domain_test']:
      meta['best'] = {'step': step, 'tokens': step * self.tokens_per_step, 'eval': losses,
                      'epochs': self.mixture.accounting(step)['epochs'],
                      'mcqa': evaluation.accuracies(results)}
      meta['evals_without_improvement'] = 0
      meta['improved'] = True
    else:
      meta['evals_without_improvement'] += 1
      meta['improved'] = False
    meta['last_eval'] = {'step': step, 'eval': losses}
    return results

  def seconds(self, meta: dict) -> float:
    """Wall time of the run so far, over all its sessions (resumptions included)."""
    return meta.get('seconds', 0.0) + time.time() - self.started

  def save(self, step: int, state, meta: dict, domain_test_loss=None) -> None:
    meta = dict(meta, step=step, tokens=step * self.tokens_per_step, seconds=self.seconds(meta))
    if self.checkpoints.save(step, state, meta, domain_test_loss=domain_test_loss):
      logging.info('Checkpoint %d started.', step)

  def progress(self, step, loss, tokens_per_second, seconds_per_step) -> None:
    mfu = (f' MFU {100 * self.flops_per_step / self.tokens_per_step * tokens_per_second / self.peak_flops:.1f}%'
           if self.peak_flops else '')
    left = (self.steps - step) * seconds_per_step
    logging.info('step %d/%d tokens %.4g loss %.4f %.4g tokens/s%s %s left', step, self.steps,
                 step * self.tokens_per_step, loss, tokens_per_second, mfu,
                 time.strftime('%H:%M:%S', time.gmtime(left)))

  def train(self, state, meta: dict) -> dict:
    c = self.c
    self.started = time.time()
    step = first_step = int(meta['step'])
    self.timing = collections.Counter()  # This session's training and evaluation time, for the summary.
    # A fresh start drops what a run killed before its first checkpoint logged; a resume, the steps after it.
    _truncate_metrics(self.metrics_path, step if meta['initial'] is not None else -1)
    if step == 0 and meta['initial'] is None:
      results = self.evaluate(0, state, meta)
      meta['initial'] = evaluation.losses(results)
      self.log(0, evaluation.scalars(results))
    with _Preemption() as preemption:
      pending = None  # (step, device metrics) of the step dispatched last: read after the next is dispatched.
      last_time, last_step, values = time.time(), step, None
      batches = self.batches(step)
      while step < self.steps and self.stop_reason is None:
        state, metrics = self.trainer.train_step(state, next(batches))
        step += 1
        if pending is not None and self.read(*pending) is None:
          break
        pending = (step, metrics)
        is_eval = c.eval_every and step % c.eval_every == 0
        is_checkpoint = (c.checkpoint_every and step % c.checkpoint_every == 0) or step in self.keep_steps
        preempted = preemption.requested or (jax.process_count() > 1 and
                                             self.checkpoints.manager.reached_preemption(step))
        if not (step % c.log_every == 0 or is_eval or is_checkpoint or preempted or step == self.steps):
          continue
        values = self.read(*pending)
        pending = None
        if values is None:
          break
        meta['train_loss'] = values['train/loss']
        now = time.time()
        seconds_per_step = (now - last_time) / max(step - last_step, 1)
        if last_step > first_step:  # Throughput excludes the first window (compilation) and evaluations.
          self.timing.update(train_seconds=now - last_time, train_steps=step - last_step)  # Counter: adds.
        self.progress(step, values['train/loss'], self.tokens_per_step / seconds_per_step, seconds_per_step)
        scalars = dict(values, **{'perf/tokens_per_second': self.tokens_per_step / seconds_per_step})
        domain_test = None
        if is_eval or step == self.steps:
          eval_started, results = time.time(), self.evaluate(step, state, meta)
          self.timing.update(eval_seconds=time.time() - eval_started)
          scalars.update(evaluation.scalars(results))
          domain_test = results.get('domain_test', {}).get('loss')
        self.log(step, scalars)
        if c.patience and meta['evals_without_improvement'] >= c.patience:
          self.stop_reason = 'early_stopping'
        # Checkpoint on schedule, at the end, on preemption and (with early stopping) at each new best.
        if (is_checkpoint or preempted or step == self.steps or self.stop_reason
            or (c.patience and domain_test is not None and meta.get('improved'))):
          self.save(step, state, meta, domain_test)
        if preempted:
          self.stop_reason = 'preempted'
        last_time, last_step = time.time(), step
      if pending is not None and self.stop_reason is None:
        self.read(*pending)
    self.checkpoints.wait()  # The summary only speaks of committed checkpoints.
    self.writer.flush()
    self.writer.close()
    summary = self.summarise(step, meta)
    self.checkpoints.close()
    return summary

  def summarise(self, step: int, meta: dict) -> dict:
    c, stop_reason, timing_s = self.c, self.stop_reason or 'budget', self.timing['train_seconds']
    accounting = self.mixture.accounting(step)
    summary = {
        'stage': c.stage, 'steps': step, 'tokens': step * self.tokens_per_step, 'stop_reason': stop_reason,
        'initial': meta.get('initial'), 'final': (meta.get('last_eval') or {}).get('eval'),
        'best': meta.get('best'), 'data': {k: dict(v) for k, v in accounting.items()},
        'domain_fraction': c.mixture.domain_fraction, 'model': c.model.get('preset', ''),
        'params': train.model_lib.count_params(self.trainer.abstract_state.params)[0],
        'seq_len': c.data.seq_len, 'tokenizer': (self.data.metadata or {}).get('tokenizer', ''),
        'lr': c.optimizer.lr, 'warmup_steps': schedules.warmup_steps(c, self.tokens_per_step),
        'batch_size': c.batch_size, 'init_from': c.init_from, 'workdir': os.path.abspath(self.workdir),
        'last_checkpoint': self.checkpoints.latest_step(), 'wall_time_s': round(self.seconds(meta), 1),
        'train_tokens_per_second': self.timing['train_steps'] * self.tokens_per_step / max(timing_s, 1e-9),
        'eval_seconds': self.timing['eval_seconds'],
    }
    if jax.process_index() == 0:  # Atomically: a rerun reads it to skip finished runs.
      path = os.path.join(self.workdir, 'summary.json')
      with open(path + '.tmp', 'w') as f:
        json.dump(summary, f, indent=2, sort_keys=True)
      os.replace(path + '.tmp', path)
    logging.info('%s finished: %s after %d steps; best domain_test %s', c.stage, stop_reason, step,
                 (summary['best'] or {}).get('eval', {}).get('domain_test'))
    return summary
