"""Throughput benchmark: the device's measured peak matmul FLOP/s, then the train step's tokens/s and MFU.

  python -m spt_jax.bench --preset=cpu-2m --batch_size=16 --seq_len=128 [--pipeline]

Model FLOPs per token are counted the standard way: 6·N (N = parameters that take part in matmuls: all but
the embedding lookup; the tied output head counts) plus the attention term 12·layers·d_model·seq_len. MFU is
model FLOP/s ÷ the peak matmul FLOP/s measured in the same run on the same device(s) and dtype (counting and
MFU: spt_jax/model/flops.py, which the training loop uses too). The peak and the step are timed in alternating
rounds (--rounds) and each keeps its best round, so that a machine whose speed drifts (a shared host, turbo)
moves both figures alike; the per-round MFU range is printed beside. With --pipeline, the data mixture's
tokens/s (spt_jax/data/bench.py) beside the step's: the input pipeline must outpace the step by a wide margin.
"""

import dataclasses
import json
import os
import time

from absl import flags

from spt_jax import cli
from spt_jax.data import bench as data_bench
from spt_jax.model import flops

_PRESET = flags.DEFINE_enum('preset', 'cpu-2m', list(flops.PRESETS), 'Model preset (spt_jax/model/flops.py).')
_BATCH, _SEQ_LEN = data_bench.BATCH, data_bench.SEQ_LEN  # --batch_size and --seq_len, shared with the mixture's.
_PIPELINE = flags.DEFINE_bool('pipeline', False, 'Also time the data mixture (--pipeline_steps, --domain_fraction).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round (after one compile-and-warm-up step).', lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds of the peak matmul and the train step.', lower_bound=1)
_DTYPE = flags.DEFINE_enum(
  'dtype',
  '',
  ['', 'float32', 'bfloat16', 'float16'],
  "Computation dtype; '' is bfloat16 on accelerators, float32 on CPU.",
)
# The names of spt_jax.model.decoder.REMAT_POLICIES and attention.IMPLEMENTATIONS (tests/test_cli.py checks them),
# written out so that a bad value is refused before JAX is imported.
_REMAT = flags.DEFINE_enum('remat_policy', 'none', ['none', 'full', 'dots', 'dots_no_batch'], 'Remat policy.')
_ATTENTION = flags.DEFINE_enum(
  'attention_impl', 'auto', ['auto', 'splash', 'cudnn', 'xla', ''], "Attention kernel; '' lets JAX pick."
)
_LOSS_CHUNK = flags.DEFINE_integer(
  'loss_chunk_length', 0, 'Positions per loss chunk (0: the whole sequence).', lower_bound=0
)
_SCAN_UNROLL = flags.DEFINE_integer(
  'scan_unroll', -1, "Layers per scan iteration (0: all; -1: the preset's).", lower_bound=-1
)
_RUNS = flags.DEFINE_integer(
  'runs',
  1,
  'With R > 1: R runs trained together (one step over a leading run axis) against the same R runs one after '
  'another, in alternating rounds, all tokens/s of all runs.',
  lower_bound=1,
)
_PROFILE = flags.DEFINE_string(
  'profile',
  '',
  'Folder for a profiler trace of --steps more steps: prints their time by kind of operation (matrix '
  "multiplications, data movement, reductions, element-wise) and the matrix multiplications' FLOP/s.",
)
_MATMUL = flags.DEFINE_integer(
  'matmul_size', 0, 'Side of the peak-FLOP/s matmul (0: 8192 on accelerators, 2048 on CPU).', lower_bound=0
)


def _config(preset: str, dtype: str, **model_overrides):
  """The base config of a preset, its model in `dtype` with the overrides."""
  from spt_jax.train import config as config_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  config = config_lib.defaults(preset)
  return config_lib.replace(config, model=dataclasses.replace(config.model, dtype=dtype, **model_overrides))


class TrainStepTimer:
  """The real train step of a preset on random tokens, sharded over all devices along fsdp, compiled once."""

  def __init__(self, preset: str, batch_size: int, seq_len: int, dtype: str, **model_overrides):
    import jax  # noqa: PLC0415  jax on first use: importing this module stays light
    import numpy as np  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    import optax  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    from spt_jax.model import sharding  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    from spt_jax.train import step as train  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    config = _config(preset, dtype, **model_overrides)
    schedule = optax.constant_schedule(1e-4)
    self.trainer = train.Trainer(
      config.model, sharding.make_mesh(config.mesh), train.make_optimizer(config, schedule), schedule
    )
    self.state = self.trainer.init_state(seed=0)
    batch = np.random.RandomState(0).randint(0, config.model.vocab_size, (batch_size, seq_len + 1), np.int32)
    self.batch = jax.device_put(batch, self.trainer.batch_sharding)
    self.tokens_per_step = batch_size * seq_len
    self.flops_per_token = flops.train_flops_per_token(config.model, seq_len)
    self.params = flops.count_params(config.model)[0]
    self.preset, self.batch_size, self.seq_len = preset, batch_size, seq_len
    start = time.perf_counter()
    self._run(1)
    self.compile_seconds = time.perf_counter() - start

  def _run(self, steps: int) -> None:
    import jax  # noqa: PLC0415  jax on first use: importing this module stays light

    for _ in range(steps):
      self.state, metrics = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready(metrics)

  def seconds_per_step(self, steps: int) -> float:
    start = time.perf_counter()
    self._run(steps)
    return (time.perf_counter() - start) / steps


class RunsTogetherTimer:
  """R runs of a preset (different initialisations) stepped together as one stack (Trainer.stacked_train_step) or
  one after another with the single-run step; both steps take a learning-rate table, as the training loop's do."""

  def __init__(self, preset: str, batch_size: int, seq_len: int, dtype: str, runs: int, **model_overrides):
    import functools  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    import jax  # noqa: PLC0415  jax on first use: importing this module stays light
    import numpy as np  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    from spt_jax.model import sharding  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    from spt_jax.train import step as train  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    config = _config(preset, dtype, **model_overrides)
    trainer = self.trainer = train.Trainer(
      config.model, sharding.make_mesh(config.mesh), functools.partial(train.make_optimizer, config)
    )
    self.states = [trainer.init_state(seed=run) for run in range(runs)]
    self.stacked = trainer.stack(self.states)
    batches = np.random.RandomState(0).randint(0, config.model.vocab_size, (runs, batch_size, seq_len + 1), np.int32)
    self.batches = [jax.device_put(batch, trainer.batch_sharding) for batch in batches]
    self.stacked_batches = jax.device_put(batches, trainer.stacked_batch_sharding)
    self.table = jax.device_put(np.full(2, 1e-4, np.float32), trainer.replicated)
    self.tables = jax.device_put(np.full((runs, 2), 1e-4, np.float32), trainer.replicated)
    self.active = np.ones(runs, bool)
    self.runs, self.tokens_per_step = runs, runs * batch_size * seq_len  # Tokens of all runs per step of each.
    self.flops_per_token = flops.train_flops_per_token(config.model, seq_len)
    self.params = flops.count_params(config.model)[0]
    start = time.perf_counter()
    self.together_seconds(1)
    self.compile_seconds = time.perf_counter() - start
    self.alone_seconds(1)

  def alone_seconds(self, steps: int) -> float:
    """Seconds for every run to take `steps` steps, one run after another."""
    import jax  # noqa: PLC0415  jax on first use: importing this module stays light

    start = time.perf_counter()
    for run in range(self.runs):
      for _ in range(steps):
        self.states[run], metrics = self.trainer.train_step(self.states[run], self.batches[run], self.table)
      jax.block_until_ready(metrics)
    return time.perf_counter() - start

  def together_seconds(self, steps: int) -> float:
    """Seconds for every run to take `steps` steps, all in one stacked step."""
    import jax  # noqa: PLC0415  jax on first use: importing this module stays light

    start = time.perf_counter()
    for _ in range(steps):
      self.stacked, metrics = self.trainer.stacked_train_step(
        self.stacked, self.stacked_batches, self.tables, self.active
      )
    jax.block_until_ready(metrics)
    return time.perf_counter() - start


def measure_runs_together(
  preset: str,
  batch_size: int,
  seq_len: int,
  runs: int,
  steps: int,
  rounds: int,
  dtype: str,
  matmul_size: int,
  **model_overrides,
) -> dict:
  """R runs together against one after another (tokens/s of all runs, best of alternating rounds, with MFU)."""
  timer = RunsTogetherTimer(preset, batch_size, seq_len, dtype, runs, **model_overrides)
  peaks, together, alone = [], [], []
  for _ in range(rounds):
    peaks.append(flops.peak_matmul_flops(dtype, matmul_size))
    together.append(timer.together_seconds(steps))
    alone.append(timer.alone_seconds(steps))
  peak, tokens = max(peaks), timer.tokens_per_step * steps
  together_tps, alone_tps = tokens / min(together), tokens / min(alone)
  return dict(
    preset=preset,
    params=timer.params,
    batch_size=batch_size,
    seq_len=seq_len,
    runs=runs,
    dtype=dtype,
    rounds=rounds,
    steps_per_round=steps,
    compile_seconds=timer.compile_seconds,
    peak_matmul_flops_per_second=peak,
    together_tokens_per_second=together_tps,
    alone_tokens_per_second=alone_tps,
    together_over_alone=together_tps / alone_tps,
    round_together_over_alone=[a / t for t, a in zip(together, alone, strict=True)],
    together_mfu=flops.mfu(timer.flops_per_token, together_tps, peak),
    alone_mfu=flops.mfu(timer.flops_per_token, alone_tps, peak),
  )


def measure_timer(timer: TrainStepTimer, steps: int, rounds: int, dtype: str, matmul_size: int) -> dict:
  """Peak matmul FLOP/s and the train step's time in alternating rounds; the best of each, and MFU."""
  peaks, seconds = [], []
  for _ in range(rounds):
    peaks.append(flops.peak_matmul_flops(dtype, matmul_size))
    seconds.append(timer.seconds_per_step(steps))
  step_seconds, peak = min(seconds), max(peaks)
  tokens_per_second = timer.tokens_per_step / step_seconds
  round_mfus = [
    flops.mfu(timer.flops_per_token, timer.tokens_per_step / t, p) for t, p in zip(seconds, peaks, strict=False)
  ]
  return dict(
    preset=timer.preset,
    params=timer.params,
    batch_size=timer.batch_size,
    seq_len=timer.seq_len,
    dtype=dtype,
    rounds=rounds,
    steps_per_round=steps,
    step_seconds=step_seconds,
    round_step_seconds=seconds,
    compile_seconds=timer.compile_seconds,
    tokens_per_second=tokens_per_second,
    flops_per_token=timer.flops_per_token,
    model_flops_per_second=tokens_per_second * timer.flops_per_token,
    peak_matmul_flops_per_second=peak,
    round_peak_flops_per_second=peaks,
    mfu=flops.mfu(timer.flops_per_token, tokens_per_second, peak),
    round_mfu=round_mfus,
  )


def main(argv):
  del argv
  import jax  # noqa: PLC0415  jax on first use: importing this module stays light

  if _PROFILE.value:  # Checked before anything is compiled.
    try:
      os.makedirs(_PROFILE.value, exist_ok=True)
    except OSError as error:
      raise cli.UsageError(f'--profile={_PROFILE.value}: {error.strerror}; give a folder you can write') from error
  on_cpu = jax.default_backend() == 'cpu'
  dtype = _DTYPE.value or ('float32' if on_cpu else 'bfloat16')
  overrides = dict(remat_policy=_REMAT.value, attention_impl=_ATTENTION.value, loss_chunk_length=_LOSS_CHUNK.value)
  if _SCAN_UNROLL.value >= 0:
    overrides['scan_unroll'] = _SCAN_UNROLL.value
  matmul_size = _MATMUL.value or (2048 if on_cpu else 8192)
  if _RUNS.value > 1:
    result = measure_runs_together(
      _PRESET.value,
      _BATCH.value,
      _SEQ_LEN.value,
      _RUNS.value,
      _STEPS.value,
      _ROUNDS.value,
      dtype,
      matmul_size,
      **overrides,
    )
    result.update(device=str(jax.devices()[0].device_kind), devices=jax.device_count())
    print(f'device            {result["devices"]} × {result["device"]} ({dtype})')
    print(f'peak matmul       {result["peak_matmul_flops_per_second"] / 1e12:.3f} TFLOP/s (measured)')
    for way in ('together', 'alone'):
      label = 'together' if way == 'together' else 'one by one'
      print(
        f'{label:<18}{result["runs"]} runs of {result["preset"]}, batch {result["batch_size"]} × '
        f'{result["seq_len"]}: {result[f"{way}_tokens_per_second"]:,.0f} tokens/s, '
        f'MFU {100 * result[f"{way}_mfu"]:.1f}%'
      )
    print(
      f'together ÷ alone  {result["together_over_alone"]:.2f}× (rounds: '
      f'{min(result["round_together_over_alone"]):.2f}-{max(result["round_together_over_alone"]):.2f}×)'
    )
    print(json.dumps(result))
    return
  timer = TrainStepTimer(_PRESET.value, _BATCH.value, _SEQ_LEN.value, dtype, **overrides)
  result = measure_timer(timer, _STEPS.value, _ROUNDS.value, dtype, matmul_size)
  result.update(device=str(jax.devices()[0].device_kind), devices=jax.device_count())
  print(f'device            {result["devices"]} × {result["device"]} ({dtype})')
  print(
    f'peak matmul       {result["peak_matmul_flops_per_second"] / 1e12:.3f} TFLOP/s (measured: best of '
    f'{result["rounds"]} rounds)'
  )
  print(
    f'train step        {result["preset"]} ({result["params"] / 1e6:.1f}M params), batch '
    f'{result["batch_size"]} × {result["seq_len"]}: {result["step_seconds"] * 1e3:.1f} ms/step, '
    f'{result["tokens_per_second"]:,.0f} tokens/s (best round of {result["steps_per_round"]} steps)'
  )
  print(
    f'model FLOP/s      {result["model_flops_per_second"] / 1e12:.4f} TFLOP/s '
    f'({result["flops_per_token"] / 1e6:.1f} MFLOP/token: 6N + 12·layers·d_model·seq_len)'
  )
  print(
    f'MFU               {100 * result["mfu"]:.1f}% (rounds: '
    f'{100 * min(result["round_mfu"]):.1f}-{100 * max(result["round_mfu"]):.1f}%)'
  )
  if _PIPELINE.value:
    vocab_size = flops.PRESETS[_PRESET.value]['vocab_size']
    result.update(
      data_bench.pipeline_speed(
        _BATCH.value, _SEQ_LEN.value, vocab_size, data_bench.DELTA.value, data_bench.STEPS.value
      )
    )
    result['pipeline_over_step'] = result['pipeline_tokens_per_second'] / result['tokens_per_second']
    print(
      f'mixture pipeline  {result["pipeline_step_milliseconds"]:.3f} ms/step, '
      f'{result["pipeline_tokens_per_second"]:,.0f} tokens/s: {result["pipeline_over_step"]:.0f}× the step '
      '(must be >= 20×)'
    )
  if _PROFILE.value:
    result['profile'] = profile(timer, _STEPS.value, _PROFILE.value, result)
  print(json.dumps(result))


def profile(timer: TrainStepTimer, steps: int, folder: str, result: dict) -> dict:
  """Where the step's time goes (spt_jax/hardware/step_profile.py), printed against the bench's figures."""
  from spt_jax.hardware import step_profile  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  hlo = timer.trainer.train_step.lower(timer.state, timer.batch).compile().as_text()
  seconds = []
  events = step_profile.trace(lambda: seconds.append(timer.seconds_per_step(steps)), folder)
  found = step_profile.breakdown(events, hlo, steps)
  found['traced_seconds_per_step'] = seconds[0]
  peak = result['peak_matmul_flops_per_second'] / result['devices']  # The operations' times are per device.
  print(
    f"profile           {steps} steps traced at {seconds[0] * 1e3:.1f} ms/step; the operations' own time "
    f'{found["op_seconds_per_step"] * 1e3:.1f} ms/step (summed over threads):'
  )
  for kind, kind_seconds in found['seconds_per_step_by_kind'].items():
    print(f'  {kind:<16}{kind_seconds * 1e3:9.1f} ms  {100 * kind_seconds / found["op_seconds_per_step"]:5.1f}%')
  print(
    f'  matmuls at {found["matmul_flops_per_second"] / 1e12:.3f} TFLOP/s = '
    f'{100 * found["matmul_flops_per_second"] / peak:.0f}% of the peak matmul '
    f'({found["matmul_flops_per_step"] / 1e9:.1f} GFLOP/step in dots; the model counts '
    f'{timer.flops_per_token * timer.tokens_per_step / 1e9:.1f})'
  )
  for op in found['top_ops']:
    print(f'  {op["name"]:<40}{op["kind"]:<16}{op["seconds_per_step"] * 1e3:8.2f} ms')
  return found


if __name__ == '__main__':
  cli.run(main)
