"""One runnable module per study of the paper; run from the repository root: python -m experiments.<study>."""

import spt_jax  # noqa: F401  Before any study imports jax: see spt_jax/hardware/host_memory.py.
