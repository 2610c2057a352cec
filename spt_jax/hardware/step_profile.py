"""Where a compiled step's time goes: a profiler trace of a few steps, each XLA operation's own time (its span less
the spans of the operations inside it), grouped by what the operation computes, with the matrix multiplications'
FLOP/s beside the device's measured peak.

The operations are the events the runtime names after HLO instructions (an event's `hlo_op`, else its name: the
CPU runtime's thunks; tested there only); each is looked up in the compiled program's HLO text, which says whether
it is (or fuses) a dot, only moves data, reduces, or computes element by element. `python -m spt_jax.bench
--profile=DIR` prints the table for a preset's train step.
"""

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
from collections.abc import Callable

KINDS = ('matmul', 'data movement', 'reduction', 'elementwise', 'custom call', 'control')

# Opcodes that only move or reshape data (a fusion of nothing else is data movement).
_MOVES = {
  'copy',
  'transpose',
  'bitcast',
  'reshape',
  'broadcast',
  'slice',
  'dynamic-slice',
  'dynamic-update-slice',
  'concatenate',
  'pad',
  'parameter',
  'constant',
  'tuple',
  'get-tuple-element',
  'iota',
  'copy-start',
  'copy-done',
  'reverse',
  'gather',
  'scatter',
}
_CONTROL = {'while', 'conditional', 'call'}
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) \(.*\{$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$')
_SHAPE = re.compile(r'[a-z]\w*\[([\d,]*)\]')


@dataclasses.dataclass(frozen=True)
class Op:
  opcode: str
  calls: tuple[str, ...]  # Computations it runs (a fusion's body, a while's condition and body).
  dot_flops: float  # 2·M·N·K of a dot (operands' shapes as printed); 0 otherwise.


def parse_hlo(text: str) -> tuple[dict[str, Op], dict[str, list[Op]]]:
  """The instructions the runtime runs by name (those outside fusion bodies; names inside those repeat, such as
  param_0), and each computation's instructions, from a compiled module's HLO text."""
  computations, named, current, shapes = {}, [], None, {}
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(' '):  # Computations start at the margin, their instructions indented.
      current, shapes = computations.setdefault(header.group(1), []), {}
      continue
    match = _INSTRUCTION.match(line)
    if not match or current is None:
      continue
    name, result, opcode, rest = match.groups()
    shapes[name] = result
    calls = tuple(re.findall(r'(?:calls|body|condition|to_apply|branch_computations)=\{?%?([\w.\-]+)', rest))
    lhs = re.match(r'\s*(?:([a-z]\w*\[[\d,]*\])\S*\s+)?%?([\w.\-]+)', rest)  # Its shape, if printed, and name.
    lhs_shape = (lhs.group(1) or shapes.get(lhs.group(2), '')) if lhs else ''
    op = Op(opcode, calls, _dot_flops(result, lhs_shape, rest) if opcode in ('dot', 'convolution') else 0.0)
    current.append(op)
    named.append((name, op))
  fused = {c for _, op in named if op.opcode == 'fusion' for c in op.calls}
  fused_ops = {id(op) for c in fused for op in computations.get(c, [])}
  ops = {}
  for name, op in named:
    if id(op) not in fused_ops:
      ops.setdefault(name, op)
  return ops, computations


def _dims(shape: str) -> list[int]:
  return [int(d) for d in shape.split(',') if d]


def _dot_flops(result: str, lhs_shape: str, rest: str) -> float:
  """2 × the result's elements × the contracted size (the lhs's contracting dimensions)."""
  out = _SHAPE.search(result)
  lhs = _SHAPE.search(lhs_shape)
  contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', rest)
  if not (out and lhs and contracting):
    return 0.0
  elements = 1
  for d in _dims(out.group(1)):
    elements *= d
  lhs_dims, k = _dims(lhs.group(1)), 1
  for axis in _dims(contracting.group(1)):
    k *= lhs_dims[axis]
  return 2.0 * elements * k


def fused(op: Op, computations) -> list[Op]:
  """The instructions a fusion runs inside itself, fusions within it opened too; [op] for any other."""
  if op.opcode != 'fusion':
    return [op]
  return [leaf for c in op.calls for inner in computations.get(c, []) for leaf in fused(inner, computations)]


def kind_of(op: Op, computations) -> str:
  if op.opcode in _CONTROL:
    return 'control'
  opcodes = {leaf.opcode for leaf in fused(op, computations)}
  if opcodes & {'dot', 'convolution'}:
    return 'matmul'
  if 'custom-call' in opcodes:
    return 'custom call'
  if opcodes <= _MOVES:
    return 'data movement'
  if opcodes & {'reduce', 'reduce-window', 'sort', 'all-reduce', 'reduce-scatter'}:
    return 'reduction'
  return 'elementwise'


def self_times(events: list[dict]) -> dict[str, tuple[float, int]]:
  """Per HLO instruction (an event's `hlo_op`, else its name) of complete events: microseconds less those of the
  events nested inside them on their thread, and how many there were (an operation in a loop runs once per
  iteration)."""
  by_thread = collections.defaultdict(list)
  for event in events:
    if event.get('ph') == 'X' and 'dur' in event:
      by_thread[(event.get('pid'), event.get('tid'))].append(event)
  totals, counts = collections.Counter(), collections.Counter()
  for thread in by_thread.values():
    thread.sort(key=lambda e: (e['ts'], -e['dur']))
    stack = []  # [event, end, time of its children]
    for event in thread:
      end = event['ts'] + event['dur']
      while stack and stack[-1][1] <= event['ts']:
        done = stack.pop()
        totals[_op_name(done[0])] += done[0]['dur'] - done[2]
        counts[_op_name(done[0])] += 1
      if stack:
        stack[-1][2] += event['dur']
      stack.append([event, end, 0.0])
    for done in stack:
      totals[_op_name(done[0])] += done[0]['dur'] - done[2]
      counts[_op_name(done[0])] += 1
  return {name: (totals[name], counts[name]) for name in totals}


def _op_name(event: dict) -> str:
  return event.get('args', {}).get('hlo_op') or event['name']


def trace(run: Callable[[], object], folder: str) -> list[dict]:
  """The complete events of a profiler trace of run() (JAX's Perfetto trace, written under folder)."""
  import jax  # noqa: PLC0415  jax on first use: importing this module stays light

  jax.profiler.start_trace(folder, create_perfetto_trace=True)
  try:
    run()
  finally:
    jax.profiler.stop_trace()
  newest = max(glob.glob(os.path.join(folder, '**', '*.trace.json.gz'), recursive=True), key=os.path.getmtime)
  with gzip.open(newest, 'rt') as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def breakdown(events: list[dict], hlo_text: str, steps: int) -> dict:
  """Per step: seconds of the program's operations by kind, the top operations, and the dots' FLOP/s."""
  ops, computations = parse_hlo(hlo_text)
  times = {name: timed for name, timed in self_times(events).items() if name in ops}
  kinds = {name: kind_of(ops[name], computations) for name in times}
  by_kind = collections.Counter()
  matmul_flops = 0.0
  for name, (us, count) in times.items():
    by_kind[kinds[name]] += us / 1e6 / steps
    matmul_flops += sum(leaf.dot_flops for leaf in fused(ops[name], computations)) * count / steps
  matmul_seconds = by_kind['matmul']
  top = sorted(times.items(), key=lambda item: -item[1][0])[:12]
  return dict(
    op_seconds_per_step=sum(by_kind.values()),
    seconds_per_step_by_kind={kind: by_kind[kind] for kind in KINDS if by_kind[kind]},
    matmul_flops_per_step=matmul_flops,
    matmul_flops_per_second=matmul_flops / matmul_seconds if matmul_seconds else 0.0,
    top_ops=[dict(name=name, kind=kinds[name], seconds_per_step=us / 1e6 / steps) for name, (us, _) in top],
  )
