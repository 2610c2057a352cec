"""A plan to rent hardware by: the real train and eval steps compiled ahead of time for a named Cloud TPU topology.

  python -m spt_jax.main --config=configs/proofpile.py --dry_run --topology=v5e-256

libtpu (the `[tpu]` extra) compiles for a TPU topology on any host, a CPU-only one included; the compiled program
reports its memory per chip. FLOPs are counted by formula (6·N·D + attention, flops.train_flops_per_token):
the compiled cost analysis counts a scanned layer once. When the run does not fit, the planner tries more
microbatches, then full rematerialisation, and names the cheapest setting that fits.

A config may leave those two knobs to the run (`grad_accum_steps=0`, `model.remat_policy='auto'`, as the paper
presets do): the plan then shows what the run will choose, and `fit_to_devices` makes that choice at the start of
a run on an accelerator by the same search, compiled for the chips it runs on (on a CPU: one microbatch, no remat).
"""

import dataclasses
import functools
import math
import os
import re

import jax
import jax.numpy as jnp

from spt_jax.hardware import dry_run
from spt_jax.model import decoder, sharding
from spt_jax.train import config as config_lib
from spt_jax.train import run_plan, validate
from spt_jax.train import step as train

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str  # As in libtpu's topology names: v4, v5e, v5p, v6e.
  dimensions: int  # 2D torus (v5e, v6e) or 3D (v4, v5p).
  cores_in_name: int  # v4-8 and v5p-8 count TensorCores (2 per chip); v5e-8 and v6e-8 count chips.
  hbm_bytes: int
  peak_bf16_flops: float  # Per chip, from Cloud TPU's system architecture pages.
  chips_per_host: int  # A slice of more chips has chips / chips_per_host hosts (the same pages' slice tables).


