"""What every domain's config shares: the sizes a config string chooses (`configs/<domain>.py:<size>`).

  1b, 3b, 600m, 300m  paper scale (Cloud TPU / GPU): OLMo tokenizer, 2048 × 2048-token batches, 200B tokens,
                      δ = 2%, the cosine of OLMo cut off at 200B of 2T tokens, Appendix B's finetuning grid
  tiny                CPU scale on the built-in corpora: the whole pipeline in minutes on a laptop
  small               tiny's problem on the 0.16M-parameter model: a few minutes a pipeline, for studies of many runs
  study               small in the paper's regime (20 tokens per parameter, domain epochs 8-40 at δ = 2-10%, the
                      budget points near the peak LR of a cut cosine, Appendix B's 3 × 3 finetuning grid scaled to
                      it, a validation split beside the test split): a CPU study whose ratios are the paper's
  test                small shrunk to seconds: for end-to-end tests, not for results
Every key and its paper default is documented in spt_jax/train/config.py. The CPU sizes are one table: a row per
key, a column per size, each key set once. A domain file names only its domain set (`domain`).
"""

import ml_collections

from spt_jax.data import paper_data
from spt_jax.train import config as config_lib

PAPER_MODELS = {'1b': 'olmo-1b', '3b': 'olmo-3b', '600m': 'olmo-600m', '300m': 'olmo-300m'}
CPU_SIZES = ('tiny', 'small', 'study', 'test')
SIZES = (*PAPER_MODELS, *CPU_SIZES)

# What every CPU size sets alike: the built-in corpora, a BPE of the model's vocabulary, one run at a time.
CPU_SHARED = {
  'data.general': 'builtin:english',
  'data.tokenizer': 'bpe',
  'mixture.domain_fraction': 0.05,
  'schedule.kind': 'cosine',
  'mesh.fsdp': 1,
  'mesh.data': -1,
  'runs_together': 0,  # 8 on accelerators (seeds, δs and grid points of the same shapes as one program), 1 on CPU.
  'finetune.patience': 3,
}
_STUDY_LR = 5e-3  # study's pretraining peak: its finetuning grid and final LR are ratios of it (Appendix B's).


class Tokens(float):
  """A value linked to the run's tokens (this many times them), so that --config.tokens=N moves it too."""


# Each key's value at each CPU size, in CPU_SIZES' order. tiny pretrains about 2/3 of an epoch of general text and
# about 4 epochs of the domain set's training split at δ = 5%; small repeats the domain set about 4 times at
# δ = 10%; study reads each general document about once, repeats the domain set 41 times at δ = 10% and 8 at 2%,
# and cuts a cosine 10 times its run (the paper's 200B of a 2T cosine), so its budget points sit at ≥ 0.97 of
# the peak LR.
CPU_TABLE = {
  'model.preset': ('cpu-2m', 'cpu-160k', 'cpu-160k', 'cpu-160k'),
  'data.seq_len': (128, 64, 64, 32),
  'data.general_max_tokens': (3_000_000, 1_000_000, 3_300_000, 100_000),
  'data.domain_max_tokens': (40_000, 10_000, 8_000, 10_000),
  # Held out first, by whole documents from each source (a Coq file can be thousands of tokens).
  'data.test_tokens': (8_000, 20_000, 20_000, 2_000),
  'data.valid_tokens': (0, 0, 20_000, 0),  # study: finetuning also selects on it (the clean protocol).
  'data.domain_train_sequences': (64, 32, 32, 8),
  'batch_size': (16, 16, 64, 8),  # bench: the 0.16M model runs about 1.6× the tokens/s at batch 64 as at 16.
  'tokens': (2_000_000, 400_000, 800 * 64 * 64, 8 * 32 * 40),  # study: 20 tokens per parameter.
  'optimizer.lr': (3e-3, 5e-3, _STUDY_LR, 3e-3),
  'schedule.warmup_steps': (50, 20, 32, 5),
  'schedule.horizon_tokens': (Tokens(1), Tokens(1), Tokens(10), Tokens(1)),  # The cosine's end: the run's × this.
  'schedule.final_lr': (3e-4, 3e-4, 0.1 * _STUDY_LR, 3e-4),
  'eval_every': (100, 50, 100, 20),
  'eval_sequences': (64, 128, 128, 16),
  'eval_batch_size': (0, 0, 128, 0),
  'log_every': (20, 25, 50, 5),
  'checkpoint_every': (200, 100, 100, 20),
  'finetune.batch_size': (16, 16, 16, 8),
  'finetune.grid': (
    ((3e-4, 10), (1e-3, 10)),
    ((1e-3, 5), (3e-3, 5)),
    tuple((ratio * _STUDY_LR, warmup) for ratio in (0.025, 0.1, 0.25) for warmup in (2, 4, 8)),
    ((1e-3, 5),),
  ),
  # About one epoch of the domain training split (small: about two thirds).
  'finetune.eval_every': (10, 5, 8, 5),
  'finetune.max_steps': (300, 400, 400, 30),  # NPT needs many epochs of a small domain set before it overfits.
}


