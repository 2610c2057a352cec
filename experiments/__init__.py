"""One runnable module per study of the paper; run from the repository root: python -m experiments.<study>."""
