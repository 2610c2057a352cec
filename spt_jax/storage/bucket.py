"""A workdir in a bucket (`--workdir=gs://BUCKET/run`, or any fsspec URL): a local mirror, checkpoints in the bucket.

An object store has no append, no rename and no locks, while a run appends to its metrics and log, renames each
file into place and locks its folder. So a run given a URL works in a local folder, its mirror
(<cache>/workdirs/<scheme>/<bucket>/<path>), and copies what changed there to the URL at every checkpoint and when
it ends (process 0; every other process copies only its own log), while orbax writes the checkpoints to the URL
itself (<URL>/checkpoints/<step>/, every host its own shards). A run that starts copies the URL's files into its
mirror, unless the mirror holds the last copy this machine made (the token in `.mirrored`, in both places), so a
run resumes on any machine: a fresh VM, another pod, after the VM was deleted.

In a bucket a checkpoint is not given a manifest nor set aside when damaged: a store writes each object whole or
not at all (hashing it back would mean downloading every checkpoint) and orbax marks a step committed only once
every host's shards are written, listing no other. The mirror's lock guards this machine only: two machines given
the same URL are not stopped.

`gs://` needs `gcsfs`. Orbax's own files go through the same `gcsfs` (orbax_through_fsspec), as tested; its arrays
through TensorStore's own client.
"""

import logging
import os
import uuid

from spt_jax.storage import files, layout

_MIRRORS = []  # Every Mirror this process opened.


def is_url(path) -> bool:
  """Whether path names a file in a store (gs://, https://, ...); file:// and plain paths are local."""
  return '://' in str(path) and not str(path).startswith('file://')


def filesystem(url: str):
  """(fsspec filesystem, path in it) of a URL; one line when the package its scheme needs is not installed."""
  import fsspec  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  try:
    return fsspec.core.url_to_fs(url)
  except ImportError as error:
    raise ValueError(f'reading {url} needs a package that is not installed ({error}); pip install it') from None
  except ValueError as error:  # fsspec: 'Protocol not known: ...'
    raise ValueError(f'{url}: {error}; a store URL starts gs://, s3://, https://, ...') from None


def orbax_through_fsspec() -> None:
  """Orbax's own files in a store go through fsspec (gcsfs), the mirror's client and the tested one, unless
  EPATH_USE_TF says otherwise (etils' default with TensorFlow installed is TensorFlow's own client)."""
  os.environ.setdefault('EPATH_USE_TF', 'false')


def check(url: str, what: str = 'workdir') -> None:
  """One line unless the store at url can be listed and written (a probe object, removed again)."""
  fs, path = filesystem(url)
  probe = f'{path.rstrip("/")}/.probe-{uuid.uuid4().hex}'
  try:
    fs.pipe_file(probe, b'')
    fs.rm_file(probe)
  except Exception as error:
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ''
    raise ValueError(
      f'the {what} {url} cannot be written ({type(error).__name__}: {first}); check the bucket name and the '
      "credentials (gcloud auth application-default login, or the VM's service account scopes)"
    ) from None


def mirror_folder(url: str, cache_root, process_index: int = 0, process_count: int = 1) -> str:
  """The local mirror of a URL: <cache_root>/workdirs/<scheme>/<rest of the URL>; with several processes, one
  mirror each (workdirs/process-<i>-of-<n>/...), as several may share a machine and its cache."""
  scheme, _, rest = url.partition('://')
  parts = [part for part in rest.split('/') if part not in ('', '.', '..')]
  own = [f'process-{process_index}-of-{process_count}'] if process_count > 1 else []
  return os.path.join(os.fspath(cache_root), 'workdirs', *own, scheme, *parts)


