"""OLMo-style decoder-only transformer (Flax Linen) and its named presets.

Faithful to OLMo-1B: pre-norm blocks, non-parametric LayerNorm, RoPE (rotate-half form), SwiGLU MLP, no biases,
tied input/output embeddings (optionally untied), vocabulary padded to a multiple of 128. Parameters are float32;
computation runs in `cfg.dtype`. Layers run under `nn.scan` so compile time does not grow with depth.

Every parameter carries logical axis names (see sharding.py for the rules that map them onto the mesh).
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spt_jax.model import attention, sharding
from spt_jax.model.flops import (
  PRESETS,  # The named sizes; counts and FLOPs by formula live beside them.
  padded_vocab_size,
)

REMAT_POLICIES = {
  'none': None,
  'full': jax.checkpoint_policies.nothing_saveable,
  'dots': jax.checkpoint_policies.checkpoint_dots,
  'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
AUTO_REMAT = 'auto'  # A config's remat_policy left to the run: chosen for its devices at the start (hardware/aot).


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The decoder's shapes (a preset's, spt_jax/model/flops.PRESETS) and the computation settings every preset
  shares; frozen and hashable, as a Flax module's attribute."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  layer_norm_eps: float = 1e-5
  preset: str = ''  # The preset's name ('hf': a Hugging Face model of no preset's shapes).
  dtype: str = 'float32'  # Computation dtype; 'bfloat16' on accelerators.
  param_dtype: str = 'float32'
  tie_embeddings: bool = True  # The paper pretrains tied and unties for finetuning.
  # Training attention (attention.py): 'auto' = splash on TPU, cuDNN on GPU in 16-bit, XLA otherwise; or 'splash',
  # 'cudnn', 'xla', '' (jax.nn.dot_product_attention picks).
  attention_impl: str = 'auto'
  # Sequence positions per chunk of the loss (train.chunked_token_losses): the output head and cross-entropy run
  # one chunk at a time and are recomputed in the backward pass, so [B, L, V] float32 logits never exist at
  # once. 0: the whole sequence at once.
  loss_chunk_length: int = 0
  scan_layers: bool = True  # nn.scan over layers: compile time independent of depth.
  # Layers per iteration of the scan's loop (lax.scan's unroll): the same parameters and numbers, but a loop
  # unrolled n_layers times (0: all) drops the per-iteration slicing and stacking that a small model pays for.
  scan_unroll: int = 1
  remat_policy: str = 'none'  # One of REMAT_POLICIES: what the backward pass may keep instead of recomputing.
  init_std: float = 0.02  # Normal init; output projections are scaled down by sqrt(2 * n_layers).


def preset_config(name: str) -> ModelConfig:
  """The model config of a named preset, with the computation settings every preset shares."""
  if name not in PRESETS:
    raise ValueError(f'unknown model preset {name!r}; choose one of {sorted(PRESETS)}')
  return ModelConfig(**PRESETS[name], preset=name)


def rope_tables(positions_L: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos and sin [L, head_dim] of the rotary embedding at these positions, rotate-half layout (GPT-NeoX / OLMo /
  Hugging Face); computed once per forward pass and shared by every layer."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_LxK = positions_L[:, None].astype(jnp.float32) * inv_freq
  angles_LxK = jnp.concatenate([angles_LxK, angles_LxK], axis=-1)
  return jnp.cos(angles_LxK), jnp.sin(angles_LxK)


def rope(x_BxLxHxK: jax.Array, cos_LxK: jax.Array, sin_LxK: jax.Array) -> jax.Array:
  """Rotary position embedding of [B, L, H, K] from rope_tables, in float32."""
  x = x_BxLxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos_LxK[:, None, :] + rotated * sin_LxK[:, None, :]).astype(x_BxLxHxK.dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Non-parametric LayerNorm (no scale, no bias), computed in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _init(std: float, names: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


class Block(nn.Module):
  """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  cfg: ModelConfig
  mesh: Any = None

  @nn.compact
  def __call__(self, x_BxLxD, positions, cache):
    positions_L, cos_LxK, sin_LxK = positions
    cfg = self.cfg
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    heads, head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
    out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    dense = functools.partial(nn.DenseGeneral, use_bias=False, dtype=dtype, param_dtype=param_dtype)

    h_BxLxD = layer_norm(x_BxLxD, cfg.layer_norm_eps)
    qkv_init = _init(cfg.init_std, ('embed', 'heads', 'head_dim'))
    q_BxLxHxK = dense((heads, head_dim), kernel_init=qkv_init, name='q')(h_BxLxD)
    k_BxLxHxK = dense((heads, head_dim), kernel_init=qkv_init, name='k')(h_BxLxD)
    v_BxLxHxK = dense((heads, head_dim), kernel_init=qkv_init, name='v')(h_BxLxD)
    q_BxLxHxK = rope(q_BxLxHxK, cos_LxK, sin_LxK)
    k_BxLxHxK = rope(k_BxLxHxK, cos_LxK, sin_LxK)

    if cache is None:
      o_BxLxHxK = attention.causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, cfg.attention_impl, self.mesh)
    else:
      # Decoding: write this call's keys/values into the cache at their positions, attend to every cached
      # position up to each query's own.
      k_cache, v_cache = cache
      start = positions_L[0]
      k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k_BxLxHxK.astype(k_cache.dtype), start, axis=1)
      v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v_BxLxHxK.astype(v_cache.dtype), start, axis=1)
      key_positions = jnp.arange(k_cache.shape[1])
      mask_1x1xLxS = key_positions[None, None, None, :] <= positions_L[None, None, :, None]
      o_BxLxHxK = jax.nn.dot_product_attention(
        q_BxLxHxK, k_cache.astype(dtype), v_cache.astype(dtype), mask=mask_1x1xLxS, implementation='xla'
      )
      cache = (k_cache, v_cache)
    x_BxLxD = x_BxLxD + dense(
      cfg.d_model, axis=(-2, -1), name='o', kernel_init=_init(out_std, ('heads', 'head_dim', 'embed'))
    )(o_BxLxHxK)

    h_BxLxD = layer_norm(x_BxLxD, cfg.layer_norm_eps)
    up_init = _init(cfg.init_std, ('embed', 'mlp'))
    gate_BxLxF = dense(cfg.mlp_dim, kernel_init=up_init, name='gate')(h_BxLxD)
    up_BxLxF = dense(cfg.mlp_dim, kernel_init=up_init, name='up')(h_BxLxD)
    down = dense(cfg.d_model, kernel_init=_init(out_std, ('mlp', 'embed')), name='down')
    x_BxLxD = x_BxLxD + down(nn.silu(gate_BxLxF) * up_BxLxF)
    x_BxLxD = constrain(x_BxLxD, ('activation_batch', 'activation_length', 'activation_embed'), self.mesh)
    return x_BxLxD, cache


