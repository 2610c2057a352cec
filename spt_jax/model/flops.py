"""Sizes and FLOPs by formula, peak FLOP/s and MFU: what the loop, the benchmark, the dry run and analysis share.

FLOPs per token (Kaplan et al. 2020 accounting, attention included), one count of a forward pass for both:
  forward at attended context c: 2·N + 4·n_layers·d_model·c
  training:  3 × forward at c = seq_len = 6·N + 12·n_layers·d_model·seq_len
  inference: 1 × forward at c = context = 2·N + 4·n_layers·d_model·context
N counts every matmul parameter: the non-embedding weights plus the output projection V_pad·D (tied or not);
the embedding lookup costs no FLOPs. Compiled cost analysis counts a scanned layer once, hence formulas.
The module imports JAX only to measure or look up the device's peak, so analysis reads it without JAX.
"""

import functools
import time

FORWARD_FORMULA = 'forward FLOPs/token at attended context c = 2·N + 4·n_layers·d_model·c'
TRAIN_FORMULA = 'training FLOPs/token = 3 × forward at c = seq_len = 6·N + 12·n_layers·d_model·seq_len'
INFERENCE_FORMULA = 'inference FLOPs/token = forward at c = context = 2·N + 4·n_layers·d_model·context'

# Widths of the paper's models (spt_jax.model.decoder builds them). OLMo-1B and 3B are given; the paper says 300M
# and 600M halve the layers of the 1B and shrink the hidden and MLP widths, without numbers: the widths here keep
# head_dim = 128, stay below the 1B's (2048, 8192) and land near the named sizes (the 600M keeps the 1B's MLP
# ratio of 4; `count_params` below, pinned in tests against the model's shapes). The paper's '3B' is the 1B with
# twice the layers: 2.25B parameters.
_OLMO = dict(vocab_size=50280, rope_theta=10_000.0, layer_norm_eps=1e-5)
PRESETS: dict[str, dict] = {
  'olmo-3b': dict(_OLMO, d_model=2048, n_layers=32, n_heads=16, mlp_dim=8192),
  'olmo-1b': dict(_OLMO, d_model=2048, n_layers=16, n_heads=16, mlp_dim=8192),
  'olmo-600m': dict(_OLMO, d_model=1920, n_layers=8, n_heads=15, mlp_dim=7680),
  'olmo-300m': dict(_OLMO, d_model=1280, n_layers=8, n_heads=10, mlp_dim=6144),
  # CPU presets. Their vocab_size matches the BPE the CPU configs train (see configs/common.py).
  'cpu-6m': dict(
    vocab_size=8192, d_model=256, n_layers=4, n_heads=4, mlp_dim=1024, rope_theta=10_000.0, layer_norm_eps=1e-5
  ),
  'cpu-2m': dict(
    vocab_size=4096, d_model=128, n_layers=4, n_heads=4, mlp_dim=512, rope_theta=10_000.0, layer_norm_eps=1e-5
  ),
  'cpu-600k': dict(
    vocab_size=512, d_model=96, n_layers=4, n_heads=4, mlp_dim=384, rope_theta=10_000.0, layer_norm_eps=1e-5
  ),
  'cpu-160k': dict(
    vocab_size=512, d_model=64, n_layers=2, n_heads=4, mlp_dim=256, rope_theta=10_000.0, layer_norm_eps=1e-5
  ),
  # cpu-160k at half the width and a quarter of the MLP, same depth and vocabulary: its pilots' scale model.
  'cpu-40k': dict(
    vocab_size=512, d_model=32, n_layers=2, n_heads=2, mlp_dim=64, rope_theta=10_000.0, layer_norm_eps=1e-5
  ),
  # cpu-40k at three quarters of the width: three pilots of it at the tokens per parameter of a cpu-160k run cost
  # 0.086 of that run (cpu-40k's would cost 0.17).
  'cpu-25k': dict(
    vocab_size=512, d_model=24, n_layers=2, n_heads=2, mlp_dim=64, rope_theta=10_000.0, layer_norm_eps=1e-5
  ),
}

# Peak dense bf16 FLOP/s per chip, for MFU; unknown devices (CPUs) are measured unless config.peak_flops is set.
PEAK_FLOPS = {
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,
  'TPU v5e': 197e12,
  'TPU v5p': 459e12,
  'TPU v5': 459e12,
  'TPU v6 lite': 918e12,
  'TPU v6e': 918e12,
  'A100': 312e12,
  'H100': 989e12,
  'H200': 989e12,
  'B200': 2250e12,
}


def _field(model_cfg, name: str, default=None):
  """A model config's value, from a ModelConfig or from a dict (a preset, a saved config.json's model)."""
  return model_cfg.get(name, default) if isinstance(model_cfg, dict) else getattr(model_cfg, name)