CHIPS = {
  'v4': Chip('v4', 3, 2, 32 * GIB, 275e12, 4),
  'v5e': Chip('v5e', 2, 1, 16 * GIB, 197e12, 8),
  'v5litepod': Chip('v5e', 2, 1, 16 * GIB, 197e12, 8),
  'v5p': Chip('v5p', 3, 2, 95 * GIB, 459e12, 4),
  'v6e': Chip('v6e', 2, 1, 32 * GIB, 918e12, 8),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  chip: Chip
  chips: int
  shape: tuple[int, ...]  # Chips along each torus axis, e.g. (16, 16) for v5e-256.

  @property
  def hosts(self) -> int:
    return max(1, self.chips // self.chip.chips_per_host)

  @property
  def libtpu_name(self) -> str:
    return f'{self.chip.generation}:{"x".join(map(str, self.shape))}'


def parse_topology(name: str) -> Topology:
  """'v5e-256' -> 256 v5e chips as a 16x16 torus; a one-line error for anything else."""
  match = re.fullmatch(r'(v4|v5e|v5litepod|v5p|v6e)-(\d+)', name.strip().lower())
  hint = 'use a Cloud TPU accelerator type: v4-N, v5e-N (or v5litepod-N), v5p-N, v6e-N, e.g. v5e-256 or v4-8'
  if not match:
    raise ValueError(f'unknown topology {name!r}; {hint}')
  chip, count = CHIPS[match.group(1)], int(match.group(2))
  chips = count // chip.cores_in_name
  smallest = 4 if chip.dimensions == 3 else 1
  if count % chip.cores_in_name or chips < smallest or chips & (chips - 1) or chips > 4096:
    raise ValueError(
      f'unknown topology {name!r}: {match.group(1)} slices have a power-of-two number of chips '
      f'(at least {smallest}){" and count 2 cores per chip" if chip.cores_in_name == 2 else ""}; '
      f'{hint}'
    )
  if chip.dimensions == 2:
    side = 2 ** (int(math.log2(chips)) // 2)
    shape = (side, chips // side)
  else:
    shape = [2, 2, 1]
    while math.prod(shape) < chips:  # 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ...
      smallest_side = min(shape)
      shape[max(i for i, s in enumerate(shape) if s == smallest_side)] *= 2
    shape = tuple(shape)
  return Topology(name, chip, chips, shape)


def topology_devices(topology: Topology):
  """The abstract TPU devices of a topology (compilation only); needs libtpu."""
  # Compiling needs no chip, so several processes (pytest workers, two dry runs) may load libtpu at once.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # noqa: PLC0415  jax on first use: importing this module stays light

  host_bounds = (2, 2, 1) if topology.chips >= 4 else (topology.shape[0], topology.shape[1], 1)
  try:
    description = topologies.get_topology_desc(
      topology_name=topology.libtpu_name,
      platform='tpu',
      chip_config_name='megacore' if topology.chip.cores_in_name == 2 else 'default',
      chips_per_host_bounds=host_bounds,
      num_slices=1,
    )
  except Exception as e:  # libtpu absent or refusing: one line that says what to install.
    raise ValueError(
      f'--topology={topology.name} needs libtpu to compile for TPU on this host '
      f"(pip install -e '.[tpu]'): {str(e).splitlines()[0][:200]}"
    ) from None
  return description.devices


def libtpu_missing() -> str:
  """'' where this host can compile for TPU topologies, else why not."""
  try:
    topology_devices(parse_topology('v5e-1'))
    return ''
  except ValueError as e:
    return str(e)


def _shard_bytes(abstract_tree) -> int:
  return sum(
    math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract_tree)
  )


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """One compiled step's memory per chip, or why XLA refused to compile it."""

  arguments_bytes: int | None = None
  temporaries_bytes: int | None = None  # When refused: what XLA said it wanted, where it said.
  peak_bytes: int | None = None  # None: it did not compile.
  error: str = ''

  def format(self, name: str) -> str:
    if self.error:
      return f'{name}: does not compile ({self.error[:120]})'
    return f'{name}: temporaries {_size(self.temporaries_bytes)}, peak {_size(self.peak_bytes)}'


@dataclasses.dataclass(frozen=True)
class Compiled:
  """The train and eval steps compiled with one setting of the memory knobs."""

  microbatches: int
  remat_policy: str
  state_bytes: int  # Parameters and optimizer state per chip.
  train: StepMemory
  eval: StepMemory

  def fits(self, hbm_bytes: int) -> bool:
    return all(s.peak_bytes is not None and s.peak_bytes <= hbm_bytes for s in (self.train, self.eval))

  def format(self, hbm_bytes: int) -> str:
    verdict = 'fits' if self.fits(hbm_bytes) else 'does not fit'
    return (
      f'compiled         remat={self.remat_policy}, {self.microbatches} microbatch(es): '
      f'state {_size(self.state_bytes)}, {self.train.format("train")}; {self.eval.format("eval")}; '
      f'{verdict} in {hbm_bytes / GIB:.0f} GiB'
    )


@dataclasses.dataclass(frozen=True)
class Recommendation:
  """The cheapest memory setting found that fits."""

  remat_policy: str
  grad_accum_steps: int
  peak_bytes: int


@dataclasses.dataclass(frozen=True)
class TopologyPlan:
  """The dry run on a TPU topology: the run's summary, its compiled memory per chip, time and cost."""

  summary: dry_run.Summary
  topology: str
  libtpu_topology: str
  chips: int
  chip_hbm_bytes: int
  chip_peak_flops: float
  compiled: Compiled  # As configured.
  tried: tuple[Compiled, ...]  # The search's compiles, in order.
  recommendation: Recommendation | None  # None where it fits as configured or nothing tried fits.
  mfu: float  # Assumed for the time and cost.
  data: dry_run.DataPlan
  chosen: bool = False  # The config left the knobs to the run: `compiled` is what the search chose for it.

  @property
  def sequences_per_chip(self) -> int:  # Per step, all microbatches.
    return self.summary.sequences_per_device

  @property
  def fits(self) -> bool:
    return self.compiled.fits(self.chip_hbm_bytes)

  @property
  def step_flops(self) -> float:
    return self.summary.train_flops_per_token * self.summary.tokens_per_step

  @property
  def step_seconds_floor(self) -> float:  # At the chips' peak.
    return self.step_flops / (self.chips * self.chip_peak_flops)

  @property
  def chip_hours(self) -> float:
    return self.summary.steps * self.step_flops / (self.chip_peak_flops * self.mfu) / 3600

  def to_json(self) -> dict:
    """One flat record: the summary's fields, then the plan's, the derived figures included."""
    record = dataclasses.asdict(self)
    derived = ('sequences_per_chip', 'fits', 'step_flops', 'step_seconds_floor', 'chip_hours')
    return {**record.pop('summary'), **record, **{name: getattr(self, name) for name in derived}}

  def format(self) -> str:
    c, hbm = self.compiled, self.chip_hbm_bytes
    lines = [
      self.summary.format(),
      f'topology         {self.topology} ({self.libtpu_topology}, {self.chips} chips of {hbm / GIB:.0f} GiB HBM, '
      f'{self.chip_peak_flops / 1e12:.0f} TFLOP/s bf16 peak); {self.sequences_per_chip} sequences per chip per '
      'step',
    ]
    if c.train.peak_bytes is not None:
      lines.append(
        f'per chip         parameters + optimizer state {_size(c.state_bytes)}, train temporaries '
        f'{_size(c.train.temporaries_bytes)}, train peak {_size(c.train.peak_bytes)} '
        f'of {hbm / GIB:.0f} GiB ({"fits" if self.fits else "does NOT fit"}; '
        f'{_size(hbm - c.train.peak_bytes)} free)'
      )
    else:
      lines.append(f'per chip         does NOT fit: {c.train.error[:200]}')
    lines.append(self.data.format())
    lines += [
      f'FLOPs            {self.step_flops:.3g} per step (6·N·D + attention, by formula; the compiled '
      'cost analysis counts a scanned layer once)',
      f'time             step at least {self.step_seconds_floor:.3g} s at chip peak; the run takes '
      f'{self.chip_hours:,.0f} chip-hours ({self.chip_hours / self.chips:,.1f} h on {self.chips} chips) '
      f'at {100 * self.mfu:.0f}% MFU',
    ]
    r = self.recommendation
    if self.chosen:
      lines.append(
        f'chosen           grad_accum_steps={c.microbatches}, remat_policy={c.remat_policy}: left to the run by '
        'the config, the cheapest setting that fits (what the run chooses at its start on these chips)'
      )
    if not self.fits:
      if r:
        lines.append(
          f'fits with        --config.grad_accum_steps={r.grad_accum_steps} '
          f'--config.model.remat_policy={r.remat_policy} (peak {r.peak_bytes / GIB:.2f} GiB): the '
          'cheapest setting tried that fits'
        )
      else:
        lines.append(
          f'nothing fits     on {self.topology} even with one sequence per chip per microbatch and '
          'full remat: use more chips, tensor parallelism (--config.mesh.tensor) or a bigger chip'
        )
    return '\n'.join(lines)


def _step_memory(step, args) -> StepMemory:
  try:
    memory = step.lower(*args).compile().memory_analysis()
  except Exception as e:  # XLA refuses programs that cannot fit in HBM.
    if 'RESOURCE_EXHAUSTED' not in str(e) and 'memory' not in str(e).lower():
      raise
    needed = re.search(r'temporaries \(([\d.]+)([KMGT])\)', str(e))  # XLA says how much it wanted.
    return StepMemory(
      temporaries_bytes=int(float(needed.group(1)) * 1024 ** ' KMGT'.index(needed.group(2))) if needed else None,
      error=str(e).splitlines()[0][:300],
    )
  peak = (
    memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + memory.temp_size_in_bytes
  )
  return StepMemory(memory.argument_size_in_bytes, memory.temp_size_in_bytes, peak)


def compile_steps(config, devices, microbatches: int, remat_policy: str, eval_memory: StepMemory | None = None):
  """Compiles the train and eval steps for `devices` with these knobs: a `Compiled`.

  Neither knob changes the eval step (no backward pass, whole batches): pass `eval_memory` to reuse it.
  """
  config = config_lib.replace(config, **{'model.remat_policy': remat_policy})
  mesh = sharding.make_mesh(config.mesh, devices)
  divisor = sharding.batch_divisor(mesh)
  # The loop's own step: the optimizer built per schedule, the learning rate of every step an input (RunPlan).
  trainer = train.Trainer(
    config.model,
    mesh,
    functools.partial(train.make_optimizer, config),
    z_loss=config.optimizer.z_loss,
    microbatches=microbatches,
  )
  lr_table = jax.ShapeDtypeStruct((run_plan.make(config).steps + 1,), jnp.float32, sharding=trainer.replicated)
  seq = config.data.seq_len + 1
  batch = jax.ShapeDtypeStruct((config.batch_size, seq), jnp.int32, sharding=trainer.batch_sharding)
  eval_rows = min(config.eval_batch_size or config.batch_size, config.eval_sequences)
  eval_batch = jax.ShapeDtypeStruct(
    (-(-eval_rows // divisor) * divisor, seq), jnp.int32, sharding=trainer.batch_sharding
  )
  train_memory = _step_memory(trainer.train_step, (trainer.abstract_state, batch, lr_table))
  if eval_memory is None:
    eval_memory = _step_memory(trainer.eval_step, (trainer.abstract_state.params, eval_batch))
  return Compiled(microbatches, remat_policy, _shard_bytes(trainer.abstract_state), train_memory, eval_memory)


def left_to_the_run(config) -> bool:
  """Whether the config leaves a memory knob to the run (grad_accum_steps 0, model.remat_policy 'auto')."""
  return config.grad_accum_steps == 0 or config.model.remat_policy == decoder.AUTO_REMAT


def with_knobs(config, microbatches: int | None = None, remat_policy: str | None = None):
  """A copy of config with the memory knobs set; those not given and left to the run take their starting values
  (one microbatch, no remat)."""
  policy = remat_policy or config.model.remat_policy
  return config_lib.replace(
    config,
    **{
      'grad_accum_steps': microbatches or config.grad_accum_steps or 1,
      'model.remat_policy': 'none' if policy == decoder.AUTO_REMAT else policy,
    },
  )


def _choose(config, devices, hbm: int, per_device: int, log) -> tuple[Compiled, list[Compiled]]:
  """The compile of the knobs the config set, with those it left to the run chosen by the search (the cheapest
  that fits; the starting values where nothing fits), and every compile made."""
  start = with_knobs(config)
  tried = [compile_steps(start, devices, start.grad_accum_steps, start.model.remat_policy)]
  log(tried[-1].format(hbm))
  if tried[0].fits(hbm) or not left_to_the_run(config):
    return tried[0], tried
  policies = ['none', 'full'] if config.model.remat_policy == decoder.AUTO_REMAT else [config.model.remat_policy]
  counts = None if config.grad_accum_steps == 0 else [config.grad_accum_steps]
  found = _search(start, devices, per_device, hbm, tried, log, policies=policies, counts=counts)
  if found is None:
    return tried[0], tried
  return next(
    c for c in tried if (c.microbatches, c.remat_policy) == (found.grad_accum_steps, found.remat_policy)
  ), tried


def plan(config, topology_name: str, mfu: float = 0.4, search: bool = True, log=print) -> TopologyPlan:
  """The dry-run summary for a TPU topology: compiled per-chip memory, FLOPs, time and cost; knobs that fit.

  config: a config as read from the command line (an entry point's); validated here, before minutes of compiling.
  """
  topology = parse_topology(topology_name)
  config = validate.check(config, devices=topology.chips, sources=False)
  devices = topology_devices(topology)
  hbm = topology.chip.hbm_bytes
  per_device = dry_run.describe(with_knobs(config), len(devices)).sequences_per_device
  compiled, tried = _choose(config, devices, hbm, per_device, log)
  chosen = left_to_the_run(config)
  recommendation = None
  if not compiled.fits(hbm) and search and not chosen:
    recommendation = _search(config, devices, per_device, hbm, tried, log)
  return TopologyPlan(
    summary=dry_run.describe(with_knobs(config, compiled.microbatches, compiled.remat_policy), len(devices)),
    topology=topology.name,
    libtpu_topology=topology.libtpu_name,
    chips=topology.chips,
    chip_hbm_bytes=hbm,
    chip_peak_flops=topology.chip.peak_bf16_flops,
    compiled=compiled,
    tried=tuple(c for c in tried if c is not compiled),
    recommendation=recommendation,
    mfu=mfu,
    data=dry_run.data_plan(config, topology.hosts),
    chosen=chosen,
  )


def fit_to_devices(config, devices, hbm: int | None = None, log=print):
  """The config with the memory knobs it left to the run chosen for `devices` (the search above, compiled for
  them); on an accelerator, a setting the config made that does not fit stops with one line. On a CPU (no `hbm`
  given) nothing is compiled: one microbatch and no remat where the config left the knobs.

  hbm: bytes per device (default: what the first device reports)."""
  if hbm is None:
    hbm = 0 if devices[0].platform == 'cpu' else int((devices[0].memory_stats() or {}).get('bytes_limit', 0))
  if not hbm:  # A CPU, or a device that does not report its memory: nothing to plan against.
    return with_knobs(config) if left_to_the_run(config) else config
  per_device = dry_run.describe(with_knobs(config), len(devices)).sequences_per_device
  compiled, _ = _choose(config, devices, hbm, per_device, log=lambda line: None)
  kind = f'{len(devices)} {devices[0].device_kind} devices'
  if not compiled.fits(hbm):
    needed = compiled.train.peak_bytes or compiled.train.temporaries_bytes or 0
    left = left_to_the_run(config)
    raise ValueError(
      f'the train step does not fit the {hbm / GIB:.2f} GiB per device of these {kind}'
      + (f' (it needs {needed / GIB:.2f} GiB)' if needed else '')
      + f' with grad_accum_steps={compiled.microbatches}, remat_policy={compiled.remat_policy}'
      + (
        ' or any setting tried; use more devices, --config.mesh.tensor or a smaller --config.batch_size'
        if left
        else '; set --config.grad_accum_steps=0 --config.model.remat_policy=auto to let the run choose what fits'
      )
    )
  log(
    f'memory: grad_accum_steps={compiled.microbatches}, remat_policy={compiled.remat_policy}, train peak '
    f'{_size(compiled.train.peak_bytes)} of {hbm / GIB:.2f} GiB per device on {kind}'
    + (' (chosen: the config left them to the run)' if left_to_the_run(config) else '')
  )
  return with_knobs(config, compiled.microbatches, compiled.remat_policy)


def _search(
  config, devices, per_device: int, hbm: int, tried: list[Compiled], log, policies=None, counts=None
) -> Recommendation | None:
  """The cheapest (remat policy, microbatches) that fits: the configured policy first, then full recomputation;
  for each, the fewest microbatches (powers of two) of the `per_device` sequences a device takes per step.
  Compiles are minutes each at paper scale, so the first guess scales the count by how far the temporaries overshoot
  (they shrink about as 1 / microbatches), then steps. `policies` and `counts` narrow what may change;
  `tried[0]` is the configured setting's compile."""
  counts = counts or [
    m
    for m in (2**i for i in range(int(math.log2(per_device)) + 1))
    if m > config.grad_accum_steps and per_device % m == 0
  ]
  policies = policies or [config.model.remat_policy] + ([] if config.model.remat_policy == 'full' else ['full'])
  results: dict[tuple[str, int], Compiled] = {}
  if tried[0].microbatches in counts:
    results[tried[0].remat_policy, counts.index(tried[0].microbatches)] = tried[0]

  def compile_at(policy, index):
    if (policy, index) not in results:
      results[policy, index] = compile_steps(config, devices, counts[index], policy, tried[0].eval)
      tried.append(results[policy, index])
      log(results[policy, index].format(hbm))
    return results[policy, index].fits(hbm)

  first = tried[0].train
  for policy in policies:
    if not counts:
      break
    index = len(counts) - 1  # Another policy: the most microbatches first; if they do not fit, none do.
    if policy == config.model.remat_policy and first.temporaries_bytes is not None:
      fixed = first.peak_bytes if first.peak_bytes is not None else tried[0].state_bytes + first.temporaries_bytes
      room = hbm - (fixed - first.temporaries_bytes)  # What the temporaries may take.
      needed = first.temporaries_bytes / max(room, 1) * config.grad_accum_steps
      index = next((i for i, m in enumerate(counts) if m >= needed), len(counts) - 1)
    if compile_at(policy, index):
      while index > 0 and compile_at(policy, index - 1):
        index -= 1
    elif policy == config.model.remat_policy:
      while index < len(counts) - 1 and not compile_at(policy, index + 1):
        index += 1
      index += 1
    if index < len(counts) and results[policy, index].fits(hbm):
      best = results[policy, index]
      return Recommendation(policy, best.microbatches, best.train.peak_bytes)
  return None


def _size(n: int) -> str:
  return f'{n / GIB:.2f} GiB' if n >= GIB / 10 else f'{n / 2**20:.1f} MiB'
