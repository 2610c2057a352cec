"""What every domain's config shares: the sizes a config string chooses (`configs/<domain>.py:<arg>`).

  1b, 3b, 600m, 300m  paper scale (Cloud TPU / GPU): OLMo tokenizer, 2048 × 2048-token batches, 200B tokens,
                      δ = 2%, the cosine of OLMo cut off at 200B of 2T tokens, Appendix B's finetuning grid
  tiny                CPU scale on the built-in corpora: the whole pipeline in minutes on a laptop
  small               tiny's problem on the 0.16M-parameter model: a few minutes a pipeline, for studies of many runs
  study               small in the paper's regime (20 tokens per parameter, domain epochs 8-40 at δ = 2-10%, the
                      budget points near the peak LR of a cut cosine, Appendix B's 3 × 3 finetuning grid scaled to
                      it, a validation split beside the test split): a CPU study whose ratios are the paper's
  test                tiny shrunk to seconds: for end-to-end tests, not for results
Every key and its paper default is documented in spt_jax/train/config.py; a domain file sets its data on top.
"""

import ml_collections

from spt_jax.data import paper_data
from spt_jax.model import decoder as model_lib
from spt_jax.train import config as config_lib

PAPER_MODELS = {'1b': 'olmo-1b', '3b': 'olmo-3b', '600m': 'olmo-600m', '300m': 'olmo-300m'}
CPU_SIZES = ('tiny', 'small', 'study', 'test')
SIZES = (*PAPER_MODELS, *CPU_SIZES)


def sized(arg: str) -> ml_collections.ConfigDict:
  """The config of one size (data sources left to the domain file)."""
  if arg == 'tiny':
    return cpu()
  if arg == 'small':
    return small()
  if arg == 'study':
    return study()
  if arg == 'test':
    return test()
  if arg in PAPER_MODELS:
    return paper(PAPER_MODELS[arg])
  raise ValueError(f'unknown config size {arg!r}; choose one of {", ".join(SIZES)}')


def paper(model_preset: str) -> ml_collections.ConfigDict:
  """Paper scale: the base defaults (Appendix B) in bfloat16 with every block rematerialised.

  The general set is OLMo-1B's own pre-tokenized Dolma, fetched only as far as the run's tokens need; each
  domain file sets its domain set (spt_jax/data/paper_data.py: the paper's data from its public homes).
  """
  c = config_lib.base_config(model_preset)
  c.model.dtype = 'bfloat16'
  c.model.remat_policy = 'full'  # Recompute each block in the backward pass: 2048-token sequences fit.
  c.model.loss_chunk_length = 256  # The loss 256 positions at a time: never all [B, L, V] float32 logits.
  c.data.general = paper_data.DOLMA_OLMO_1B
  c.data.general_max_tokens = int(c.tokens)  # An upper bound: δ of the run's tokens come from the domain set.
  c.data.domain_max_tokens = paper_data.DOMAIN_TOKENS  # Subsampled by whole documents (Appendix C).
  c.data.test_tokens = 2_000_000
  return c


def cpu() -> ml_collections.ConfigDict:
  """CPU scale on the built-in corpora, same shape of problem as the paper's.

  A domain set much smaller than what pretraining reads, repeated several epochs at δ of a few percent.
  """
  c = config_lib.base_config('cpu-2m')
  c.data.general = 'builtin:english'
  c.data.tokenizer = 'bpe'
  c.data.tokenizer_vocab_size = c.model.vocab_size
  c.data.seq_len = 128
  c.data.general_max_tokens = 3_000_000  # Pretraining reads about 2/3 of an epoch of general text...
  c.data.domain_max_tokens = 40_000  # ...and about 4 epochs of the domain set's training split at δ = 5%.
  c.data.test_tokens = 8_000  # Held out by whole documents from each source.
  c.data.domain_train_sequences = 64
  c.mixture.domain_fraction = 0.05
  c.batch_size = 16
  c.tokens = 2_000_000
  c.optimizer.lr = 3e-3
  c.schedule.kind = 'cosine'
  c.schedule.warmup_steps = 50
  c.schedule.horizon_tokens = c.get_ref('tokens')  # The cosine ends with the run, also under --config.tokens=N.
  c.schedule.final_lr = 3e-4
  c.eval_every = 100
  c.eval_sequences = 64
  c.log_every = 20
  c.checkpoint_every = 200
  c.mesh.fsdp = 1
  c.mesh.data = -1
  c.runs_together = 0  # 8 on accelerators (seeds, δs and grid points of the same shapes as one program), 1 on CPU.
  c.finetune.batch_size = 16
  c.finetune.grid = ((3e-4, 10), (1e-3, 10))
  c.finetune.eval_every = 10  # About one epoch of the domain training split.
  c.finetune.patience = 3
  c.finetune.max_steps = 300
  return c


