"""spt_jax: specialized pretraining in JAX."""

from spt_jax.hardware import host_memory as _host_memory

_host_memory.reuse_freed_memory()  # CPU backend only, before jax is imported: see host_memory.py.
