"""Throughput benchmark: the device's measured peak matmul FLOP/s, then the train step's tokens/s and MFU.

  python -m spt_jax.bench --preset=cpu-2m --batch_size=16 --seq_len=128 [--pipeline]

Model FLOPs per token are counted the standard way: 6·N (N = parameters that take part in matmuls: all but
the embedding lookup; the tied output head counts) plus the attention term 12·layers·d_model·seq_len. MFU is
model FLOP/s ÷ the peak matmul FLOP/s measured in the same run on the same device(s) and dtype (counting and
MFU: spt_jax/flops.py, which the training loop uses too). With --pipeline, the data mixture's tokens/s
(spt_jax/data/bench.py) beside the step's: the input pipeline must outpace the step by a wide margin.
"""

import json
import time

from absl import app
from absl import flags

from spt_jax.data import bench as data_bench

_PRESET = flags.DEFINE_string('preset', 'cpu-2m', 'Model preset (spt_jax.flops.PRESETS).')
_BATCH, _SEQ_LEN = data_bench.BATCH, data_bench.SEQ_LEN  # --batch_size and --seq_len, shared with the mixture's.
_PIPELINE = flags.DEFINE_bool('pipeline', False, 'Also time the data mixture (--pipeline_steps, --domain_fraction).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after one compile-and-warm-up step).')
_DTYPE = flags.DEFINE_string('dtype', '', "Computation dtype; default bfloat16 on accelerators, float32 on CPU.")
_REMAT = flags.DEFINE_string('remat_policy', 'none', 'Remat policy (spt_jax.model.REMAT_POLICIES).')
_ATTENTION = flags.DEFINE_string('attention_impl', 'auto', "'auto', 'splash', 'cudnn', 'xla' or '' (JAX picks).")
_LOSS_CHUNK = flags.DEFINE_integer('loss_chunk_length', 0, 'Positions per loss chunk (0: the whole sequence).')
_MATMUL = flags.DEFINE_integer('matmul_size', 0, 'Side of the peak-FLOP/s matmul (0: 8192 on accelerators, '
                               '2048 on CPU).')


def measure_train_step(preset: str, batch_size: int, seq_len: int, steps: int, dtype: str,
                       remat_policy: str = 'none', attention_impl: str = 'auto', loss_chunk_length: int = 0) -> dict:
  """Tokens/s and model FLOP/s of the real train step (sharded over all devices along fsdp)."""
  import jax
  import numpy as np
  import optax
  from spt_jax import config as config_lib
  from spt_jax import flops
  from spt_jax import model as model_lib
  from spt_jax import sharding
  from spt_jax import train
  config = config_lib.base_config(preset)
  config.model.update(dtype=dtype, remat_policy=remat_policy, attention_impl=attention_impl,
                      loss_chunk_length=loss_chunk_length)
  mesh = sharding.make_mesh(config.mesh)
  schedule = optax.constant_schedule(1e-4)
  trainer = train.Trainer(config.model, mesh, train.make_optimizer(config, schedule), schedule)
  state = trainer.init_state(seed=0)
  batch = np.random.RandomState(0).randint(0, config.model.vocab_size, (batch_size, seq_len + 1), np.int32)
  batch = jax.device_put(batch, trainer.batch_sharding)
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  tokens_per_second = batch_size * seq_len / seconds
  flops_per_token = flops.train_flops_per_token(config.model, seq_len)
  return dict(preset=preset, params=model_lib.count_params(state.params)[0], batch_size=batch_size,
              seq_len=seq_len, dtype=dtype, step_seconds=seconds, compile_seconds=compile_seconds,
              tokens_per_second=tokens_per_second, flops_per_token=flops_per_token,
              model_flops_per_second=tokens_per_second * flops_per_token)


def main(argv):
  del argv
  import jax
  on_cpu = jax.default_backend() == 'cpu'
  dtype = _DTYPE.value or ('float32' if on_cpu else 'bfloat16')
  from spt_jax import flops  # pylint: disable=g-import-not-at-top
  peak = flops.peak_matmul_flops(dtype, _MATMUL.value or (2048 if on_cpu else 8192))
  result = measure_train_step(_PRESET.value, _BATCH.value, _SEQ_LEN.value, _STEPS.value, dtype, _REMAT.value,
                              _ATTENTION.value, _LOSS_CHUNK.value)
  result.update(device=str(jax.devices()[0].device_kind), devices=jax.device_count(),
                peak_matmul_flops_per_second=peak,
                mfu=flops.mfu(result['flops_per_token'], result['tokens_per_second'], peak))
  print(f'device            {result["devices"]} × {result["device"]} ({dtype})')
  print(f'peak matmul       {peak / 1e12:.3f} TFLOP/s (measured)')
  print(f'train step        {result["preset"]} ({result["params"] / 1e6:.1f}M params), batch '
        f'{result["batch_size"]} × {result["seq_len"]}: {result["step_seconds"] * 1e3:.1f} ms/step, '
        f'{result["tokens_per_second"]:,.0f} tokens/s')
  print(f'model FLOP/s      {result["model_flops_per_second"] / 1e12:.4f} TFLOP/s '
        f'({result["flops_per_token"] / 1e6:.1f} MFLOP/token: 6N + 12·layers·d_model·seq_len)')
  print(f'MFU               {100 * result["mfu"]:.1f}%')
  if _PIPELINE.value:
    vocab_size = flops.PRESETS[_PRESET.value]['vocab_size']
    result.update(data_bench.pipeline_speed(_BATCH.value, _SEQ_LEN.value, vocab_size, data_bench.DELTA.value,
                                            data_bench.STEPS.value))
    result['pipeline_over_step'] = result['pipeline_tokens_per_second'] / result['tokens_per_second']
    print(f'mixture pipeline  {result["pipeline_step_milliseconds"]:.3f} ms/step, '
          f'{result["pipeline_tokens_per_second"]:,.0f} tokens/s: {result["pipeline_over_step"]:.0f}× the step '
          '(must be >= 20×)')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
