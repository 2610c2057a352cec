"""Conversion to and from other frameworks' checkpoints (Hugging Face OLMo)."""
