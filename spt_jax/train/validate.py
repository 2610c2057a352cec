"""Every check a config can pass or fail before a run writes anything: one function, one-line errors.

`check` is where an entry point (spt_jax.main, the dry run, a study's runs) reads its config, once: it returns the
frozen Experiment that the loop and the pipeline take as valid and never check again (only the prepared data's
tokenizer is checked against the model, `check_vocab`, once the data exists). A rejected config must not lock the
user out of the workdir, so nothing here writes.
"""

import dataclasses
import functools
import math
import os
import shutil

import jax
import numpy as np

from spt_jax.model import attention, decoder
from spt_jax.storage import bucket
from spt_jax.train import compile_cache, schedules
from spt_jax.train import config as config_lib

OLMO_VOCAB_SIZE = 50280  # OLMo's GPT-NeoX tokenizer (data.tokenizer='olmo'), checked in tests/test_validate.py.
# What every key of the base config must hold; tests/test_validate.py checks that no key of config.base_config is
# missing, so a new key cannot go unchecked. Any float anywhere in a config (tuples included) must be finite.
_POSITIVE_INTEGER = (
  'model.d_model',
  'model.n_layers',
  'model.n_heads',
  'model.mlp_dim',
  'model.vocab_size',
  'data.seq_len',
  'batch_size',
  'eval_sequences',
  'log_every',
  'keep_checkpoints',
  'profile_steps',
  'data.remote_cache_bytes',
)
_FINETUNE_POSITIVE_INTEGER = ('finetune.batch_size', 'finetune.max_steps', 'finetune.eval_every')
_POSITIVE = (
  'optimizer.lr',
  'optimizer.eps',
  'optimizer.grad_clip',
  'model.rope_theta',
  'model.layer_norm_eps',
  'model.init_std',
)
_NON_NEGATIVE_INTEGER = (
  'grad_accum_steps',  # 0: chosen by the run to fit its devices (hardware/aot.fit_to_devices).
  'runs_together',
  'steps',
  'tokens',
  'eval_every',
  'checkpoint_every',
  'patience',
  'eval_batch_size',
  'data.domain_max_tokens',
  'data.general_max_tokens',
  'data.test_tokens',
  'data.valid_tokens',
  'data.heldout_seed',
  'data.domain_train_sequences',
  'data.tokenizer_vocab_size',
  'data.num_workers',
  'mcqa_max_examples',
  'schedule.warmup_steps',
  'schedule.warmup_tokens',
  'schedule.horizon_tokens',
  'schedule.decay_steps',
  'model.loss_chunk_length',
  'model.scan_unroll',
  'profile_from_step',
  'profiler_port',
  'finetune.patience',
  'finetune.extend_grid',
  'finetune.decay_steps',
  'seed',
)
_NON_NEGATIVE = ('optimizer.weight_decay', 'optimizer.z_loss', 'schedule.final_lr', 'finetune.weight_decay')
_BELOW_ONE = ('optimizer.b1', 'optimizer.b2', 'data.test_fraction')  # In [0, 1).
_UP_TO_ONE = ('schedule.stable_fraction', 'schedule.decay_fraction')  # In [0, 1].
_DTYPES = ('float32', 'bfloat16', 'float16')
_CHOICES = {
  'stage': ('pretrain', 'finetune', 'pipeline'),
  'schedule.kind': schedules.KINDS,
  'schedule.decay_shape': schedules.DECAY_SHAPES,
  'finetune.schedule': schedules.KINDS,
  'model.dtype': _DTYPES,
  'model.param_dtype': _DTYPES,
  'model.attention_impl': attention.IMPLEMENTATIONS,
  'model.remat_policy': (*decoder.REMAT_POLICIES, decoder.AUTO_REMAT),  # Chosen by the run, as grad_accum_steps=0.
}
_BOOLEAN = (
  'model.tie_embeddings',
  'model.scan_layers',
  'finetune.untie_embeddings',
  'resume_mismatched',
  'data.keep_tokenized',
)
# Checked where they are read (one-line errors of their own): sources and the tokenizer (_check_sources,
# check_vocab), the mesh (sharding.mesh_shape), the mixture, δ and the replay fraction
# (mixture.stages_from_config), the finetuning grid and from_steps (_check_finetune), eval intervals
# (_check_eval_intervals), the compilation cache (check_folders); peak_flops may be any finite number (< 0: no
# MFU) and decay_from_step is -1 or a step (set by finetune_decay).
_CHECKED_ELSEWHERE = (
  'init_from',
  'model.preset',
  'mesh.data',
  'mesh.fsdp',
  'mesh.tensor',
  'data.general',
  'data.domain',
  'data.tokenizer',
  'data.cache_dir',
  'mixture.stages',
  'eval_intervals',
  'extra_eval',
  'mcqa_tasks',
  'peak_flops',
  'finetune.grid',
  'finetune.from_steps',
  'finetune.decay_from_step',
  'mixture.domain_fraction',
  'finetune.replay_fraction',
  'compilation_cache',
)


