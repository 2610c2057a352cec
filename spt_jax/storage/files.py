"""How a run writes its files: atomically, as strict JSON, and with one live run per workdir.

Every file a run or the pipeline writes whole (summary.json, report.md, config.json, tokenizer.json, a rewritten
metrics.jsonl) goes through `write_text`: a unique temporary name beside the target, fsync, rename, so a crash
or a kill leaves the old file or the new one, never half of one. JSON goes through `dumps`, which writes NaN
and ±Infinity as null: strict readers (jq, JavaScript, most JSON libraries) reject the bare tokens.
"""

import errno
import fcntl
import json
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time

LOCK_FILE = '.lock'


def finite(value):
  """value with every non-finite float (NaN, ±inf, also numpy scalars) replaced by None, recursively."""
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
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  descriptor, temporary = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.tmp-', dir=folder)
  try:
    with os.fdopen(descriptor, 'w', encoding='utf-8') as f:
      f.write(text)
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
  """An exclusive lock on W/.lock for one live run per workdir; the kernel drops it when the process dies.

  fcntl.flock, not a pid file: a run killed with SIGKILL (or a machine that rebooted) holds nothing, so the next
  run starts without anyone deleting a stale file. The file says who holds it, for the refusal message.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir, self.enabled = os.path.abspath(workdir), enabled
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._file = None

  def __enter__(self):
    if not self.enabled:  # Other hosts of a multi-host run: process 0 holds the lock for all of them.
      return self
    os.makedirs(self.workdir, exist_ok=True)
    handle = open(self.path, 'a+', encoding='utf-8')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        handle.close()  # A filesystem without locks (some network mounts): run unlocked rather than not at all.
        return self
      handle.seek(0)
      holder = handle.read().strip() or 'another process'
      handle.close()
      raise ValueError(f'{self.workdir} is in use by a live run ({holder}); wait for it to finish or stop it, '
                       'or use another --workdir') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()} on host {socket.gethostname()}, since '
                 f'{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}\n')
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.close()  # Closing the descriptor releases the lock; the file stays (harmless, reused).
      self._file = None


def exit_quietly_on_sigterm() -> None:
  """SIGTERM outside the training loop (preparing data, compiling, between stages) exits 0 with one line.

  The loop installs its own handler while it trains (finish the step, checkpoint, exit 0); outside it there is
  no step to save, and every file is written atomically, so stopping at once loses nothing.
  """
  def handle(signum, frame):
    del signum, frame
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stderr.write('SIGTERM outside a training step: nothing new to save (files already written are whole, '
                     'checkpoints kept); rerun the same command to continue\n')
    sys.stderr.flush()
    raise SystemExit(0)
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, handle)
