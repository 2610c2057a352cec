"""The data section of a run's config: its sources, tokenizer, held-out splits and preparation settings.

One frozen dataclass, a field per key with its default; spt_jax/train/config.py's Experiment holds it as `data`.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What a run trains and evaluates on, and how it is prepared (spt_jax/data/prepare.py)."""

  seq_len: int = 2048  # Tokens per training example; sequences are stored with seq_len + 1 tokens.
  # Source specs are strings so that one override points a run at a user's files, e.g.
  # --config.data.domain='files:/data/proofs/**/*.v'. See spt_jax/data/sources.py for every kind.
  general: str = 'builtin:english'
  domain: str = 'builtin:coq'
  domain_max_tokens: int = 0  # Subsample the domain set by whole documents to about this many tokens (0: all).
  general_max_tokens: int = 0  # Likewise for the general set.
  # Tokenizer: a `tokenizers` JSON path, 'olmo' (OLMo's GPT-NeoX file from the built-in cache), or
  # 'bpe' (train a byte-level BPE of `tokenizer_vocab_size` on the mixture, cached).
  tokenizer: str = 'olmo'
  tokenizer_vocab_size: int = 0  # Only for tokenizer='bpe'.
  test_fraction: float = 0.05  # Fraction of each source's documents held out by content hash...
  test_tokens: int = 0  # ...or, when > 0, a token budget for the held-out split instead.
  # Domain tokens held out beside the test split as `domain_valid` (0: none): finetuning then also stops and
  # selects on it (the clean protocol, reported on test beside the paper's protocol of selecting on test).
  valid_tokens: int = 0
  # Seed of the eval sets' fixed samples (eval_sequences rows of each set, the MCQA subset): not the run's seed,
  # so that every seed is evaluated on the same sequences and losses compare across seeds.
  heldout_seed: int = 0
  domain_train_sequences: int = 64  # Fixed sample of training sequences kept as the `domain_train` eval set.
  cache_dir: str = ''  # Corpora and prepared data; empty: $SPT_JAX_CACHE or ~/.cache/spt_jax.
  num_workers: int = 0  # Tokenizer processes for prepare; 0: one per core.
  # Keep each text source's tokens in <cache>/tokenized/, so that preparing it again (another seed, budget, split
  # or seq_len) does not tokenize it again; False: deleted after packing (disk: about 2-4 bytes per token).
  keep_tokenized: bool = True
  # Remote token files (https://, gs://) are read by range, row by row; the rows read are kept on disk up to this
  # many bytes per process (the least recently used dropped first). At least one row of seq_len + 1 tokens.
  remote_cache_bytes: int = 2 << 30
