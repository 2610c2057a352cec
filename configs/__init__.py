"""Config files, one per domain (big_vision style); common.py holds what the domains share."""