def _get(config, dotted: str):
  value = config
  for key in dotted.split('.'):
    value = getattr(value, key)
  return value


def _leaves(record, prefix: str = '') -> list[str]:
  """Every leaf of a frozen config as a dotted key."""
  keys = []
  for field in dataclasses.fields(record):
    value = getattr(record, field.name)
    if dataclasses.is_dataclass(value):
      keys += _leaves(value, f'{prefix}{field.name}.')
    else:
      keys.append(f'{prefix}{field.name}')
  return keys


def check(
  config,
  *,
  data=None,
  devices: int | None = None,
  sources: bool = True,
  stage: str | None = None,
  grid_point=None,
  vocab: bool = True,
  backend: str | None = None,
) -> config_lib.Experiment:
  """The config read into its frozen Experiment (config_lib.freeze), which an entry point hands to everything
  below it; raises a one-line ValueError naming the problem and the fix; reads no data, writes nothing.

  data: prepared data the caller already has (its sources and tokenizer are then not checked here).
  devices: plan the mesh for this many devices (default: those present). sources: check data specs and the
  tokenizer (the dry run plans paper configs whose data paths are not set). stage, grid_point: only this
  stage (and finetuning grid point), as the loop checks; default: every stage of config.stage. vocab: check
  the tokenizer's size here (the loop checks it itself once init_from's shapes are checked). backend: the
  platform the run will use ('cpu' refuses paper-scale models).
  """
  from spt_jax.data import mixture as mixture_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.model import sharding  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.train import run_plan  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if not isinstance(config, config_lib.Experiment):
    config = config_lib.freeze(config)
  if config.stage not in ('pretrain', 'finetune', 'pipeline'):
    raise ValueError(f'stage={config.stage!r}; use --config.stage=pretrain, finetune or pipeline')
  if config.stage == 'finetune' and not config.init_from:
    raise ValueError('stage=finetune needs --config.init_from=<pretrain workdir or checkpoint>')
  stages = (stage,) if stage else ('pretrain', 'finetune') if config.stage == 'pipeline' else (config.stage,)
  _check_numbers(config, 'finetune' in stages)
  if 'finetune' in stages:
    _check_finetune(config)
  data_config = config.data
  if not 0 <= data_config.test_fraction < 1:
    raise ValueError(
      f'data.test_fraction {data_config.test_fraction} is outside [0, 1); set --config.data.test_fraction'
    )
  if data_config.test_fraction == 0 and data_config.test_tokens <= 0:
    raise ValueError('data.test_fraction and data.test_tokens are both 0, so there is no held-out set; set one')
  mesh = sharding.mesh_shape(config.mesh, devices or jax.device_count())
  divisor = mesh[0] * mesh[1]  # data × fsdp: the axes the batch is split over.
  for name in stages:
    plan = run_plan.make(config, name, grid_point)  # Steps and schedule: one-line errors of their own.
    outside = [step for step in config.finetune.from_steps if not 0 < step < plan.steps]
    if name == 'pretrain' and config.stage == 'pipeline' and outside:
      raise ValueError(
        f'finetune.from_steps {outside} are outside the pretraining run (1..{plan.steps - 1}); drop '
        'them or lengthen the run'
      )
    mixture_lib.stages_from_config(plan.config, name)
    where = 'finetune.batch_size' if name == 'finetune' else 'batch_size'
    if plan.config.batch_size % (divisor * (plan.config.grad_accum_steps or 1)):
      raise ValueError(
        f'{where}={plan.config.batch_size} is not a multiple of the {divisor} data-parallel '
        f'devices × grad_accum_steps={plan.config.grad_accum_steps}; change --config.{where}, '
        '--config.grad_accum_steps or --config.mesh'
      )
  missing = [key for key in ('general', 'domain') if not getattr(config.data, key)]
  if sources and data is None and missing:
    raise ValueError(
      f'config.data.{" and config.data.".join(missing)} not set: point them at your data '
      "(e.g. --config.data.domain='files:/data/domain/*.txt'), or run the CPU-scale preset "
      '--config=configs/<domain>.py:tiny on the built-in corpora'
    )
  if backend == 'cpu' and config.model.d_model >= 1024:
    raise ValueError(
      f'model {config.model.preset} is paper scale and this host has only a CPU; run it on a '
      'TPU/GPU host, or run the CPU-scale preset --config=configs/<domain>.py:tiny'
    )
  if sources and data is None:
    _check_sources(config)
  if sources and vocab:
    check_vocab(config, data)
  return config


