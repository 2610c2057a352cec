"""Crash check: a pipeline killed with SIGKILL at many moments ends exactly as an uninterrupted one.

  python -m spt_jax.crash_check --config=configs/proofpile.py:test --workdir=/tmp/crash [--kills=20 --seed=0]

Takes main's flags (--config and its overrides, --workdir), each written --flag=value. Runs the pipeline once
without interruption into W/reference, then into W/killed, killing it with SIGKILL and starting it again until it
finishes: the kills come in turn at the start of a stage (pretraining, then the finetunes), at an evaluation, during
a checkpoint save and at a random time, and the last one while the report is written. Then
every stage's metrics.jsonl (without the wall-clock figures) and every summary.json (without times and paths) must
equal the reference's, bit for bit. Prints one line per kill (when, and what the run was doing) and the verdict;
exits 0 when equal, 1 when not.

The runs are `python -m spt_jax.crash_check --markers=FILE ...`: the pipeline of spt_jax.main, with a line
appended to FILE as each evaluation, save, stage and report starts (the moments to kill at).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

from absl import flags

from spt_jax import main as main_lib
from spt_jax.storage import files, layout
from spt_jax.train import pipeline

_KILLS = flags.DEFINE_integer('kills', 20, 'SIGKILLs to send before letting the pipeline finish.', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the kill times and of the moments picked.', lower_bound=0)
_TIMEOUT = flags.DEFINE_integer('timeout', 1800, 'Seconds any one run may take.', lower_bound=1)
_MARKERS = flags.DEFINE_string('markers', '', 'Internal: run the pipeline, marking its moments in this file.')

flags.register_validator(
  'workdir', lambda workdir: bool(workdir), '--workdir is required: the check runs W/reference and W/killed in it'
)

# What a kill waits for, in turn (the report comes last): a marker prefix, or '' for a random time.
_MOMENTS = ('BEGIN', 'EVAL', 'SAVE', '')
# Values that measure the machine or name the folder, not the run.
_UNCOMPARED = ('perf/', 'steps_per_sec', 'uptime', 'wall_time_s', 'train_tokens_per_second', 'eval_seconds', 'timing')


def _mark_moments(path: str) -> None:
  """Appends a line to `path` as each evaluation, checkpoint save, stage and report starts."""
  from spt_jax.train import checkpoint, loop, pipeline  # noqa: PLC0415  only in the marked run

  def mark(text: str) -> None:
    with open(path, 'a') as f:
      f.write(f'{time.time():.3f} {text}\n')

  def wrap(owner, name, describe):
    original = getattr(owner, name)

    def marked(*args, **kwargs):
      mark(describe(*args))
      return original(*args, **kwargs)

    setattr(owner, name, marked)

  wrap(loop._Loop, 'evaluate', lambda self, step, *_: f'EVAL {step} {self.workdir}')  # noqa: SLF001
  wrap(checkpoint.Checkpoints, 'save', lambda self, step, *_: f'SAVE {step} {self.directory}')
  wrap(loop._Loop, 'begin', lambda self, *_: f'BEGIN {self.c.stage} {self.workdir}')  # noqa: SLF001
  wrap(pipeline, 'report', lambda *_: 'REPORT')


def _start(workdir: str, markers: str) -> subprocess.Popen:
  own = ('--workdir=', '--kills=', '--seed=', '--timeout=')  # The check's flags (given with '=', as documented).
  arguments = [a for a in sys.argv[1:] if not a.startswith(own)]
  return subprocess.Popen(
    [sys.executable, '-m', 'spt_jax.crash_check', f'--markers={markers}', f'--workdir={workdir}', *arguments],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _lines(path: str) -> list[str]:
  try:
    with open(path) as f:
      return f.read().splitlines()
  except FileNotFoundError:
    return []


def _finish(process: subprocess.Popen, what: str) -> None:
  _, stderr = process.communicate(timeout=_TIMEOUT.value)
  if process.returncode != 0:
    raise RuntimeError(f'the {what} run exited {process.returncode}: {stderr.strip().splitlines()[-1:]}')


def _normalised(value, root: str):
  """A record without the wall-clock values and with the workdir's path replaced by W."""
  if isinstance(value, dict):
    return {k: _normalised(v, root) for k, v in value.items() if not k.startswith(_UNCOMPARED)}
  if isinstance(value, list):
    return [_normalised(v, root) for v in value]
  if isinstance(value, str):
    return value.replace(root, 'W')
  return value


def _records(root: str) -> dict:
  """Every metrics.jsonl and summary.json under root, by relative path, normalised."""
  records = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      if name == layout.METRICS:
        records[os.path.relpath(path, root)] = [_normalised(json.loads(line), root) for line in _lines(path)]
      elif name == layout.SUMMARY:
        with open(path) as f:
          records[os.path.relpath(path, root)] = _normalised(json.load(f), root)
  return records


