"""Evaluation: held-out losses and bits per byte, multiple-choice tasks of each domain."""
