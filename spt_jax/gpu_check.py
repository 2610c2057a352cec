"""The GPU check: the paper's 1B model's train step at the hardware's rate, and the same answers as on the CPU.

  python -m spt_jax.gpu_check --out=DIR          # on a GPU host (pip install -e '.[cuda]')
  python -m spt_jax.gpu_check --dry --out=DIR    # the same path at CPU sizes, on any host (tested)

1. The bf16 matrix rate of the device, measured here (square matmuls, bench's `--matmul_size`), alternating with
2. the train step of `olmo-1b` in bfloat16 at sequence 2048 with cuDNN flash attention
   (`jax.nn.dot_product_attention`), at the largest batch of `--batch_sizes` that fits in the device's memory:
   tokens/s and MFU against the rate of 1 (spt_jax/bench.py's method).
3. A tiny model trained for a few steps on the CPU on a fixed pattern, then its greedy continuation of a prompt
   on the CPU and on the GPU: the tokens must be equal.
4. The attention of 2 above (cuDNN, bfloat16) and XLA's attention in bfloat16 against XLA's in float32 at the
   highest matmul precision, at the model's shapes: output and the three gradients, each as the largest
   difference over the reference's largest magnitude. cuDNN's may be at most twice XLA's.
Prints one line per figure and writes DIR/gpu_check.json; exits 1 when the continuations differ or the attention
is off.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from spt_jax import bench, cli, sample
from spt_jax.model import attention, flops, sharding
from spt_jax.storage import files
from spt_jax.train import config as config_lib
from spt_jax.train import step as train

_OUT = flags.DEFINE_string('out', '', 'Folder for gpu_check.json (default: print only).')
_DRY = flags.DEFINE_bool('dry', False, 'CPU sizes (cpu-160k, float32, XLA attention, sequence 64): checks the path.')
_BATCH_SIZES = flags.DEFINE_list(
  'batch_sizes',
  ['32', '24', '20', '16', '12', '8', '4'],
  'Batch sizes to try, largest first; the first that fits is measured.',
)
flags.register_validator(
  _BATCH_SIZES,
  lambda sizes: bool(sizes) and all(s.isdigit() and int(s) > 0 for s in sizes),
  'give positive batch sizes, e.g. 64,32,16',
)
FLAGS = flags.FLAGS  # Also spt_jax.bench's: --remat_policy, --steps, --rounds, --matmul_size (0: 8192).

# What the check runs: the GPU run, and the dry run's CPU sizes of the same path.
FULL = dict(preset='olmo-1b', seq_len=2048, dtype='bfloat16', attention_impl='cudnn')
DRY = dict(preset='cpu-160k', seq_len=64, dtype='float32', attention_impl='xla')


def _out_of_memory(error: Exception) -> bool:
  return 'RESOURCE_EXHAUSTED' in str(error) or 'out of memory' in str(error).lower()


def largest_batch_timer(batch_sizes, remat_policy: str, preset: str, seq_len: int, dtype: str, attention_impl: str):
  """The train step timer at the largest batch that compiles and runs one step without running out of memory."""
  for batch_size in sorted(batch_sizes, reverse=True):
    try:
      return bench.TrainStepTimer(
        preset, batch_size, seq_len, dtype, remat_policy=remat_policy, attention_impl=attention_impl
      )
    except Exception as error:
      if not _out_of_memory(error):
        raise
      print(f'batch {batch_size}: does not fit ({str(error).splitlines()[0][:120]})', flush=True)
  raise ValueError(f'no batch of {batch_sizes} fits; try smaller --batch_sizes or --remat_policy=full')


def trained_tiny_model(steps: int = 60, seq_len: int = 32):
  """cpu-160k trained on the CPU on one repeating pattern, so its greedy choices have wide margins."""
  config = config_lib.defaults('cpu-160k')
  config = config_lib.replace(config, **{'model.vocab_size': 128, 'model.attention_impl': 'xla'})
  schedule = optax.constant_schedule(3e-3)
  trainer = train.Trainer(
    config.model,
    sharding.make_mesh(config.mesh, jax.devices('cpu')[:1]),
    train.make_optimizer(config, schedule),
    schedule,
  )
  state = trainer.init_state(seed=0)
  pattern = np.arange(seq_len + 1) * 7 % 61 + 3  # A fixed cycle of 61 tokens.
  rows = np.stack([np.roll(pattern, -shift) for shift in range(16)]).astype(np.int32)
  batch = jax.device_put(rows, trainer.batch_sharding)
  for _ in range(steps):
    state, _ = trainer.train_step(state, batch)
  return jax.device_get(state.params), config.model, [int(t) for t in pattern[:8]]


def attention_errors(implementation: str, dtype: str, batch: int, length: int, heads: int, head_dim: int):
  """The largest differences of attention in `dtype` from XLA's in float32 at the highest precision, each over
  the reference's largest magnitude: [output, dq, dk, dv], the gradients of a random weighting of the output."""
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  q, k, v, weights = (jax.random.normal(key, (batch, length, heads, head_dim), jnp.float32) for key in keys)

  def output_and_grads(implementation, dtype):
    def attend(q, k, v):
      return attention.causal_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), implementation)

    output, pullback = jax.vjp(attend, q, k, v)
    return [output.astype(jnp.float32), *(g.astype(jnp.float32) for g in pullback(weights.astype(output.dtype)))]

  with jax.default_matmul_precision('highest'):
    reference = jax.jit(output_and_grads, static_argnums=(0, 1))('xla', jnp.float32)
  ours = jax.jit(output_and_grads, static_argnums=(0, 1))(implementation, jnp.dtype(dtype))
  return [float(jnp.abs(x - r).max() / jnp.abs(r).max()) for x, r in zip(ours, reference, strict=True)]


