"""How a run writes its files: atomically, as strict JSON, and with one live run per workdir.

Every file a run or the pipeline writes whole (summary.json, report.md, config.json, tokenizer.json, a rewritten
metrics.jsonl) goes through `write_text`: a unique temporary name beside the target, fsync, rename, so a crash
or a kill leaves the old file or the new one, never half of one. JSON goes through `dumps`, which writes NaN
and ±Infinity as null: strict readers (jq, JavaScript, most JSON libraries) reject the bare tokens.
"""

import dataclasses
import errno
import fcntl
import json
import logging
import logging.handlers
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings

from spt_jax.storage import layout

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_CODE = (_PACKAGE + os.sep, os.path.join(os.path.dirname(_PACKAGE), 'experiments') + os.sep)


def finite(value):
  """value with every non-finite float (NaN, ±inf, also numpy scalars) replaced by None, recursively."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):  # A typed record (storage/records.py).
    value = dataclasses.asdict(value)
  if isinstance(value, dict):
    return {key: finite(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite(item) for item in value]
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if hasattr(value, 'tolist') and hasattr(value, 'dtype'):  # numpy / JAX scalars and arrays.
    return finite(value.tolist())
  return value


def dumps(value, **kwargs) -> str:
  """Strict JSON of value: non-finite floats become null (allow_nan=False proves none is left)."""
  return json.dumps(finite(value), allow_nan=False, **kwargs)


def write_text(path: str, text: str) -> None:
  """Writes text to path atomically: unique temporary file in the same folder, fsync, rename, fsync folder."""
  write_bytes(path, text.encode('utf-8'))


def write_bytes(path: str, data: bytes) -> None:
  """Writes data to path atomically, as write_text."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  descriptor, temporary = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.tmp-', dir=folder)
  try:
    with os.fdopen(descriptor, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
  except BaseException:
    try:
      os.unlink(temporary)
    except OSError:
      pass
    raise
  _fsync_folder(folder)


def read_jsonl(path: str) -> list:
  """The records of a JSON-lines file (metrics.jsonl); a line that is not JSON (a run cut off while writing it)
  is skipped with a warning."""
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          warnings.warn(f'{path}:{number} is not JSON (a run cut off while writing?); skipped', stacklevel=2)
  return records


def write_json(path: str, value, indent: int | None = 2) -> None:
  """Writes value as strict JSON (sorted keys), atomically."""
  write_text(path, dumps(value, indent=indent, sort_keys=True) + '\n')


def _fsync_folder(folder: str) -> None:
  try:
    descriptor = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(descriptor)
  except OSError:  # Some filesystems (gcsfuse) refuse to fsync a folder; the rename is still atomic there.
    pass
  finally:
    os.close(descriptor)


def clean_metrics(path: str, up_to_step: int) -> int:
  """Keeps the metrics lines of one run up to a step: each step once, in increasing order; returns lines dropped.

  A line cut short by a kill, a step after the restored one, and a step not after the previous kept line (two
  runs that wrote into one file, a resumption that logged again) are dropped.
  """
  if not os.path.exists(path):
    return 0
  kept, dropped, last = [], 0, None
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      if not line.strip():
        continue
      try:
        step = json.loads(line)['step']
        good = isinstance(step, int) and step <= up_to_step and (last is None or step > last)
      except (json.JSONDecodeError, KeyError, TypeError):
        good = False
      if good:
        kept.append(line if line.endswith('\n') else line + '\n')
        last = step
      else:
        dropped += 1
  write_text(path, ''.join(kept))
  return dropped


class WorkdirLock:
  """One live run per workdir: an exclusive flock on each folder itself, held until the run exits.

  The lock is on the folder (opened read-only), not on a file in it: deleting a lock file by hand would let a
  second run lock a fresh file beside the first run's, while a folder that holds a run cannot be replaced under
  it. fcntl.flock, not a pid file: a run killed with SIGKILL (or a machine that rebooted) holds nothing, so the
  next run starts without anyone deleting a stale file. A pipeline locks its workdir and every stage folder
  (W/pretrain, W/finetune/<point>), so a run started on one of them is refused, as is a pipeline on W while a
  run holds one of its stages. Folders this process already holds are re-entered (a pipeline runs its stages
  in-process). W/.lock says who holds W, for the refusal message; deleting it weakens nothing.
  """

  def __init__(self, workdirs: str | list[str], enabled: bool = True):
    workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
    self.workdirs, self.enabled = [os.path.abspath(workdir) for workdir in workdirs], enabled
    self.workdir = self.workdirs[0]
    self._entered = []  # Real paths this lock entered, in order.

  def __enter__(self):
    if not self.enabled:  # Other hosts of a multi-host run: process 0 holds the lock for all of them.
      return self
    taken = []
    try:
      for workdir in self.workdirs:
        if self._enter(workdir):
          taken.append(workdir)
    except BaseException:
      self._release()
      raise
    since = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())
    for workdir in taken:  # Only once every folder is held: a refused run writes nothing.
      running = '' if workdir == self.workdir else f', running {self.workdir}'
      write_text(
        os.path.join(workdir, layout.LOCK),
        f'pid {os.getpid()} on host {socket.gethostname()}{running}, since {since}\n',
      )
    return self

  def _enter(self, workdir: str) -> bool:
    """Holds workdir (or re-enters it); whether this call took its lock."""
    os.makedirs(workdir, exist_ok=True)
    key = os.path.realpath(workdir)
    if key in _HELD:
      _HELD[key][1] += 1
      self._entered.append(key)
      return False
    descriptor = os.open(workdir, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      os.close(descriptor)
      if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        descriptor = None  # A filesystem without locks (some network mounts): run unlocked rather than not at all.
      else:
        raise ValueError(
          f'{workdir} is in use by a live run ({_holder(workdir)}); wait for it to finish or stop '
          'it, or use another --workdir'
        ) from None
    _HELD[key] = [descriptor, 1]
    self._entered.append(key)
    return descriptor is not None

  def _release(self) -> None:
    while self._entered:
      key = self._entered.pop()
      _HELD[key][1] -= 1
      if not _HELD[key][1]:
        descriptor = _HELD.pop(key)[0]
        if descriptor is not None:
          os.close(descriptor)  # Closing the descriptor releases the lock (the kernel does it if the process dies).

  def __exit__(self, *exc):
    self._release()


_HELD = {}  # Real path -> [descriptor or None, entries] of the folders this process holds.


def _holder(workdir: str) -> str:
  try:
    with open(os.path.join(workdir, layout.LOCK), encoding='utf-8') as f:
      return f.read().strip() or 'another process'
  except OSError:
    return f'another process; {layout.LOCK} was removed'


class _OwnRecords(logging.Filter):
  """Passes the run's own log records (spt_jax, experiments); drops those of libraries (orbax, JAX, asyncio)."""

  def filter(self, record):
    return os.path.abspath(record.pathname).startswith(_OWN_CODE)


def quiet_library_logs(verbose: bool = False) -> logging.Handler:
  """Keeps library log lines (and Python warnings) off the terminal unless verbose; holds every record for the
  run's log file, which `log_to` opens once the workdir is held. Returns the holding handler."""
  logging.captureWarnings(True)
  root = logging.getLogger()
  if not verbose:
    for handler in root.handlers:
      if not any(isinstance(f, _OwnRecords) for f in handler.filters):
        handler.addFilter(_OwnRecords())
  held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
  root.addHandler(held)
  return held


def log_to(held: logging.Handler, path: str) -> None:
  """Writes the records held so far, and every later one, to path (appended: a resumed run adds to its log)."""
  handler = logging.FileHandler(path, encoding='utf-8')
  handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s'))
  root = logging.getLogger()
  held.setTarget(handler)
  held.flush()
  root.removeHandler(held)
  held.close()
  root.addHandler(handler)


def exit_quietly_on_sigterm() -> None:
  """SIGTERM outside the training loop (preparing data, compiling, between stages) exits 0 with one line.

  The loop installs its own handler while it trains (finish the step, checkpoint, exit 0); outside it there is
  no step to save, and every file is written atomically, so stopping at once loses nothing.
  """

  def handle(signum, frame):
    del signum, frame
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stderr.write(
      'SIGTERM outside a training step: nothing new to save (files already written are whole, '
      'checkpoints kept); rerun the same command to continue\n'
    )
    sys.stderr.flush()
    raise SystemExit(0)

  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, handle)
