"""What a config would build, without allocating it: parameters, mesh, tokens, steps, bytes per device."""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec

from spt_jax.model import decoder as model_lib
from spt_jax.model import flops, sharding
from spt_jax.train import run_plan
from spt_jax.train import step as train


def _bytes_per_device(boxed_tree, mesh_shape: dict[str, int]) -> int:
  """Bytes one device holds of a tree of (possibly logically partitioned) abstract arrays."""
  mesh = _ShapeOnlyMesh(mesh_shape)
  total = 0
  for leaf in jax.tree.leaves(boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
    if isinstance(leaf, nn.LogicallyPartitioned):
      value, partition = leaf.value, sharding.spec(leaf.names, leaf.value.shape, mesh)
    else:
      value, partition = leaf, PartitionSpec()
    shard = list(value.shape)
    for i, axes in enumerate(partition):
      for axis in (axes,) if isinstance(axes, str) else (axes or ()):
        shard[i] //= mesh_shape[axis]
    total += math.prod(shard) * np.dtype(value.dtype).itemsize
  return total


class _ShapeOnlyMesh:
  """Just enough of a Mesh (its axis sizes) to compute partition specs for devices we do not have."""

  def __init__(self, shape: dict[str, int]):
    self.shape = shape


def describe(config, n_devices: int) -> dict:
  """The dry-run summary of `config` (its first stage) on `n_devices` devices."""
  mesh_shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, n_devices), strict=True))
  plan = run_plan.make(config)
  c = plan.config
  sequences_per_device = plan.sequences_per_device(mesh_shape['data'] * mesh_shape['fsdp'])
  optimizer = train.make_optimizer(c, plan.schedule)
  model = model_lib.Decoder(c.model)

  def boxed_state(rng):
    params = model.init(rng, jax.numpy.zeros((1, 8), jax.numpy.int32))['params']
    return train.TrainState(
      step=jax.numpy.zeros([], jax.numpy.int32), params=params, opt_state=optimizer.init(params), rng=rng
    )

  boxed = jax.eval_shape(boxed_state, jax.random.PRNGKey(0))
  total, non_embedding = flops.count_params(c.model)
  params_bytes = _bytes_per_device(boxed.params, mesh_shape)
  state_bytes = _bytes_per_device(boxed, mesh_shape)
  return dict(
    model=c.model.preset,
    params=total,
    non_embedding_params=non_embedding,
    mesh=mesh_shape,
    devices=n_devices,
    batch_size=c.batch_size,
    seq_len=c.data.seq_len,
    grad_accum_steps=c.grad_accum_steps,
    sequences_per_device_per_microbatch=sequences_per_device,
    tokens_per_step=plan.tokens_per_step,
    steps=plan.steps,
    tokens=plan.tokens,
    params_bytes_per_device=params_bytes,
    state_bytes_per_device=state_bytes,
    train_flops_per_token=flops.train_flops_per_token(c.model, c.data.seq_len),
    peak_lr=c.optimizer.lr,
    lr_at_end=float(plan.schedule(plan.steps)),
    domain_fraction=c.mixture.domain_fraction,
  )


def format_summary(d: dict) -> str:
  gib = 1024**3
  return '\n'.join(
    [
      f'model            {d["model"]}: {d["params"] / 1e9:.3f}B parameters '
      f'({d["non_embedding_params"] / 1e9:.3f}B non-embedding)',
      f'mesh             {d["mesh"]} over {d["devices"]} devices',
      f'batch            {d["batch_size"]} × {d["seq_len"]} = {d["tokens_per_step"]:,} tokens per step; '
      f'{d["grad_accum_steps"]} microbatch(es) of {d["sequences_per_device_per_microbatch"]} sequences per device',
      f'run              {d["steps"]:,} steps, {d["tokens"] / 1e9:.2f}B tokens, '
      f'{d["train_flops_per_token"] * d["tokens"]:.3g} model FLOPs',
      f'learning rate    peak {d["peak_lr"]:.3g}, {d["lr_at_end"]:.3g} at the end',
      f'per device       parameters {d["params_bytes_per_device"] / gib:.2f} GiB, '
      f'parameters + optimizer state {d["state_bytes_per_device"] / gib:.2f} GiB',
    ]
  )
