"""What a config would build, without allocating it: parameters, mesh, tokens, steps, bytes per device, and where
its data comes from (nothing is downloaded: the sources' homes, the bytes each host reads, the cache bound)."""

import dataclasses
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec

from spt_jax.data import hub_datasets, mixture
from spt_jax.data import sources as sources_lib
from spt_jax.model import decoder as model_lib
from spt_jax.model import flops, sharding
from spt_jax.storage import bucket
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


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a run would be on a number of devices: its model, mesh, batch, length, learning rate and bytes per device."""

  model: str  # The preset's name.
  params: int
  non_embedding_params: int
  mesh: dict[str, int]  # Devices along each mesh axis.
  devices: int
  batch_size: int
  seq_len: int
  grad_accum_steps: int
  sequences_per_device_per_microbatch: int
  tokens_per_step: int
  steps: int
  tokens: int
  params_bytes_per_device: int
  state_bytes_per_device: int  # Parameters and optimizer state.
  train_flops_per_token: float
  peak_lr: float
  lr_at_end: float
  domain_fraction: float

  @property
  def sequences_per_device(self) -> int:
    """Per step, all microbatches."""
    return self.sequences_per_device_per_microbatch * self.grad_accum_steps

  def format(self) -> str:
    gib = 1024**3
    return '\n'.join(
      [
        f'model            {self.model}: {self.params / 1e9:.3f}B parameters '
        f'({self.non_embedding_params / 1e9:.3f}B non-embedding)',
        f'mesh             {self.mesh} over {self.devices} devices',
        f'batch            {self.batch_size} × {self.seq_len} = {self.tokens_per_step:,} tokens per step; '
        f'{self.grad_accum_steps} microbatch(es) of {self.sequences_per_device_per_microbatch} sequences per device',
        f'run              {self.steps:,} steps, {self.tokens / 1e9:.2f}B tokens, '
        f'{self.train_flops_per_token * self.tokens:.3g} model FLOPs',
        f'learning rate    peak {self.peak_lr:.3g}, {self.lr_at_end:.3g} at the end',
        f'per device       parameters {self.params_bytes_per_device / gib:.2f} GiB, '
        f'parameters + optimizer state {self.state_bytes_per_device / gib:.2f} GiB',
      ]
    )


def describe(config, n_devices: int) -> Summary:
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
  return Summary(
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


@dataclasses.dataclass(frozen=True)
class SourcePlan:
  """Where one training source comes from and how a run reads it."""

  name: str
  spec: str
  home: str  # Repositories at their revisions and files, or the files listed, or the spec itself.
  bytes_per_host: int | None  # Read by range for training, per host; None: prepared once (downloaded whole).


@dataclasses.dataclass(frozen=True)
class DataPlan:
  """The data a run reads, as far as it is known before any download."""

  hosts: int
  sources: tuple[SourcePlan, ...]
  cache_bytes: int  # The row cache's bound per process (remote token files).

  def format(self) -> str:
    lines = []
    for s in self.sources:
      how = (
        f'read by range, the rows each host trains on: {s.bytes_per_host * self.hosts / 1e9:,.1f} GB in all, '
        f'{s.bytes_per_host / 1e9:,.1f} GB per host ({self.hosts} host(s)), through a row cache of at most '
        f'{self.cache_bytes / 2**30:.2f} GiB per process'
        if s.bytes_per_host is not None
        else 'prepared once (process 0 downloads what it reads; the sizes are listed on first contact)'
      )
      lines.append(f'{s.name:8s} {s.spec}: {s.home}; {how}')
    return '\n'.join(f'{"data" if k == 0 else "":17s}{line}' for k, line in enumerate(lines))


def data_plan(config, hosts: int) -> DataPlan:
  """The data plan of `config` on `hosts` hosts, from the specs and the facts kept here (no network)."""
  plan = run_plan.make(config)
  delta = mixture.summary_deltas(config)['domain_fraction']
  trained = {'general': plan.tokens * (1 - delta), 'domain': plan.tokens * delta}
  sources = []
  for name in ('general', 'domain'):
    spec = getattr(config.data, name)
    kind, _, rest = spec.partition(':')
    target = rest.partition('?')[0]
    home, per_host = spec, None
    if kind == 'hub' and target in hub_datasets.DATASETS:
      dataset = hub_datasets.DATASETS[target]
      parts = ', '.join(
        f'{p.repo}@{p.revision[:12]} ' + f'{p.folder}/{p.file_pattern}'.format(config='<config>', split='train')
        for p in dataset.parts
      )
      subset = f'; subset {dataset.where} ({dataset.why})' if dataset.where else ''
      budget = getattr(config.data, f'{name}_max_tokens')
      home = f'{parts}{subset}' + (f'; subsampled to {budget / 1e6:,.0f}M tokens' if budget else '')
    elif kind == 'tokens' and (target.startswith('@') or not any(c in target for c in '*?[')):
      source = sources_lib.parse(spec, name, config.data.cache_dir)
      dtype = np.dtype(source.options['dtype'])
      home = f'{len(source.paths)} file(s) listed ({source.paths[0]}, ...), {dtype.name}'
      if any(bucket.is_url(p) for p in source.paths):
        row = config.data.seq_len + 1
        per_host = int(trained[name] / config.data.seq_len * row * dtype.itemsize / hosts)
    sources.append(SourcePlan(name, spec, home, per_host))
  return DataPlan(hosts, tuple(sources), int(config.data.remote_cache_bytes))