def constrain(x: jax.Array, names: tuple[str, ...], mesh) -> jax.Array:
  """Shards an activation by logical names when a mesh is given (no-op otherwise)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, sharding.named_sharding(names, x.shape, mesh))


class Decoder(nn.Module):
  """Token ids [B, L] -> float32 logits [B, L, padded V]; with `cache`, also returns the updated KV cache.

  With `return_hidden`, returns the final normalised hidden states [B, L, D] instead of logits (the loss then
  applies the head chunk by chunk: see `head_kernel` and train.chunked_token_losses).
  """

  cfg: ModelConfig
  mesh: Any = None

  @nn.compact
  def __call__(self, tokens_BxL, cache=None, start: jax.Array | int = 0, return_hidden: bool = False):
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    embed = nn.Embed(
      padded_vocab_size(cfg),
      cfg.d_model,
      dtype=dtype,
      param_dtype=jnp.dtype(cfg.param_dtype),
      embedding_init=_init(cfg.init_std, ('vocab', 'embed')),
      name='embed',
    )
    x_BxLxD = embed(tokens_BxL)
    x_BxLxD = constrain(x_BxLxD, ('activation_batch', 'activation_length', 'activation_embed'), self.mesh)
    positions_L = start + jnp.arange(tokens_BxL.shape[1])  # Every row of a batch starts at `start`.
    positions = (positions_L, *rope_tables(positions_L, cfg.d_model // cfg.n_heads, cfg.rope_theta))

    if cfg.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'unknown remat_policy {cfg.remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}')
    block = Block
    if cfg.remat_policy != 'none':
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      blocks = nn.scan(
        block,
        variable_axes={'params': 0},
        split_rngs={'params': True},
        in_axes=(nn.broadcast, 0),
        length=cfg.n_layers,
        unroll=cfg.scan_unroll or cfg.n_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'},
      )(cfg, self.mesh, name='blocks')
      x_BxLxD, cache = blocks(x_BxLxD, positions, cache)
    else:
      new_cache = []
      for i in range(cfg.n_layers):
        layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
        x_BxLxD, layer_cache = block(cfg, self.mesh, name=f'block_{i}')(x_BxLxD, positions, layer_cache)
        new_cache.append(layer_cache)
      if cache is not None:
        cache = jax.tree.map(lambda *c: jnp.stack(c), *new_cache)

    x_BxLxD = layer_norm(x_BxLxD, cfg.layer_norm_eps)
    if return_hidden:  # Training and eval only (no cache); init always builds the head below.
      return x_BxLxD
    if cfg.tie_embeddings:
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      logits_BxLxV = nn.DenseGeneral(
        padded_vocab_size(cfg),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=_init(cfg.init_std, ('embed', 'vocab')),
        name='lm_head',
      )(x_BxLxD)
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    return logits_BxLxV if cache is None else (logits_BxLxV, cache)


def head_kernel(cfg, params) -> jax.Array:
  """The output head as a [D, padded V] matrix: the transposed embedding when tied, else lm_head."""
  if cfg.tie_embeddings:
    return params['embed']['embedding'].T
  return params['lm_head']['kernel']


def init_cache(cfg, batch: int, max_len: int, dtype=None):
  """An empty KV cache (keys, values), each [layers, B, max_len, H, head_dim]."""
  shape = (cfg.n_layers, batch, max_len, cfg.n_heads, cfg.d_model // cfg.n_heads)
  dtype = jnp.dtype(dtype or cfg.dtype)
  return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def abstract_params(cfg) -> Any:
  """Parameter shapes (with logical-axis boxes) without allocating anything."""
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0), tokens))['params']


def shape_differences(model_shapes: dict, stored_shapes: dict, stored: str, limit: int = 4) -> str:
  """'' when two {parameter name: shape} maps agree; else what is missing, extra or of another shape."""
  problems = [f'{k}: missing from the {stored}' for k in model_shapes if k not in stored_shapes]
  problems += [f'{k}: not in the model' for k in stored_shapes if k not in model_shapes]
  problems += [
    f'{k}: {stored} {stored_shapes[k]} vs model {model_shapes[k]}'
    for k in model_shapes
    if k in stored_shapes and stored_shapes[k] != model_shapes[k]
  ]
  more = f' (and {len(problems) - limit} more)' if len(problems) > limit else ''
  return '; '.join(problems[:limit]) + more


def untie(params):
  """Adds an output head initialised as a copy of the input embedding (for finetuning untied)."""
  params = dict(params)
  params['lm_head'] = {'kernel': jnp.asarray(params['embed']['embedding']).T}
  return params


def scan_to_unrolled(params, n_layers: int):
  """Scanned parameters (leading layer axis under 'blocks') -> one subtree per layer (block_0, ...)."""
  params = dict(params)
  blocks = params.pop('blocks')
  for i in range(n_layers):
    params[f'block_{i}'] = jax.tree.map(lambda x, i=i: x[i], blocks)
  return params
