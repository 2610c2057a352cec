"""A workdir's layout: every file and folder name that a run or a pipeline writes, in one place.

A run (one stage) writes into its workdir `config.json`, `tokenizer.json`, `metrics.jsonl`, `checkpoints/<step>/`,
the log, `.lock` while it runs, `decay/` after a WSD finetune stops early, and, when it ends, `summary.json`. A
pipeline's workdir W holds one run in `W/pretrain` and one per finetuning grid point in `W/finetune/<point>`, then
`W/summary.json` and `W/report.md`. A study's folder holds one pipeline workdir per variant and its own
`report.md`. A prepared-data folder in the cache holds `tokenizer.json`, `metadata.json` and one `.npy` shard per
training source and evaluation set.
"""

import os

CONFIG = 'config.json'  # The resolved config; a rerun compares against it before resuming.
TOKENIZER = 'tokenizer.json'  # The tokenizer the run's token ids belong to.
METRICS = 'metrics.jsonl'  # One JSON record per logged step.
SUMMARY = 'summary.json'  # Written when a run or a pipeline ends; a rerun reads it to skip finished work.
REPORT = 'report.md'
REPORT_PLOT = 'report.png'  # A pipeline's domain and general loss through pretraining and its best finetune.
LOCK = '.lock'  # Names the live run holding the workdir (the lock itself is an flock on the folder).
MIRRORED = '.mirrored'  # A workdir in a bucket: the token of the last copy of its local mirror (storage/bucket.py).
LOG = 'log.txt'  # Every log record of a run, the libraries' included (the terminal shows only the run's own).
CHECKPOINTS = 'checkpoints'  # One folder per saved step.
PRETRAIN = 'pretrain'
FINETUNE = 'finetune'
DECAY = 'decay'  # Inside a WSD finetune that stopped early: its decay from the best checkpoint.
METADATA = 'metadata.json'  # Prepared data: what was prepared from which files, each shard's size and checksum.
PREPARED_CHECKSUMS = 'checksums.json'  # Prepared data: the checks of METADATA and TOKENIZER.
FIT = 'fit.json'  # `plan fit`: the joint law, its parameters with intervals, the finetuning fits, residuals.
RECOMMEND = 'recommend.jsonl'  # `plan recommend`: the best δ per budget, one JSON record a line.
PILOTS = 'pilots.json'  # `plan recommend --pilots`: the pilots, their losses and the δ picked.


def log_name(process_index: int, process_count: int) -> str:
  """The log file of one process: log.txt alone, log.<index>.txt when several processes share the workdir."""
  return LOG if process_count == 1 else f'log.{process_index}.txt'


def checkpoint_dir(workdir: str, step: int) -> str:
  return os.path.join(workdir, CHECKPOINTS, str(step))


def pretrain_dir(workdir: str) -> str:
  return os.path.join(workdir, PRETRAIN)


def finetune_dir(workdir: str, point: str) -> str:
  return os.path.join(workdir, FINETUNE, point)


def train_shard(source: str) -> str:
  """A prepared-data folder's token rows of one training source ('general', 'domain')."""
  return f'train_{source}.npy'


def test_documents(source: str) -> str:
  """A prepared-data folder's list of the content hashes of one source's held-out documents."""
  return f'test_documents_{source}.json'


def eval_shard(name: str) -> str:
  """A prepared-data folder's token rows of one evaluation set ('general_test', 'domain_valid', ...)."""
  return f'eval_{name}.npy'