class Mirror:
  """A local folder that stands for a URL: pulled at the start of a run, pushed at its checkpoints and end."""

  def __init__(self, url: str, local: str):
    self.url, self.local = url.rstrip('/'), os.path.abspath(local)
    self._fs, root = filesystem(self.url)
    self._root = root.rstrip('/')  # The URL as the store's own path (bucket/run).
    self._pushed = {}  # Relative path -> (size, mtime) of each file as the URL last received it.
    _MIRRORS.append(self)

  def url_of(self, relative: str) -> str:
    """The URL of a path relative to the mirror."""
    return f'{self.url}/{relative.replace(os.sep, "/")}'

  def _inner(self, relative: str) -> str:
    return f'{self._root}/{relative.replace(os.sep, "/")}'

  def _remote_files(self) -> list[str]:
    """Relative paths of the URL's files, checkpoints left out."""
    root = self._root
    found = self._fs.find(root) if self._fs.exists(root) else []
    relative = [path[len(root) + 1 :] for path in found if path.startswith(root + '/')]
    return [path for path in relative if layout.CHECKPOINTS not in path.split('/')[:-1]]

  def _local_files(self) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime) of the mirror's files that the URL keeps (not the lock, token, temporaries)."""
    found = {}
    for root, folders, names in os.walk(self.local):
      folders[:] = [name for name in folders if name != layout.CHECKPOINTS]
      for name in names:
        if name in (layout.LOCK, layout.MIRRORED) or (name.startswith('.') and '.tmp-' in name):
          continue
        path = os.path.join(root, name)
        stat = os.stat(path)
        found[os.path.relpath(path, self.local)] = (stat.st_size, stat.st_mtime_ns)
    return found

  def _token(self, remote: bool) -> str:
    try:
      if remote:
        return self._fs.cat_file(self._inner(layout.MIRRORED)).decode().strip()
      with open(os.path.join(self.local, layout.MIRRORED), encoding='utf-8') as f:
        return f.read().strip()
    except OSError:  # No copy made yet.
      return ''

  def pull(self) -> int:
    """Makes the mirror the URL's copy (unless it holds the last copy this machine made); returns files copied."""
    os.makedirs(self.local, exist_ok=True)
    token = self._token(remote=True)
    if token and token == self._token(remote=False):
      return 0  # This machine pushed last: its mirror is as new as the URL, or newer (a run cut off since).
    remote = [relative for relative in self._remote_files() if relative != layout.MIRRORED]
    for relative in set(self._local_files()) - set(remote):  # A stale mirror: what the URL no longer has goes.
      os.remove(os.path.join(self.local, relative))
    for relative in remote:
      files.write_bytes(os.path.join(self.local, relative), self._fs.cat_file(self._inner(relative)))
    files.write_text(os.path.join(self.local, layout.MIRRORED), token + '\n')
    self._pushed = self._local_files()
    return len(remote)

  def push(self, only: str | None = None) -> int:
    """Copies the mirror's new and changed files to the URL, removes there what the mirror lost; returns files
    copied. only: copy that one relative path and leave the token (what every process but 0 pushes, its log)."""
    current = self._local_files()
    if only is not None:
      current = {only: current[only]} if only in current else {}
    changed = sorted(relative for relative, stat in current.items() if self._pushed.get(relative) != stat)
    gone = [] if only is not None else sorted(set(self._pushed) - set(current))
    if not changed and not gone:
      return 0
    for relative in changed:
      self._fs.put_file(os.path.join(self.local, relative), self._inner(relative))
    for relative in gone:
      self._fs.rm_file(self._inner(relative))
    self._pushed.update({relative: current[relative] for relative in changed})
    for relative in gone:
      self._pushed.pop(relative)
    if only is None:  # After the files: a cut-off push leaves the old token, so another machine pulls again.
      token = uuid.uuid4().hex
      self._fs.pipe_file(self._inner(layout.MIRRORED), (token + '\n').encode())
      files.write_text(os.path.join(self.local, layout.MIRRORED), token + '\n')
    return len(changed)

  def close(self) -> None:
    if self in _MIRRORS:
      _MIRRORS.remove(self)


def push_all(process_index: int = 0, process_count: int = 1, final: bool = False) -> None:
  """Pushes every open mirror: process 0 all of it, any other process only its own log. During a run a push that
  fails (the store unreachable for longer than its client retries) is a warning, and the next one copies what this
  one missed: the run goes on, as its checkpoints do not depend on it; the last push (final) raises."""
  for mirror in _MIRRORS:
    try:
      mirror.push(None if process_index == 0 else layout.log_name(process_index, process_count))
    except Exception as error:
      if final:
        raise
      logging.warning('Could not copy %s to %s (%s); the next checkpoint tries again.', mirror.local, mirror.url, error)


def located(path: str) -> str:
  """Where a path of a mirror lives in its store (its URL), else path itself: checkpoints are written there."""
  if is_url(path):
    return path
  path = os.path.abspath(path)
  for mirror in _MIRRORS:
    if path == mirror.local or path.startswith(mirror.local + os.sep):
      relative = os.path.relpath(path, mirror.local)
      return mirror.url if relative == '.' else mirror.url_of(relative)
  return path


# What the checkpoint code asks of a folder that may be local or in a store (os.path.join and split serve both).


def exists(path: str) -> bool:
  if not is_url(path):
    return os.path.exists(path)
  fs, inner = filesystem(path)
  return fs.exists(inner)


def isdir(path: str) -> bool:
  if not is_url(path):
    return os.path.isdir(path)
  fs, inner = filesystem(path)
  return fs.isdir(inner)


def listdir(path: str) -> list[str]:
  """Names of the entries of a folder (empty when it does not exist)."""
  if not is_url(path):
    return os.listdir(path) if os.path.isdir(path) else []
  fs, inner = filesystem(path)
  try:
    return [entry.rstrip('/').rsplit('/', 1)[-1] for entry in fs.ls(inner, detail=False)]
  except FileNotFoundError:
    return []


def read_text(path: str) -> str:
  if not is_url(path):
    with open(path, encoding='utf-8') as f:
      return f.read()
  fs, inner = filesystem(path)
  return fs.cat_file(inner).decode('utf-8')


def copy_folder(source: str, target: str) -> None:
  """Copies a folder within a store, object by object."""
  fs, inner = filesystem(source)
  fs.copy(inner.rstrip('/') + '/', filesystem(target)[1], recursive=True)
