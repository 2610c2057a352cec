"""The base config every config file starts from (configs/common.py); every field is documented where it is set.

Also the checks of a config read from the command line: unknown keys, and what cannot run on this host.
"""

import ml_collections

from spt_jax import cli
from spt_jax.model import decoder as model_lib


def base_config(model_preset: str = 'cpu-160k') -> ml_collections.ConfigDict:
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
  # Domain tokens held out beside the test split as `domain_valid` (0: none): finetuning then also stops and
  # selects on it (the clean protocol, reported on test beside the paper's protocol of selecting on test).
  c.data.valid_tokens = 0
  # Seed of the eval sets' fixed samples (eval_sequences rows of each set, the MCQA subset): not the run's seed,
  # so that every seed is evaluated on the same sequences and losses compare across seeds.
  c.data.heldout_seed = 0
  c.data.domain_train_sequences = 64  # Fixed sample of training sequences kept as the `domain_train` eval set.
  c.data.cache_dir = ''  # Corpora and prepared data; empty: $SPT_JAX_CACHE or ~/.cache/spt_jax.
  c.data.num_workers = 0  # Tokenizer processes for prepare; 0: one per core.
  # Keep each text source's tokens in <cache>/tokenized/, so that preparing it again (another seed, budget, split
  # or seq_len) does not tokenize it again; False: deleted after packing (disk: about 2-4 bytes per token).
  c.data.keep_tokenized = True
  # Remote token files (https://, gs://) are read by range, row by row; the rows read are kept on disk up to this
  # many bytes per process (the least recently used dropped first). At least one row of seq_len + 1 tokens.
  c.data.remote_cache_bytes = 2 << 30

  c.mixture = ml_collections.ConfigDict()
  c.mixture.domain_fraction = 0.02  # δ: fraction of pretraining tokens drawn from the domain set.
  # Overrides domain_fraction when non-empty: a tuple of (until_tokens, {source: weight}) in order; the
  # last stage's until_tokens may be 0 (to the end). SCPT: ((180e9, {'general': 1.0}), (0, {...δ...})).
  c.mixture.stages = ()

  c.batch_size = 2048  # Global batch in sequences.
  # Microbatches per step: gradients of batch_size / grad_accum_steps sequences at a time are summed, so the
  # step is the same with less activation memory. 0: the run chooses the fewest that fit its accelerator's memory
  # by compiling the step first (hardware/aot.fit_to_devices; one on a CPU), as model.remat_policy='auto' does.
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
  c.schedule.decay_steps = 0  # WSD: > 0 decays over the last this many steps instead of the fractions.

  c.eval_every = 1000  # Steps between evaluations (0: only at the end).
  # Eval sets with their own interval in steps instead of eval_every, e.g. (('general_test', 5000),); every set
  # is evaluated at the start and at the end. Pretraining only (finetuning evaluates every set each time).
  c.eval_intervals = ()
  c.patience = 0  # Early stopping: evaluations of domain_test without improvement (0: off; finetuning sets it).
  c.eval_sequences = 256  # Sequences per eval set (a fixed, seeded sample).
  c.eval_batch_size = 0  # 0: batch_size.
  c.extra_eval = ml_collections.ConfigDict()  # name -> source spec of any further held-out set.
  # Multiple-choice tasks scored at every evaluation, e.g. ('mmlu_mathematics', 'arc_easy', 'tasks.jsonl'): the
  # summary records their accuracy at the best checkpoint. See spt_jax/evals/mcqa.py for the built-in tasks.
  c.mcqa_tasks = ()
  c.mcqa_max_examples = 200  # A fixed, seeded subset of each task.
  c.log_every = 10
  c.profile_from_step = 0  # Trace profile_steps steps from this step into W/plugins/profile (0: off)...
  c.profile_steps = 5
  c.profiler_port = 0  # ...or serve the profiler on this port, for TensorBoard to capture on demand (0: off).
  # JAX's persistent compilation cache, so that a rerun, a resumed run or the next study of the same shapes
  # does not compile again: 'auto' (<data cache>/jax_compilation), a folder, or '' (off).
  c.compilation_cache = 'auto'
  c.peak_flops = 0.0  # Per-chip peak FLOP/s for MFU; 0: a table of accelerators or a measurement; < 0: no MFU.
  c.checkpoint_every = 1000
  # Runs of the same shapes (seeds, δs, finetuning grid points) trained as one program over a leading run axis,
  # at most this many at once, each into its own folder as if alone (spt_jax/train/loop.run_many). It pays on
  # small models on accelerators, whose steps do not fill the chips; 1: one after another; 0: 8 on accelerators
  # and 1 on CPU, where stacks measured no faster (the README's Throughput section).
  c.runs_together = 1
  c.keep_checkpoints = 2  # Last N kept, plus the best by domain_test loss.
  c.resume_mismatched = False  # Resume a workdir even if its config.json differs from this config.

  c.finetune = ml_collections.ConfigDict()
  c.finetune.batch_size = 512
  c.finetune.weight_decay = 1e-7
  # (lr, warmup_steps) points run from the same pretrained parameters; the best domain_test loss is reported.
  c.finetune.grid = (
    (1e-5, 50),
    (1e-5, 100),
    (1e-5, 200),
    (4e-5, 50),
    (4e-5, 100),
    (4e-5, 200),
    (1e-4, 50),
    (1e-4, 100),
    (1e-4, 200),
  )
  # When the best point (under either protocol) sits on the grid's edge in lr or warmup (an axis of 2 or more
  # values), the pipeline adds the next point that way, the grid's own ratio further, up to this many per side.
  c.finetune.extend_grid = 2
  c.finetune.schedule = 'constant'  # Appendix B: constant with warmup.
  c.finetune.replay_fraction = 0.0  # Fraction r of general data replayed during finetuning.
  c.finetune.untie_embeddings = True  # The output head starts as a copy of the input embedding.
  c.finetune.eval_every = 50
  c.finetune.patience = 3  # Evaluations without improvement of domain_test before stopping.
  c.finetune.max_steps = 100_000
  # finetune.schedule='wsd': steps of LR decay (to schedule.final_lr) once early stopping triggers, resumed from
  # the best checkpoint with its optimizer state, in W/decay (spt_jax/train/finetune_decay.py); a run that reaches
  # max_steps decays over its last decay_steps instead. 0 with 'wsd': the schedule.*_fraction of max_steps.
  c.finetune.decay_steps = 0
  c.finetune.decay_from_step = -1  # Set by finetune_decay on the decay run: the best step it resumes from.
  # Earlier pretraining steps to finetune from as well (each grid point), e.g. for the compute multiplier and
  # the finetuning-delta law (7); their checkpoints are kept. Empty: only the final pretraining state.
  c.finetune.from_steps = ()
  return c


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:preset]` (big_vision style): the file's get_config(preset); one-line errors."""
  return cli.load_config(spec)
