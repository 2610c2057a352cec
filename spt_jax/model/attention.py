"""Causal self-attention for training: Pallas splash attention on TPU, cuDNN flash attention on GPU, XLA on CPU.

`model.attention_impl` picks one: 'auto' (the default: by the platform of the mesh's devices, so an ahead-of-time
compile for a TPU topology on a CPU host gets splash), 'splash', 'cudnn', 'xla', or '' (jax.nn.dot_product_attention
chooses). Splash needs sequences in multiples of 128; other lengths (model init, tiny tests) take the XLA path.
Every implementation computes the same function; tests check splash (Pallas interpret mode on CPU) and
XLA agree in value and gradient.
"""

import functools

import jax
import jax.numpy as jnp

from spt_jax.model import sharding

IMPLEMENTATIONS = ('auto', 'splash', 'cudnn', 'xla', '')


def resolve(implementation: str, mesh, dtype) -> str:
  """The concrete implementation of 'auto' for this mesh's platform and computation dtype."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'unknown attention_impl {implementation!r}; choose one of {list(IMPLEMENTATIONS)}')
  if implementation != 'auto':
    return implementation
  platform = _platform(mesh)
  if platform == 'tpu':
    return 'splash'
  if platform == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return 'cudnn'  # cuDNN flash attention needs a 16-bit dtype.
  return 'xla'


def _platform(mesh) -> str:
  return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, implementation: str, mesh=None):
  """softmax(q·kᵀ/√K + causal mask)·v, [B, L, H, K] in and out."""
  implementation = resolve(implementation, mesh, q_BxLxHxK.dtype)
  if implementation == 'splash' and q_BxLxHxK.shape[1] % 128:
    implementation = 'xla'  # Splash tiles the sequence by 128s; short inputs (model init) take the XLA path.
  if implementation == 'splash':  # Off TPU the Pallas kernel runs in interpret mode (slow; for tests).
    return splash_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mesh, interpret=_platform(mesh) != 'tpu')
  return jax.nn.dot_product_attention(
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True, implementation=implementation or None
  )


def _block(length: int) -> int:
  """The largest tile (at most 512) that divides the sequence (a multiple of 128)."""
  return next(block for block in (512, 256, 128) if length % block == 0)


def _splash_local(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, interpret: bool):
  """Splash attention on one device's shard: the kernel takes [H, L, K] per sequence, vmapped over B."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib  # noqa: PLC0415  TPU kernels: imported only when splash attention runs
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib  # noqa: PLC0415  TPU kernels: imported only when splash attention runs

  _, length, heads, head_dim = q_BxLxHxK.shape
  b = _block(length)
  mask = mask_lib.MultiHeadMask([mask_lib.CausalMask((length, length)) for _ in range(heads)])
  sizes = kernel_lib.BlockSizes(
    block_q=b,
    block_kv=b,
    block_kv_compute=b,
    block_q_dkv=b,
    block_kv_dkv=b,
    block_kv_dkv_compute=b,
    block_q_dq=b,
    block_kv_dq=b,
  )
  kernel = kernel_lib.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)

  def to_heads(x):  # [B, L, H, K] -> [B, H, L, K]
    return jnp.swapaxes(x, 1, 2)

  q = to_heads(q_BxLxHxK * jnp.asarray(head_dim**-0.5, q_BxLxHxK.dtype))  # The kernel does not scale.
  o_BxHxLxK = jax.vmap(kernel)(q, to_heads(k_BxLxHxK), to_heads(v_BxLxHxK))
  return to_heads(o_BxHxLxK)


def splash_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mesh=None, interpret: bool = False):
  """Causal Pallas splash attention; under a mesh, each device runs the kernel on its batch and head shard."""
  local = functools.partial(_splash_local, interpret=interpret)
  if mesh is None or mesh.size == 1:
    return local(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  spec = sharding.spec(('activation_batch', None, 'heads', None), q_BxLxHxK.shape, mesh)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK
  )