def greedy_on(device, params, model_cfg, prompt, new_tokens: int = 24) -> list[int]:
  with jax.default_device(device):
    return sample.generate(jax.device_put(params, device), model_cfg, prompt, new_tokens, max_len=64)[0]


def main(argv) -> None:
  del argv
  sizes = DRY if _DRY.value else FULL
  if not _DRY.value and jax.default_backend() != 'gpu':
    raise cli.UsageError(
      f'no GPU here (JAX backend {jax.default_backend()}); install jax[cuda12] on a GPU host, '
      'or run with --dry to check the path on this host'
    )
  batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  timer = largest_batch_timer(batch_sizes if not _DRY.value else [8, 4], FLAGS.remat_policy, **sizes)
  result = bench.measure_timer(
    timer, FLAGS.steps, FLAGS.rounds, sizes['dtype'], FLAGS.matmul_size or (512 if _DRY.value else 8192)
  )
  result.update(sizes, remat_policy=FLAGS.remat_policy, device=str(jax.devices()[0].device_kind))
  print(f'device            {result["device"]} ({sizes["dtype"]})')
  print(f'matrix rate       {result["peak_matmul_flops_per_second"] / 1e12:.1f} TFLOP/s (measured)')
  print(
    f'train step        {sizes["preset"]}, batch {result["batch_size"]} × {sizes["seq_len"]} '
    f'({sizes["attention_impl"]} attention, remat {FLAGS.remat_policy}): {result["tokens_per_second"]:,.0f} tokens/s, '
    f'MFU {100 * result["mfu"]:.1f}% (rounds {100 * min(result["round_mfu"]):.1f}-'
    f'{100 * max(result["round_mfu"]):.1f}%)'
  )

  params, model_cfg, prompt = trained_tiny_model()
  cpu = jax.devices('cpu')[0]
  other = jax.devices()[0]
  on_cpu, on_device = greedy_on(cpu, params, model_cfg, prompt), greedy_on(other, params, model_cfg, prompt)
  result.update(
    greedy_cpu=on_cpu,
    greedy_device=on_device,
    greedy_equal=on_cpu == on_device,
    greedy_device_kind=str(other.device_kind),
  )
  print(
    f'greedy            {"equal" if on_cpu == on_device else "DIFFERENT"} on cpu and {other.platform} '
    f'({len(on_cpu)} tokens: {on_cpu[:8]} ...)'
  )

  preset = flops.PRESETS[sizes['preset']]  # The model's heads, 2 sequences of the run's length.
  shape = (2, sizes['seq_len'], preset['n_heads'], preset['d_model'] // preset['n_heads'])
  ours = attention_errors(sizes['attention_impl'], 'bfloat16', *shape)
  xla = attention_errors('xla', 'bfloat16', *shape)
  attention_ok = all(o <= 2 * x for o, x in zip(ours, xla, strict=True))
  result.update(attention_errors=ours, attention_errors_xla=xla, attention_ok=attention_ok)
  print(
    f"attention         {sizes['attention_impl']} {'within' if attention_ok else 'OUTSIDE'} twice XLA's "
    f'bfloat16 error against float32 (output, dq, dk, dv): '
    f'{", ".join(f"{o:.1e}" for o in ours)} against {", ".join(f"{x:.1e}" for x in xla)}'
  )
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    files.write_json(os.path.join(_OUT.value, 'gpu_check.json'), result)
  if on_cpu != on_device or not attention_ok:
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