def rules() -> dict:
  """Each key a rule covers, with the rule's name (tests check that every key of the base config has one)."""
  named = {
    'positive integer': _POSITIVE_INTEGER + _FINETUNE_POSITIVE_INTEGER,
    'positive': _POSITIVE,
    'non-negative integer': _NON_NEGATIVE_INTEGER,
    'non-negative': _NON_NEGATIVE,
    'in [0, 1)': _BELOW_ONE,
    'in [0, 1]': _UP_TO_ONE,
    'choice': tuple(_CHOICES),
    'boolean': _BOOLEAN,
    'checked where read': _CHECKED_ELSEWHERE,
  }
  return {key: rule for rule, keys in named.items() for key in keys}


def _non_finite(value) -> bool:
  """Whether value holds a NaN or an infinity anywhere (nested tuples, lists and dicts included)."""
  if isinstance(value, float):
    return not math.isfinite(value)
  if isinstance(value, (list, tuple)):
    return any(_non_finite(item) for item in value)
  if isinstance(value, dict) or hasattr(value, 'items'):
    return any(_non_finite(item) for item in value.values())
  return False


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value) -> bool:
  return _is_number(value) and float(value).is_integer()


def _check_numbers(config, finetunes: bool) -> None:
  """Every value of the base config's keys against its rule, and no NaN or infinity anywhere in the config."""

  for name in _leaves(config):
    value = _get(config, name)
    if not hasattr(value, 'items') and _non_finite(value):
      raise ValueError(f'{name}={value!r} is not a finite number; set --config.{name} to a finite value')
  integers = _POSITIVE_INTEGER + (_FINETUNE_POSITIVE_INTEGER if finetunes else ())
  for name in integers:
    value = _get(config, name)
    if not _is_integer(value) or value < 1:
      raise ValueError(f'{name}={value!r} must be a positive integer; set --config.{name}')
  for name in _NON_NEGATIVE_INTEGER:
    value = _get(config, name)
    if not _is_integer(value) or value < 0:
      raise ValueError(f'{name}={value!r} must be an integer >= 0; set --config.{name}')
  for name in _POSITIVE:
    value = _get(config, name)
    if not _is_number(value) or value <= 0:
      raise ValueError(f'{name}={value!r} must be a number > 0; set --config.{name}')
  for name in _NON_NEGATIVE:
    value = _get(config, name)
    if not _is_number(value) or value < 0:
      raise ValueError(f'{name}={value!r} must be a number >= 0; set --config.{name}')
  for name, upper in [(name, '1)') for name in _BELOW_ONE] + [(name, '1]') for name in _UP_TO_ONE]:
    value = _get(config, name)
    if not _is_number(value) or value < 0 or value > 1 or (value == 1 and upper == '1)'):
      raise ValueError(f'{name}={value!r} is outside [0, {upper}; set --config.{name}')
  for name, choices in _CHOICES.items():
    value = _get(config, name)
    if value not in choices:
      raise ValueError(f'{name}={value!r} is not one of {", ".join(map(repr, choices))}; set --config.{name}')
  for name in _BOOLEAN:
    if not isinstance(_get(config, name), bool):
      raise ValueError(f'{name}={_get(config, name)!r} must be True or False; set --config.{name}')
  if not _is_number(config.peak_flops):
    raise ValueError(
      f'peak_flops={config.peak_flops!r} must be a number (0: measured, < 0: no MFU); set --config.peak_flops'
    )
  _check_model(config.model, config.data.seq_len)
  _check_eval_intervals(config)