def _kill_when(process, markers: str, moment: str, seen: set, startup_seconds: float, anew: bool) -> str | None:
  """Waits for the moment and kills; says what the run was doing (None: it finished first).

  moment: '' for a random time; else a marker to wait for (then up to 0.2 s more), one no earlier run reached (an
  evaluation or save of an unseen step and folder, a stage not begun before), so that every kill comes later in the
  pipeline than the last one of its kind and the pipeline gets on; with anew, also one seen before.
  """
  started, rng = time.time(), random.Random(len(seen))
  # A random time: in half the runs while it starts (imports, data, compiling), else within a second of its first
  # evaluation (the pipeline is further on every time, so that is anywhere in it).
  during_start = not moment and random.random() < 0.5
  deadline = started + (random.uniform(0, startup_seconds) if during_start else _TIMEOUT.value)
  after_first = None if moment or during_start else random.uniform(0, 1.0)
  awaited = 'a random time'
  while process.poll() is None and time.time() < deadline:
    lines = [line.split(' ', 1)[1] for line in _lines(markers)]
    if after_first is not None and lines:
      deadline = min(deadline, time.time() + after_first)
      after_first = None
    hits = [line for line in lines if moment and line.split(' ', 1)[0] == moment and (line not in seen or anew)]
    if hits:
      awaited = hits[0]
      time.sleep(rng.uniform(0, 0.2))
      break
    time.sleep(0.01)
  if process.poll() is not None:
    _finish(process, 'killed')
    return None
  process.send_signal(signal.SIGKILL)
  process.wait()
  lines = [line.split(' ', 1)[1] for line in _lines(markers)]
  seen.update(lines)
  doing = lines[-1] if lines else 'starting (imports, data, compiling)'
  return f'{time.time() - started:5.1f} s into its run, at {awaited}; last began {doing}'


def check(workdir: str, kills: int, seed: int) -> bool:
  """Runs the reference and the killed pipeline under workdir; prints the kills and the verdict."""
  random.seed(seed)
  reference, killed = os.path.join(workdir, 'reference'), os.path.join(workdir, 'killed')
  os.makedirs(workdir, exist_ok=True)
  timing, reference_markers = os.path.join(workdir, 'reference.json'), os.path.join(workdir, 'reference.markers')
  if not os.path.exists(os.path.join(reference, layout.SUMMARY)):
    started = time.time()
    _finish(_start(reference, reference_markers), 'reference')
    first_marker = float(_lines(reference_markers)[0].split()[0])
    files.write_json(timing, {'seconds': time.time() - started, 'startup_seconds': first_marker - started})
  with open(timing) as f:
    reference_timing = json.load(f)
  print(
    f'reference: {reference_timing["seconds"]:.1f} s, {reference_timing["startup_seconds"]:.1f} s to start', flush=True
  )
  sent, seen = 0, set()
  stages = pipeline.stage_folders(main_lib._CONFIG.value, killed)  # noqa: SLF001
  for attempt in range(kills):
    moment = 'REPORT' if attempt == kills - 1 else _MOMENTS[attempt % len(_MOMENTS)]
    markers = os.path.join(workdir, f'killed.{attempt}.markers')
    begun = {line.split()[-1] for line in seen if line.startswith('BEGIN')}
    anew = moment == 'REPORT' or (moment == 'BEGIN' and begun >= set(stages))  # Every stage has begun before.
    what = _kill_when(_start(killed, markers), markers, moment, seen, reference_timing['startup_seconds'], anew)
    if what is None:
      print(f'run {attempt + 1} finished before its kill (waiting for {moment or "a random time"})', flush=True)
      break
    sent += 1
    print(f'kill {sent}: {what}', flush=True)
  else:
    _finish(_start(killed, os.path.join(workdir, 'killed.last.markers')), 'last')
  expected, got = _records(reference), _records(killed)
  differing = sorted(path for path in expected.keys() | got.keys() if expected.get(path) != got.get(path))
  print(f'{sent} kills; {len(expected)} metrics and summary files compared: ', end='')
  print('all equal, bit for bit' if not differing else f'{len(differing)} differ: {", ".join(differing)}')
  return not differing


def main(argv):
  del argv
  if _MARKERS.value:
    _mark_moments(_MARKERS.value)
    return main_lib.main([])
  if not check(main_lib._WORKDIR.value, _KILLS.value, _SEED.value):  # noqa: SLF001
    sys.exit(1)


if __name__ == '__main__':
  from spt_jax import cli  # noqa: PLC0415  as spt_jax.main does

  cli.run(main)
