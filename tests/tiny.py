"""The tiny config and data of the loop tests, shared with the runs they start in subprocesses."""

import dataclasses
import socket
import types

import ml_collections
import numpy as np

from spt_jax.data.data_config import DataConfig
from spt_jax.train import config as config_lib


def tiny_config(**overrides):
  """The cpu-160k model at 16 tokens and 12 steps, with `overrides` by dotted key ('finetune.patience')."""
  c = config_lib.base_config('cpu-160k')
  c.stage = 'pretrain'
  c.data.seq_len, c.batch_size, c.steps, c.tokens = 16, 8, 12, 0
  c.eval_every, c.checkpoint_every, c.log_every, c.eval_sequences, c.eval_batch_size = 4, 4, 1, 16, 8
  c.optimizer.lr, c.schedule.warmup_steps, c.schedule.horizon_tokens = 3e-3, 2, 0
  c.finetune.batch_size, c.finetune.eval_every, c.finetune.patience, c.finetune.max_steps = 8, 2, 2, 12
  c.finetune.grid = ((1e-3, 2),)
  c.finetune.extend_grid = 0  # Tests of the grid's extension set it.
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  for key, value in overrides.items():
    target = c
    *parents, last = key.split('.')
    for parent in parents:
      target = target[parent]
    target[last] = value
  return c


def data_config(cache_dir, **data):
  """What the data layer reads of a run's config (seed 0, the data section, no extra eval sets), as a ConfigDict a
  test may change: the data section's defaults at the data tests' size (32-token sequences, a 300-token vocabulary,
  one worker, a 1 MiB row cache), the cache in `cache_dir`, then `data`."""
  sized = dict(seq_len=32, tokenizer_vocab_size=300, num_workers=1, remote_cache_bytes=1 << 20)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(
    dataclasses.asdict(DataConfig(**{**sized, 'cache_dir': str(cache_dir), **data}))
  )
  config.extra_eval = ml_collections.ConfigDict()
  return config


def tiny_data(seq_len=16, vocab=500):
  """Two sources with learnable structure (domain: counting with a stride; general: a repeated motif)."""
  rng = np.random.default_rng(0)

  def counting(n):
    start, stride = rng.integers(0, vocab, (n, 1)), rng.integers(1, 4, (n, 1))
    return ((start + stride * np.arange(seq_len + 1)) % vocab).astype(np.int32)

  def motif(n):
    motifs = rng.integers(0, vocab, (n, 4))
    return np.tile(motifs, (1, seq_len // 4 + 1))[:, : seq_len + 1].astype(np.int32)

  train = {'domain': counting(40), 'general': motif(200)}
  eval_sets = {'domain_test': counting(16), 'domain_train': train['domain'][:16], 'general_test': motif(16)}
  return types.SimpleNamespace(
    train=train,
    eval_sets=eval_sets,
    vocab_size=vocab,
    tokenizer=None,
    bytes_per_token={name: 2.0 for name in eval_sets},
    metadata={'tokenizer': 'test'},
  )


def compile_cache_env(folder) -> dict:
  """Environment for test subprocesses that share compiled programs in `folder`: most of a tiny run's start is
  compiling on a small CPU, and a loaded program is the compiled one (bit-for-bit assertions hold)."""
  return dict(JAX_COMPILATION_CACHE_DIR=str(folder), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def free_port() -> int:
  """A loopback port free now (for a JAX coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def frozen(config):
  """A test's ConfigDict read as an entry point reads it (the frozen Experiment everything below it takes)."""
  return config if isinstance(config, config_lib.Experiment) else config_lib.freeze(config)