def _check_model(model, seq_len: int) -> None:
  """What the decoder's shapes need: heads that divide the width into even head sizes (RoPE rotates halves)."""
  if model.d_model % model.n_heads:
    raise ValueError(
      f'model.n_heads={model.n_heads} does not divide model.d_model={model.d_model}; set '
      '--config.model.n_heads to a divisor of d_model (e.g. d_model / 64)'
    )
  if (model.d_model // model.n_heads) % 2:
    raise ValueError(
      f'model.d_model / n_heads = {model.d_model // model.n_heads} is odd, and rotary embeddings '
      'rotate halves of each head; choose n_heads so that d_model / n_heads is even'
    )
  # A chunk as long as the sequence or longer is the whole sequence at once (Trainer.token_losses).
  if 0 < model.loss_chunk_length < seq_len and seq_len % model.loss_chunk_length:
    raise ValueError(
      f'model.loss_chunk_length={model.loss_chunk_length} does not divide data.seq_len={seq_len}; '
      'set --config.model.loss_chunk_length to a divisor of seq_len (0: the whole sequence)'
    )


def _check_eval_intervals(config) -> None:
  for item in config.eval_intervals:
    if (
      not isinstance(item, (list, tuple))
      or len(item) != 2
      or not isinstance(item[0], str)
      or not _is_integer(item[1])
      or item[1] < 1
    ):
      raise ValueError(
        f'eval_intervals={config.eval_intervals!r}: each item must be (eval set name, steps >= 1), '
        "e.g. (('general_test', 5000),)"
      )


def _check_finetune(config) -> None:
  """A non-empty grid of (lr > 0, warmup >= 0) pairs, and from_steps within the pretraining run."""
  grid = config.finetune.grid
  if (
    not isinstance(grid, (list, tuple))
    or not grid
    or any(
      not isinstance(point, (list, tuple))
      or len(point) != 2
      or not _is_number(point[0])
      or point[0] <= 0
      or not _is_integer(point[1])
      or point[1] < 0
      for point in grid
    )
  ):
    raise ValueError(
      f'finetune.grid={grid!r} must be a non-empty tuple of (lr > 0, warmup steps >= 0) pairs; set '
      '--config.finetune.grid, e.g. "((1e-5, 50), (4e-5, 100))"'
    )
  from_steps = config.finetune.from_steps
  if any(not _is_integer(step) for step in from_steps):
    raise ValueError(
      f'finetune.from_steps={from_steps!r} must be pretraining steps (integers); set --config.finetune.from_steps'
    )


def check_folders(config, workdir: str, checkpoints_here: bool = True) -> None:
  """The workdir and the data cache can be made and written, with room for a checkpoint (unless checkpoints_here
  is False: a bucket's mirror); touches neither."""
  from spt_jax.data import sources as sources_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.model import flops  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  probe = _check_writable(workdir, 'workdir', 'pass another --workdir')
  _check_writable(
    str(sources_lib.cache_root(config.data.cache_dir)),
    'data cache',
    'set --config.data.cache_dir (or $SPT_JAX_CACHE) to a writable folder',
  )
  if config.compilation_cache:
    _check_writable(
      compile_cache.folder(config.compilation_cache, config.data.cache_dir),
      'compilation cache',
      "set --config.compilation_cache to a writable folder, or to '' to compile without it",
    )
  checkpoint_bytes = 12 * flops.count_params(config.model)[0]  # float32 parameters and AdamW's two moments.
  free = shutil.disk_usage(probe).free
  if checkpoints_here and free < checkpoint_bytes:
    raise ValueError(
      f'the disk holding the workdir {os.path.abspath(workdir)} has {free / 1e9:.2f} GB free, less '
      f'than one checkpoint of this model ({checkpoint_bytes / 1e9:.2f} GB); free space there or '
      'pass another --workdir'
    )


def _check_writable(path: str, what: str, fix: str) -> str:
  """The folder at path exists or can be made, and can be written; returns its nearest existing folder."""
  path = os.path.abspath(os.path.expanduser(path))
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = 'is a file' if existing == path else f'cannot be made: {existing} is a file'
    raise ValueError(f'the {what} {path} {where}, not a folder; {fix}')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f'the {what} {path} cannot be written ({existing} is read-only for this user); {fix}')
  return existing


