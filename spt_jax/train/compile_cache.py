"""JAX's persistent compilation cache: a rerun, a resumed run or the next study loads its programs, not compiles them.

Within one process JAX compiles a program once per shape; this keeps the compiled programs on disk between
processes, keyed by JAX on the program, the JAX and XLA versions, the backend and the compiler flags, so a stale
entry is never used. Every program is kept, however quick to compile: on a CPU a small model's many small
programs add up.
"""

import os

import jax

from spt_jax.data import fetch

_enabled_in = None


def folder(setting: str, cache_dir: str = '') -> str:
  """The folder a `compilation_cache` setting names: 'auto' is <data cache>/jax_compilation, '' is none."""
  if setting == 'auto':
    return os.path.join(fetch.cache_root(cache_dir), 'jax_compilation')
  return os.path.expanduser(setting)


def enable(setting: str, cache_dir: str = '') -> str:
  """Turns the cache on in folder(setting, cache_dir) before the first compile; returns the folder ('' when off).

  JAX reads the setting at its first compile, so a process keeps the folder it started with: a second call
  with another folder is an error rather than a silent no-op.
  """
  global _enabled_in
  path = folder(setting, cache_dir) if setting else ''
  if _enabled_in is not None:
    if path != _enabled_in:
      raise ValueError(
        f'the compilation cache is already {_enabled_in or "off"} in this process; '
        f'one process keeps one setting (got compilation_cache={setting!r})'
      )
    return path
  if path:
    os.makedirs(path, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  _enabled_in = path
  return path
