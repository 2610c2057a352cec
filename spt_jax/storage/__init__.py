"""How runs and preparations write files: atomically, as strict JSON, one live run per workdir."""