def domain(builtin: str, paper: str):
  """A domain file's get_config: the size's config with the domain set `builtin` (CPU sizes) or `paper`."""

  def get_config(arg: str = '1b') -> ml_collections.ConfigDict:
    c = sized(arg)
    c.data.domain = builtin if arg in CPU_SIZES else paper
    return c

  return get_config


def sized(arg: str) -> ml_collections.ConfigDict:
  """The config of one size (its domain set left to the domain file)."""
  if arg in PAPER_MODELS:
    return paper(PAPER_MODELS[arg])
  if arg in CPU_SIZES:
    return cpu(arg)
  raise ValueError(f'unknown config size {arg!r}; choose one of {", ".join(SIZES)}')


def paper(model_preset: str) -> ml_collections.ConfigDict:
  """Paper scale: the base defaults (Appendix B) in bfloat16, microbatches and remat chosen to fit the chips.

  The general set is OLMo-1B's own pre-tokenized Dolma, fetched only as far as the run's tokens need; each
  domain file sets its domain set (spt_jax/data/paper_data.py: the paper's data from its public homes).
  """
  c = config_lib.base_config(model_preset)
  c.model.dtype = 'bfloat16'
  # Microbatches and rematerialisation left to the run: it compiles the step for its chips at the start and takes
  # the cheapest setting that fits (the dry run with --topology shows the choice).
  c.grad_accum_steps = 0
  c.model.remat_policy = 'auto'
  c.model.loss_chunk_length = 256  # The loss 256 positions at a time: never all [B, L, V] float32 logits.
  c.data.general = paper_data.DOLMA_OLMO_1B
  c.data.general_max_tokens = int(c.tokens)  # An upper bound: δ of the run's tokens come from the domain set.
  c.data.domain_max_tokens = paper_data.DOMAIN_TOKENS  # Subsampled by whole documents (Appendix C).
  c.data.test_tokens = 2_000_000
  return c


def cpu(size: str) -> ml_collections.ConfigDict:
  """A CPU size: the base config with CPU_SHARED and the size's column of CPU_TABLE, each key set once."""
  column = CPU_SIZES.index(size)
  values = {key: row[column] for key, row in CPU_TABLE.items()}
  c = config_lib.base_config(values.pop('model.preset'))
  c.data.tokenizer_vocab_size = c.model.vocab_size  # The BPE is trained to the model's vocabulary.
  tokens = c.get_ref('tokens')  # Tokens(k) values become links to it, not copies.
  links = {key: tokens if v == 1 else tokens * int(v) for key, v in values.items() if isinstance(v, Tokens)}
  c.update_from_flattened_dict({**CPU_SHARED, **values, **links})
  return c