def padded_vocab_size(model_cfg) -> int:
  """Vocabulary rounded up to a multiple of 128 (fast matmuls, even sharding)."""
  return -(-int(_field(model_cfg, 'vocab_size')) // 128) * 128


def count_params(model_cfg) -> tuple[int, int]:
  """(total, non-embedding) parameters of an OLMo-style config: V_pad·D embedding (+ head), 4·D² + 3·D·F a layer."""
  d, f, layers = (int(_field(model_cfg, name)) for name in ('d_model', 'mlp_dim', 'n_layers'))
  non_embedding = layers * (4 * d * d + 3 * d * f)
  embedding = padded_vocab_size(model_cfg) * d * (1 if _field(model_cfg, 'tie_embeddings', True) else 2)
  return non_embedding + embedding, non_embedding


def matmul_params(model_cfg) -> int:
  """N of the FLOP formulas: the non-embedding weights plus the output projection."""
  return count_params(model_cfg)[1] + padded_vocab_size(model_cfg) * int(_field(model_cfg, 'd_model'))


def forward_flops_per_token(matmul_params_count: float, n_layers: int, d_model: int, context: int) -> float:
  """FORWARD_FORMULA, the one count of a forward pass: 2·N + 4·layers·d_model·context (attention)."""
  return 2.0 * matmul_params_count + 4.0 * n_layers * d_model * context


def train_flops_per_token(model_cfg, seq_len: int) -> float:
  """Model FLOPs per trained token, 3 forward passes: 6·N + 12·layers·d_model·seq_len (attention)."""
  return 3.0 * forward_flops_per_token(
    matmul_params(model_cfg), _field(model_cfg, 'n_layers'), _field(model_cfg, 'd_model'), seq_len
  )


def mfu(flops_per_token: float, tokens_per_second: float, peak: float) -> float | None:
  """Model FLOP/s over peak FLOP/s; None when the peak is unknown."""
  return flops_per_token * tokens_per_second / peak if peak else None


def peak_matmul_flops(dtype: str, size: int, repeats: int = 5, group_seconds: float = 0.05) -> float:
  """Best FLOP/s of square matmuls on all devices at once (each device multiplies its own pair).

  Each of `repeats` timings covers a chain of products dispatched back to back and waited for once, as many as
  fill about `group_seconds`; each multiplies the last by the same matrix scaled by 1/sqrt(size), so values stay
  near 1. One product of 8192 on an H200 takes about 1.4 ms: a dispatch and a wait per product measured 655
  TFLOP/s there."""
  import jax  # noqa: PLC0415  jax on first use: importing this module stays light

  n = jax.device_count()
  mesh, spec = jax.sharding.Mesh(jax.devices(), ('d',)), jax.sharding.PartitionSpec('d')
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  a, b = (
    jax.device_put(jax.random.normal(key, (n, size, size), dtype) * scale, jax.sharding.NamedSharding(mesh, spec))
    for key, scale in zip(keys, (1.0, size**-0.5), strict=True)
  )
  matmul = jax.jit(jax.shard_map(lambda x, y: (x[0] @ y[0])[None], mesh=mesh, in_specs=(spec, spec), out_specs=spec))
  matmul(a, b).block_until_ready()
  start = time.perf_counter()
  matmul(a, b).block_until_ready()
  group = max(1, min(1000, round(group_seconds / (time.perf_counter() - start))))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    product = a
    for _ in range(group):  # Each product waits for the one before; the last done means all are done.
      product = matmul(product, b)
    product.block_until_ready()
    best = min(best, (time.perf_counter() - start) / group)
  return 2.0 * n * size**3 / best


def peak_flops(per_chip: float) -> float:
  """Peak FLOP/s of all devices together: per_chip (config.peak_flops) when > 0, the table for known
  accelerators, else a quick matmul measurement (once per process); per_chip < 0 turns MFU off (0)."""
  import jax  # noqa: PLC0415  jax on first use: importing this module stays light

  if per_chip < 0:
    return 0.0
  if per_chip > 0:
    return float(per_chip) * jax.device_count()
  kind = jax.devices()[0].device_kind
  # The most specific name wins: 'TPU v5 lite' (v5e) must not match 'TPU v5' (v5p).
  matches = sorted((name for name in PEAK_FLOPS if name.lower() in kind.lower()), key=len)
  known = PEAK_FLOPS[matches[-1]] if matches else 0.0
  return known * jax.device_count() if known else _measured_peak_flops()


@functools.cache
def _measured_peak_flops() -> float:
  import jax  # noqa: PLC0415  jax on first use: importing this module stays light
  from absl import logging  # noqa: PLC0415  jax on first use: importing this module stays light

  try:
    cpu = jax.default_backend() == 'cpu'
    return peak_matmul_flops('float32' if cpu else 'bfloat16', 1024 if cpu else 4096, repeats=3)
  except Exception as error:
    logging.warning('No peak FLOP/s measurement (%s): MFU is not reported.', error)
    return 0.0
