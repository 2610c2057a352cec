"""Host memory for JAX's CPU backend: reuse freed buffers instead of faulting in fresh pages every step.

XLA's CPU runtime allocates each execution's temporaries as one block (about 1 GB for the cpu-6m train step at
batch 16 × 256) with posix_memalign, from the calling thread's glibc arena. A block that large is mapped with
mmap and unmapped when freed, so every step faults in and zeroes the whole block again (about 250,000 page
faults a step, a quarter of a core in the kernel). With one arena that grows by brk, never maps large blocks
and never trims, a freed block is reused as it is. The process keeps its peak memory instead.

`reuse_freed_memory()` sets that (glibc's mallopt) when it can work: on glibc, for a CPU-only JAX, and before
`jax` is imported (threads that already hold another arena would keep mapping). Importing `spt_jax` or
`experiments` calls it; SPT_JAX_KEEP_HOST_MEMORY=0 turns it off.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>.
_ACCELERATOR_PLUGINS = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin')


def _cpu_only() -> bool:
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def reuse_freed_memory() -> bool:
  """Whether glibc now serves every thread from one arena that keeps freed memory (see the module docstring)."""
  if (
    os.environ.get('SPT_JAX_KEEP_HOST_MEMORY', '1') == '0'
    or 'jax' in sys.modules
    or not sys.platform.startswith('linux')
    or not _cpu_only()
  ):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # Not glibc (musl has no mallopt).
    return False
  return all(
    mallopt(option, value) == 1
    for option, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
  )