def _check_sources(config) -> None:
  """Every source spec parses and its files exist (nothing is read; built-in corpora are not fetched)."""
  from spt_jax.data import remote  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.data import sources as sources_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  extra = dict(config.extra_eval)
  clash = sorted(set(extra) & {'domain_test', 'domain_train', 'domain_valid', 'general_test'})
  if clash:
    raise ValueError(f'extra_eval names {clash} clash with the built-in eval sets; rename them')
  specs = {'domain': config.data.domain, 'general': config.data.general}
  specs.update({f'extra:{name}': spec for name, spec in sorted(extra.items())})
  for name, spec in specs.items():
    source = sources_lib.parse(spec, name, config.data.cache_dir)
    row_bytes = (config.data.seq_len + 1) * np.dtype(source.options.get('dtype', 'uint8')).itemsize
    remote_rows = source.is_tokens and any(bucket.is_url(p) for p in source.paths)
    if remote_rows and config.data.remote_cache_bytes < row_bytes:
      raise ValueError(
        f'data.remote_cache_bytes={config.data.remote_cache_bytes} is smaller than one row of the remote {name} '
        f'files ({config.data.seq_len + 1} tokens: {row_bytes} bytes); set --config.data.remote_cache_bytes to at '
        f'least {row_bytes}'
      )
    if remote_rows:  # Reachable before anything is compiled or downloaded (a HEAD of the first file).
      remote.remote_size(next(p for p in source.paths if bucket.is_url(p)), f'source {name!r}')


def check_vocab(config, data=None) -> None:
  """The model's vocab_size against the tokenizer's, wherever the tokenizer is known without preparing data.

  With data (prepared, or handed in by a caller), the loop calls this again before anything is compiled: then
  only more tokens than the model has is an error (ids past the embedding train into NaN); fewer is allowed, as
  a BPE trained on little text may come out a few tokens short.
  """
  model = config.model
  if data is not None:
    tokenizer = getattr(data, 'tokenizer', None)
    size = tokenizer.get_vocab_size() if tokenizer is not None else getattr(data, 'vocab_size', None)
    if size is not None and size > model.vocab_size:
      raise ValueError(
        f"model vocab_size {model.vocab_size} is smaller than the prepared data's tokenizer "
        f'({size} tokens); set --config.model.vocab_size={size}'
      )
    return
  name = config.data.tokenizer
  if name == 'bpe':
    size = config.data.tokenizer_vocab_size
    if size < 258:
      raise ValueError(
        f'data.tokenizer_vocab_size={size} is too small for a byte-level BPE (256 bytes + EOS); '
        'set --config.data.tokenizer_vocab_size to at least 258'
      )
    if size != model.vocab_size:
      raise ValueError(
        f'model vocab_size {model.vocab_size} does not match data.tokenizer_vocab_size {size} '
        f'(the BPE to train); set --config.model.vocab_size={size} or '
        f'--config.data.tokenizer_vocab_size={model.vocab_size}'
      )
    return
  if name == 'olmo':  # Known without fetching it.
    if model.vocab_size != OLMO_VOCAB_SIZE:
      raise ValueError(
        f"model vocab_size {model.vocab_size} does not match the OLMo tokenizer's "
        f'{OLMO_VOCAB_SIZE}; set --config.model.vocab_size={OLMO_VOCAB_SIZE} or another '
        '--config.data.tokenizer'
      )
    return
  path = os.path.expanduser(str(name))
  if not os.path.isfile(path):
    raise ValueError(
      f"tokenizer file {path!r} does not exist; set --config.data.tokenizer to a tokenizers JSON, 'olmo' or 'bpe'"
    )
  size = _load_tokenizer(path, os.path.getmtime(path)).get_vocab_size()
  if model.vocab_size != size:
    raise ValueError(
      f"model vocab_size {model.vocab_size} does not match the tokenizer's {size}; set --config.model.vocab_size={size}"
    )


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, mtime: float):
  del mtime  # Part of the cache key: a rewritten file is read again.
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return tokenizer_lib._from_file(path)
