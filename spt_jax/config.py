"""The base config every config file starts from; every field is documented where it is set."""

import ml_collections

from spt_jax import model as model_lib


def base_config(model_preset: str = 'tiny') -> ml_collections.ConfigDict:
  """All keys a run may read, with paper-faithful defaults (Appendix B) where the paper gives them."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # One seed for init, data order and dropout-free training noise: same seed, same run.
  # 'pretrain' or 'finetune' runs one stage into --workdir; 'pipeline' pretrains into W/pretrain, then
  # finetunes (every grid point) into W/finetune/..., then writes W/summary.json and W/report.md.
  c.stage = 'pipeline'
  # A pretrain workdir, a checkpoint folder, or a Hugging Face OLMo directory: parameters are loaded from it
  # (never the optimizer). Empty: random initialisation. The pipeline sets it for its finetune stage.
  c.init_from = ''

  c.model = model_lib.preset_config(model_preset)

  # Mesh over (data, fsdp, tensor); one axis may be -1: "all remaining devices".
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))

  c.data = ml_collections.ConfigDict()
  c.data.seq_len = 2048  # Tokens per training example; sequences are stored with seq_len + 1 tokens.
  # Source specs are strings so that one override points a run at a user's files, e.g.
  # --config.data.domain='files:/data/proofs/**/*.v'. See spt_jax/data/sources.py for every kind.
  c.data.general = 'builtin:english'
  c.data.domain = 'builtin:coq'
  c.data.domain_max_tokens = 0  # Subsample the domain set by whole documents to about this many tokens (0: all).
  c.data.general_max_tokens = 0  # Likewise for the general set.
  # Tokenizer: a `tokenizers` JSON path, 'olmo' (OLMo's GPT-NeoX file from the built-in cache), or
  # 'bpe' (train a byte-level BPE of `tokenizer_vocab_size` on the mixture, cached).
  c.data.tokenizer = 'olmo'
  c.data.tokenizer_vocab_size = 0  # Only for tokenizer='bpe'.
  c.data.test_fraction = 0.05  # Fraction of each source's documents held out by content hash...
  c.data.test_tokens = 0  # ...or, when > 0, a token budget for the held-out split instead.
  c.data.domain_train_sequences = 64  # Fixed sample of training sequences kept as the `domain_train` eval set.
  c.data.cache_dir = ''  # Corpora and prepared data; empty: $SPT_JAX_CACHE or ~/.cache/spt_jax.
  c.data.num_workers = 0  # Tokenizer processes for prepare; 0: one per core.

  c.mixture = ml_collections.ConfigDict()
  c.mixture.domain_fraction = 0.02  # δ: fraction of pretraining tokens drawn from the domain set.
  # Overrides domain_fraction when non-empty: a tuple of (until_tokens, {source: weight}) in order; the
  # last stage's until_tokens may be 0 (to the end). SCPT: ((180e9, {'general': 1.0}), (0, {...δ...})).
  c.mixture.stages = ()

  c.batch_size = 2048  # Global batch in sequences.
  # Microbatches per step: gradients of batch_size / grad_accum_steps sequences at a time are summed, so the
  # step is the same with less activation memory (raise it until a step fits on the chips).
  c.grad_accum_steps = 1
  c.steps = 0  # Run length in steps...
  c.tokens = int(200e9)  # ...or in tokens (used when steps == 0).

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 4e-4  # Peak learning rate.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-5
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0  # Global-norm clipping.
  c.optimizer.z_loss = 0.0  # Weight of the log(Z)^2 auxiliary loss (0: off).

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = 'cosine'  # 'cosine' (with cut-off), 'wsd' or 'constant' (all with linear warmup).
  c.schedule.warmup_steps = 2000  # Warmup in steps...
  c.schedule.warmup_tokens = 0  # ...or in tokens (used when > 0).
  c.schedule.final_lr = 4e-5  # Cosine: LR at the end of the horizon.
  c.schedule.horizon_tokens = int(2e12)  # Cosine: the cosine spans this many tokens; the run may cut it off.
  c.schedule.stable_fraction = 0.8  # WSD: fraction of the run at peak LR after warmup...
  c.schedule.decay_fraction = 0.2  # ...and fraction spent decaying.
  c.schedule.decay_shape = 'linear'  # WSD decay: 'linear', 'cosine' or '1-sqrt'.

  c.eval_every = 1000  # Steps between evaluations (0: only at the end).
  c.patience = 0  # Early stopping: evaluations of domain_test without improvement (0: off; finetuning sets it).
  c.eval_sequences = 256  # Sequences per eval set (a fixed, seeded sample).
  c.eval_batch_size = 0  # 0: batch_size.
  c.extra_eval = ml_collections.ConfigDict()  # name -> source spec of any further held-out set.
  # Multiple-choice tasks scored at every evaluation, e.g. ('mmlu_mathematics', 'arc_easy', 'tasks.jsonl'): the
  # summary records their accuracy at the best checkpoint. See spt_jax/mcqa.py for the built-in tasks.
  c.mcqa_tasks = ()
  c.mcqa_max_examples = 200  # A fixed, seeded subset of each task.
  c.log_every = 10
  c.peak_flops = 0.0  # Per-chip peak FLOP/s for MFU; 0: a table of accelerators or a measurement; < 0: no MFU.
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2  # Last N kept, plus the best by domain_test loss.
  c.resume_mismatched = False  # Resume a workdir even if its config.json differs from this config.

  c.finetune = ml_collections.ConfigDict()
  c.finetune.batch_size = 512
  c.finetune.weight_decay = 1e-7
  # (lr, warmup_steps) points run from the same pretrained parameters; the best domain_test loss is reported.
  c.finetune.grid = ((1e-5, 50), (1e-5, 100), (1e-5, 200), (4e-5, 50), (4e-5, 100), (4e-5, 200),
                     (1e-4, 50), (1e-4, 100), (1e-4, 200))
  c.finetune.schedule = 'constant'  # Appendix B: constant with warmup.
  c.finetune.replay_fraction = 0.0  # Fraction r of general data replayed during finetuning.
  c.finetune.untie_embeddings = True  # The output head starts as a copy of the input embedding.
  c.finetune.eval_every = 50
  c.finetune.patience = 3  # Evaluations without improvement of domain_test before stopping.
  c.finetune.max_steps = 100_000
  # Earlier pretraining steps to finetune from as well (each grid point), e.g. for the compute multiplier and
  # the finetuning-delta law (7); their checkpoints are kept. Empty: only the final pretraining state.
  c.finetune.from_steps = ()
  return c


def paper_config(model_preset: str) -> ml_collections.ConfigDict:
  """Paper scale (Cloud TPU / GPU): OLMo tokenizer, 2048 × 2048-token batches, 200B tokens, δ = 2%.

  The general (Dolma) and domain sets are not shipped: set config.data.general and config.data.domain.
  """
  c = base_config(model_preset)
  c.model.dtype = 'bfloat16'
  c.model.remat_policy = 'full'  # Recompute each block in the backward pass: 2048-token sequences fit.
  c.model.loss_chunk_length = 256  # The loss 256 positions at a time: never all [B, L, V] float32 logits.
  c.data.general = ''  # e.g. 'tokens:/data/dolma/*.npy?dtype=uint16' (OLMo's pre-tokenized Dolma).
  c.data.domain = ''  # e.g. 'jsonl:/data/proofpile/*.jsonl?field=text'.
  c.data.test_tokens = 2_000_000
  return c


def cpu_config(domain_spec: str, general_spec: str = 'builtin:english') -> ml_collections.ConfigDict:
  """CPU scale on the built-in corpora: the whole pipeline in minutes on a laptop, same shape of problem.

  A domain set much smaller than what pretraining reads, repeated several epochs at δ of a few percent.
  """
  c = base_config('cpu-2m')
  c.data.general = general_spec
  c.data.domain = domain_spec
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
  c.schedule.horizon_tokens = c.tokens
  c.schedule.final_lr = 3e-4
  c.eval_every = 100
  c.eval_sequences = 64
  c.log_every = 20
  c.checkpoint_every = 200
  c.mesh.fsdp = 1
  c.mesh.data = -1
  c.finetune.batch_size = 16
  c.finetune.grid = ((3e-4, 10), (1e-3, 10))
  c.finetune.eval_every = 10  # About one epoch of the domain training split.
  c.finetune.patience = 3
  c.finetune.max_steps = 300
  return c


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every leaf key of a config as a dotted path."""
  keys = []
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(flat_keys(value, path + '.'))
    keys.append(path)
  return keys


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:preset]` (big_vision style): the file's get_config(preset)."""
  import importlib.util
  import pathlib
  path, _, preset = spec.partition(':')
  if not pathlib.Path(path).is_file():
    raise ValueError(f'config file {path!r} does not exist; pass --config=configs/<domain>.py[:preset]')
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(preset) if preset else module.get_config()


def check_override_keys(config: ml_collections.ConfigDict, argv: list[str], flag: str = 'config') -> None:
  """Raises a one-line ValueError for a `--config.key=value` whose key does not exist, naming close keys."""
  import difflib
  valid = flat_keys(config)
  for arg in argv:
    if not arg.startswith(f'--{flag}.'):
      continue
    key = arg[len(flag) + 3:].split('=', 1)[0]
    if key not in valid:
      close = difflib.get_close_matches(key, valid, n=5, cutoff=0.6)
      hint = f'close valid keys: {", ".join(close)}' if close else 'see spt_jax/config.py for every key'
      raise ValueError(f'unknown config key {key!r}; {hint}')


def check_runnable(config: ml_collections.ConfigDict, backend: str) -> None:
  """One-line errors for a config that cannot run here, before any data or compilation work."""
  if config.stage not in ('pretrain', 'finetune', 'pipeline'):
    raise ValueError(f'stage={config.stage!r}; use pretrain, finetune or pipeline')
  if config.stage == 'finetune' and not config.init_from:
    raise ValueError('stage=finetune needs --config.init_from=<pretrain workdir or checkpoint>')
  missing = [key for key in ('general', 'domain') if not config.data[key]]
  if missing:
    raise ValueError(f'config.data.{" and config.data.".join(missing)} not set: point them at your data '
                     "(e.g. --config.data.domain='files:/data/domain/*.txt'), or run the CPU-scale preset "
                     '--config=configs/<domain>.py:tiny on the built-in corpora')
  big = config.model.d_model >= 1024
  if big and backend == 'cpu':
    raise ValueError(f'model {config.model.preset} is paper scale and this host has only a CPU; run it on a '
                     'TPU/GPU host, or run the CPU-scale preset --config=configs/<domain>.py:tiny')


PAPER_PRESETS = {'1b': 'olmo-1b', '3b': 'olmo-3b', '600m': 'olmo-600m', '300m': 'olmo-300m'}


def domain_config(preset: str, cpu_domain: str) -> ml_collections.ConfigDict:
  """The config of one domain's experiment by preset name (what every configs/<domain>.py returns)."""
  if preset in PAPER_PRESETS:
    return paper_config(PAPER_PRESETS[preset])
  if preset == 'tiny':
    return cpu_config(cpu_domain)
  if preset == 'test':
    return test_config(cpu_domain)
  raise ValueError(f'unknown preset {preset!r}; choose one of {sorted(PAPER_PRESETS) + ["tiny", "test"]}')


def test_config(domain_spec: str) -> ml_collections.ConfigDict:
  """The CPU pipeline shrunk to seconds: for end-to-end tests, not for results."""
  c = cpu_config(domain_spec)
  c.model = model_lib.preset_config('tiny')
  c.data.tokenizer_vocab_size = c.model.vocab_size
  c.data.seq_len = 32
  c.data.general_max_tokens = 100_000
  c.data.domain_max_tokens = 10_000
  c.data.test_tokens = 2_000
  c.data.domain_train_sequences = 8
  c.batch_size = 8
  c.tokens = 8 * 32 * 40
  c.schedule.horizon_tokens = c.tokens
  c.schedule.warmup_steps = 5
  c.eval_every = 20
  c.eval_sequences = 16
  c.log_every = 5
  c.checkpoint_every = 20
  c.finetune.batch_size = 8
  c.finetune.grid = ((1e-3, 5),)
  c.finetune.eval_every = 5
  c.finetune.max_steps = 30
  return c
