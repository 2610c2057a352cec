"""The device mesh, the one table of logical-axis rules, and the shardings of state and batches.

Parameters and activations are named by logical axes (decoder.py); RULES maps each name onto mesh axes through
flax's logical partitioning, and `jax.make_mesh` lays the mesh out. A mesh axis of size 1 costs nothing, so one
code path serves 1 CPU and a pod. flax maps names without looking at shapes, so `spec` then drops each mesh axis
that does not divide its dimension, leaving it unsharded instead of failing (small CPU models on 8 simulated
devices, the batch of 1 that init traces). Hosts agree through `jax.experimental.multihost_utils`.
"""

import glob
import logging
import math
import os
import time
import uuid

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis -> mesh axes, as flax partitioning rules. Parameters are sharded over fsdp on their model dimension
# and over tensor on heads / MLP / vocabulary; the batch is split over data and fsdp together (FSDP is data
# parallel too).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ('batch', ('data', 'fsdp')),
  ('activation_batch', ('data', 'fsdp')),
  ('activation_length', None),
  ('activation_embed', None),
  ('vocab', 'tensor'),
  ('embed', 'fsdp'),
  ('heads', 'tensor'),
  ('mlp', 'tensor'),
  ('head_dim', None),
  ('layers', None),
)
_RULED_NAMES = frozenset(name for name, _ in RULES)


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; at most one may be -1, meaning all remaining devices."""
  sizes = [int(getattr(mesh_cfg, axis)) for axis in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
      f'mesh {dict(zip(MESH_AXES, sizes, strict=True))}: sizes must be positive, with at most one -1; '
      'set --config.mesh.data/fsdp/tensor accordingly'
    )
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(
        f'mesh {dict(zip(MESH_AXES, sizes, strict=True))}: {known} does not divide the {n_devices} devices; '
        'change --config.mesh.*'
      )
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ValueError(
      f'mesh {dict(zip(MESH_AXES, sizes, strict=True))} has {math.prod(sizes)} devices but {n_devices} are '
      'available; make the product match or set one axis to -1'
    )
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), laid out for the interconnect by jax.make_mesh."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: shardings come from jit's in/out shardings and constraints, not from the types of arrays.
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    # jax.make_mesh refuses device sets it cannot lay out physically (part of a TPU slice, several slices).
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def _check_names(names) -> None:
  unknown = [name for name in names if name is not None and name not in _RULED_NAMES]
  if unknown:
    raise ValueError(f'logical axis {unknown[0]!r} has no sharding rule; add it to sharding.RULES')


def _dividing(partition: PartitionSpec, shape: tuple[int, ...], mesh_sizes) -> PartitionSpec:
  """`partition` without size-1 mesh axes and without mesh axes that do not divide their dimension."""
  out = []
  for axes, dim in zip(partition, shape, strict=False):  # A partition may name fewer axes than the shape has.
    kept = []
    for axis in (axes,) if isinstance(axes, str) else tuple(axes or ()):
      size = mesh_sizes[axis]
      if size == 1:
        continue
      if dim % (math.prod(mesh_sizes[a] for a in kept) * size):
        logging.debug('axis %s (%d) does not divide a dimension of %d: left unsharded', axis, size, dim)
        continue
      kept.append(axis)
    out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return PartitionSpec(*out)


def spec(names: tuple[str | None, ...], shape: tuple[int, ...], mesh) -> PartitionSpec:
  """PartitionSpec for logical `names` by RULES, dropping mesh axes that do not divide their dimension."""
  _check_names(names)
  return _dividing(nn.logical_to_mesh_axes(tuple(names), RULES), tuple(shape), mesh.shape)


def named_sharding(names, shape, mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, spec(tuple(names), tuple(shape), mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def tree_shardings(abstract_tree, mesh: Mesh):
  """Shardings for a pytree whose leaves may be logically partitioned boxes (from model init); others replicate."""
  logical_specs = nn.get_partition_spec(abstract_tree)  # Logical names of each box; PartitionSpec() otherwise.
  jax.tree.map(_check_names, logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, RULES)
  return jax.tree.map(
    lambda s, x: NamedSharding(mesh, _dividing(s.spec, x.shape, mesh.shape)), shardings, nn.unbox(abstract_tree)
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sequences split over (data, fsdp); the length axis is whole on every device."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(('batch',), RULES))


def batch_divisor(mesh: Mesh) -> int:
  """The global batch must be a multiple of this."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def initialize_distributed(force: bool = False) -> None:
  """Starts multi-host JAX on Cloud TPU VMs (JAX finds the other hosts itself) or where a coordinator is set.

  Elsewhere (GPU clusters JAX does not detect, several processes on one machine) set
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i on every process. On a TPU VM this
  runs even with one host: it is harmless there, and it also starts JAX's preemption service.
  """
  on_tpu_vm = bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')) or 'TPU_WORKER_HOSTNAMES' in os.environ
  address = os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  if jax.distributed.is_initialized() or not (force or on_tpu_vm or address):
    return
  kwargs = {}
  if address:
    count, index = os.environ.get('JAX_NUM_PROCESSES', ''), os.environ.get('JAX_PROCESS_ID', '')
    if not (count or index) and on_tpu_vm:
      kwargs = {'coordinator_address': address}  # The TPU VM metadata gives the process count and index.
    elif not (count.isdigit() and index.isdigit() and int(index) < int(count)):
      raise ValueError(
        f'JAX_COORDINATOR_ADDRESS={address} needs JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i '
        f'(0 <= i < N) on every process; got {count or "unset"!s} and {index or "unset"!s}'
      )
    else:
      kwargs = dict(coordinator_address=address, num_processes=int(count), process_id=int(index))
  jax.distributed.initialize(**kwargs)
  logging.info(
    'jax.distributed: process %d of %d, %d local / %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def default_workdir(config_arg: str) -> str:
  """runs/<config file stem>_<preset>; without a preset in the string, the default of the file's get_config."""
  path, _, preset = (config_arg or 'run').partition(':')
  if not preset:
    try:
      import importlib.util  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
      import inspect  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

      module_spec = importlib.util.spec_from_file_location('_config_for_workdir', path)
      module = importlib.util.module_from_spec(module_spec)
      module_spec.loader.exec_module(module)
      defaults = [p.default for p in inspect.signature(module.get_config).parameters.values()]
      preset = defaults[0] if defaults and isinstance(defaults[0], str) else ''
    except Exception:
      preset = ''
  return os.path.join('runs', f'{os.path.splitext(os.path.basename(path))[0]}_{preset or "default"}')


def check_shared_folder(path: str, what: str, wait_seconds: float = 10.0) -> None:
  """With several processes, a one-line error on every process unless all of them see the same folder at path.

  Process 0 writes a probe file there and broadcasts its name; every other process looks for it (for a few
  seconds: shared file systems may show new files late), and all processes gather who saw it.
  """
  if jax.process_count() == 1:
    return
  index, count = jax.process_index(), jax.process_count()
  os.makedirs(path, exist_ok=True)
  token = np.frombuffer(uuid.uuid4().bytes, np.uint8)
  if index == 0:  # Written before it is named, so that every other process may look for it at once.
    with open(os.path.join(path, f'.shared-probe-{bytes(token).hex()}'), 'w') as f:
      f.write(bytes(token).hex())
  token = multihost_utils.broadcast_one_to_all(token)  # Process 0's token on every process.
  probe = os.path.join(path, f'.shared-probe-{bytes(token).hex()}')
  deadline = time.time() + wait_seconds
  while not os.path.exists(probe) and time.time() < deadline:
    time.sleep(0.5)
  seen_by = multihost_utils.process_allgather(np.int32(os.path.exists(probe)))  # One entry per process.
  if index == 0:
    os.remove(probe)
  missing = [i for i in range(count) if not seen_by[i]]
  if missing:
    raise ValueError(
      f'the {what} {os.path.abspath(path)} is not shared by the {count} processes (process(es) '
      f'{missing} do not see what process 0 writes there); pass --{what}=gs://BUCKET/run (or a path every host '
      'sees, e.g. a gcsfuse mount /gcs/BUCKET/run)'
    )
