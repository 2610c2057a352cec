"""The device mesh, the one table of logical-axis rules, and the shardings of state and batches.

Parameters and activations are named by logical axes (model.py); RULES maps each name onto mesh axes. A mesh
axis of size 1 costs nothing, so one code path serves 1 CPU and a pod. A dimension that a mesh axis does not
divide is left unsharded along that axis instead of failing (small CPU models on 8 simulated devices).
"""

import glob
import logging
import math
import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis -> mesh axes. Parameters are sharded over fsdp on their model dimension and over tensor on
# heads / MLP / vocabulary; the batch is split over data and fsdp together (FSDP is data parallel too).
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
_RULES = dict(RULES)


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; at most one may be -1, meaning all remaining devices."""
  sizes = [int(mesh_cfg[axis]) for axis in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive, with at most one -1; '
                     'set --config.mesh.data/fsdp/tensor accordingly')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))}: {known} does not divide the {n_devices} devices; '
                       'change --config.mesh.*')
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but {n_devices} are '
                     'available; make the product match or set one axis to -1')
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), laid out for the interconnect."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  try:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def spec(names: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """PartitionSpec for logical `names`, dropping mesh axes that do not divide their dimension."""
  out = []
  used = set()
  for name, dim in zip(names, shape):
    axes = _RULES.get(name) if name is not None else None
    if name is not None and name not in _RULES:
      raise ValueError(f'logical axis {name!r} has no sharding rule; add it to sharding.RULES')
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = []
    for axis in axes:
      size = mesh.shape[axis]
      if axis in used or size == 1:
        continue
      if dim % (math.prod(mesh.shape[a] for a in kept) * size):
        logging.debug('axis %s (%d) does not divide %s=%d: left unsharded', axis, size, name, dim)
        continue
      kept.append(axis)
    used.update(kept)
    out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return PartitionSpec(*out)


def named_sharding(names, shape, mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, spec(tuple(names), tuple(shape), mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def tree_shardings(abstract_tree, mesh: Mesh):
  """Shardings for a pytree whose leaves may be logically partitioned boxes (from model init)."""
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return named_sharding(leaf.names, leaf.value.shape, mesh)
    return replicated(mesh)
  return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sequences split over (data, fsdp); the length axis is whole on every device."""
  return NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))


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
  if not (force or on_tpu_vm or address):
    return
  kwargs = {}
  if address:
    count, index = os.environ.get('JAX_NUM_PROCESSES', ''), os.environ.get('JAX_PROCESS_ID', '')
    if not (count or index) and on_tpu_vm:
      kwargs = {'coordinator_address': address}  # The TPU VM metadata gives the process count and index.
    elif not (count.isdigit() and index.isdigit() and int(index) < int(count)):
      raise ValueError(f'JAX_COORDINATOR_ADDRESS={address} needs JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i '
                       f'(0 <= i < N) on every process; got {count or "unset"!s} and {index or "unset"!s}')
    else:
      kwargs = dict(coordinator_address=address, num_processes=int(count), process_id=int(index))
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def default_workdir(config_arg: str) -> str:
  """runs/<config file stem>_<preset>; without a preset in the string, the default of the file's get_config."""
  path, _, preset = (config_arg or 'run').partition(':')
  if not preset:
    try:
      import importlib.util  # pylint: disable=g-import-not-at-top
      import inspect  # pylint: disable=g-import-not-at-top
      module_spec = importlib.util.spec_from_file_location('_config_for_workdir', path)
      module = importlib.util.module_from_spec(module_spec)
      module_spec.loader.exec_module(module)
      defaults = [p.default for p in inspect.signature(module.get_config).parameters.values()]
      preset = defaults[0] if defaults and isinstance(defaults[0], str) else ''
    except Exception:  # pylint: disable=broad-except
      preset = ''
  return os.path.join('runs', f'{os.path.splitext(os.path.basename(path))[0]}_{preset or "default"}')


def check_shared_folder(path: str, what: str, wait_seconds: float = 10.0) -> None:
  """With several processes, a one-line error on every process unless all of them see the same folder at path.

  Process 0 writes a probe file there and names it through JAX's coordination service; every other process
  looks for it (for a few seconds: shared file systems may show new files late) and reports back.
  """
  if jax.process_count() == 1:
    return
  import time  # pylint: disable=g-import-not-at-top
  import uuid  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client, index, count = distributed.global_state.client, jax.process_index(), jax.process_count()
  key = f'spt_jax/shared/{what}'  # The same on every process, whatever path each was given.
  os.makedirs(path, exist_ok=True)
  if index == 0:
    token = uuid.uuid4().hex
    probe = os.path.join(path, f'.shared-probe-{token}')
    with open(probe, 'w') as f:
      f.write(token)
    client.key_value_set(key, token)
    answers = {i: client.blocking_key_value_get(f'{key}/{i}', 600_000) for i in range(1, count)}
    os.remove(probe)
    missing = sorted(i for i, seen in answers.items() if seen != 'yes')
    client.key_value_set(f'{key}/missing', ','.join(map(str, missing)))
  else:
    probe = os.path.join(path, f'.shared-probe-{client.blocking_key_value_get(key, 600_000)}')
    deadline = time.time() + wait_seconds
    while not os.path.exists(probe) and time.time() < deadline:
      time.sleep(0.5)
    seen = os.path.exists(probe)
    client.key_value_set(f'{key}/{index}', 'yes' if seen else 'no')
    missing = [int(i) for i in client.blocking_key_value_get(f'{key}/missing', 600_000).split(',') if i]
  if missing:
    raise ValueError(f'the {what} {os.path.abspath(path)} is not shared by the {count} processes (process(es) '
                     f'{missing} do not see what process 0 writes there); pass --{what}=<a path every host sees, '
                     'e.g. a gcsfuse mount /gcs/BUCKET/run>')
