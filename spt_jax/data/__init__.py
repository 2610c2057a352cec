"""Data: built-in corpora, sources, tokenizer, preparation and mixtures."""