def small() -> ml_collections.ConfigDict:
  """The CPU config on the smallest model with a smaller domain set: the same shape of problem, a fifth the cost."""
  c = cpu()
  c.model = model_lib.preset_config('cpu-160k')
  c.data.tokenizer_vocab_size = c.model.vocab_size
  c.data.seq_len = 64
  c.data.general_max_tokens = 1_000_000
  c.data.domain_max_tokens = 10_000  # Training tokens: δ = 10% of 400k tokens repeats them about 4 times.
  c.data.test_tokens = 20_000  # Held out first, by whole documents (a Coq file can be thousands of tokens).
  c.data.domain_train_sequences = 32
  c.tokens = 400_000
  c.optimizer.lr = 5e-3
  c.schedule.warmup_steps = 20
  c.eval_every = 50
  c.eval_sequences = 128
  c.log_every = 25
  c.checkpoint_every = 100
  c.finetune.grid = ((1e-3, 5), (3e-3, 5))
  c.finetune.eval_every = 5  # About two thirds of an epoch of the domain training split.
  c.finetune.max_steps = 400  # NPT needs many epochs of a small domain set before it overfits.
  return c


def study() -> ml_collections.ConfigDict:
  """The small model and data in the paper's regime (spt_jax/train/regime.py prints its ratios beside the paper's).

  20 tokens per parameter (the paper 170: 2 cores cannot), the domain set small enough that δ = 2-10% repeats it
  8-40 times (the paper: 13-67 times), a cosine that would end at 10× the run, so that every budget point (a
  checkpoint of the one run) sits at ≥ 0.97 of the peak LR, and Appendix B's finetuning grid at the same ratios to
  the pretraining peak (0.025, 0.1, 0.25) and warmups of about 1/4 to 1 epoch of the domain set.
  """
  c = small()
  c.batch_size = 64  # bench: the 0.16M model runs about 1.6× the tokens/s at batch 64 as at 16.
  c.tokens = 800 * 64 * 64  # 3.3M: 20 tokens per parameter.
  c.schedule.warmup_steps = 32
  # The paper's cut (200B of a 2T cosine): the horizon unlinked from the run's end, then linked at 10× its tokens.
  del c.schedule['horizon_tokens']
  c.schedule.horizon_tokens = c.get_ref('tokens') * 10
  c.schedule.final_lr = 0.1 * c.optimizer.lr
  c.data.general_max_tokens = 3_300_000  # Pretraining reads each general document about once.
  c.data.domain_max_tokens = 8_000  # 41 epochs at δ = 10%, 8 at 2%.
  c.data.test_tokens = 20_000
  c.data.valid_tokens = 20_000  # Finetuning selects on it too (the clean protocol), beside the paper's.
  c.eval_every = 100
  c.eval_batch_size = 128
  c.checkpoint_every = 100
  c.log_every = 50
  peak = c.optimizer.lr
  c.finetune.grid = tuple((ratio * peak, warmup) for ratio in (0.025, 0.1, 0.25) for warmup in (2, 4, 8))
  c.finetune.eval_every = 8  # About one epoch of the domain set (8 batches of 16 × 65 tokens).
  c.finetune.max_steps = 400
  return c


def test() -> ml_collections.ConfigDict:
  """The small config (same model and domain set) shrunk to seconds."""
  c = small()
  c.optimizer.lr = 3e-3
  c.data.seq_len = 32
  c.data.general_max_tokens = 100_000
  c.data.test_tokens = 2_000
  c.data.domain_train_sequences = 8
  c.batch_size = 8
  c.tokens = 8 * 32 * 40
  c.schedule.warmup_steps = 5
  c.eval_every, c.eval_sequences, c.log_every, c.checkpoint_every = 20, 16, 5, 20
  c.finetune.batch_size = 8
  c.finetune.grid = ((1e-3, 5),)
  c.finetune.max_steps = 30
  return c
