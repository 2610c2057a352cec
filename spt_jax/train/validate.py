"""Every check a config can pass or fail before a run writes anything: one function, one-line errors.

A rejected config must not lock the user out of the workdir, so nothing here writes; the loop and the pipeline
call `check` before they create a file, and write config.json only once the run really starts.
"""

import functools
import os

import jax

OLMO_VOCAB_SIZE = 50280  # OLMo's GPT-NeoX tokenizer (data.tokenizer='olmo'), checked in tests/test_validate.py.
_POSITIVE = ('batch_size', 'data.seq_len', 'grad_accum_steps', 'eval_sequences', 'log_every', 'keep_checkpoints')
_NON_NEGATIVE = ('steps', 'tokens', 'eval_every', 'checkpoint_every', 'patience', 'eval_batch_size',
                 'data.domain_max_tokens', 'data.general_max_tokens', 'data.test_tokens',
                 'data.domain_train_sequences', 'mcqa_max_examples')
_FINETUNE_POSITIVE = ('finetune.batch_size', 'finetune.max_steps', 'finetune.eval_every')


def _get(config, dotted: str):
  value = config
  for key in dotted.split('.'):
    value = value[key]
  return value


def check(config, *, data=None, devices: int | None = None, sources: bool = True, stage: str | None = None,
          grid_point=None, vocab: bool = True, backend: str | None = None) -> None:
  """Raises a one-line ValueError naming the problem and the fix; reads no data, writes nothing.

  data: prepared data the caller already has (its sources and tokenizer are then not checked here).
  devices: plan the mesh for this many devices (default: those present). sources: check data specs and the
  tokenizer (the dry run plans paper configs whose data paths are not set). stage, grid_point: only this
  stage (and finetuning grid point), as the loop checks; default: every stage of config.stage. vocab: check
  the tokenizer's size here (the loop checks it itself once init_from's shapes are checked). backend: the
  platform the run will use ('cpu' refuses paper-scale models).
  """
  from spt_jax.train import run_plan  # pylint: disable=g-import-not-at-top
  from spt_jax.model import sharding  # pylint: disable=g-import-not-at-top
  from spt_jax.data import mixture as mixture_lib  # pylint: disable=g-import-not-at-top
  if config.stage not in ('pretrain', 'finetune', 'pipeline'):
    raise ValueError(f'stage={config.stage!r}; use --config.stage=pretrain, finetune or pipeline')
  if config.stage == 'finetune' and not config.init_from:
    raise ValueError('stage=finetune needs --config.init_from=<pretrain workdir or checkpoint>')
  stages = (stage,) if stage else ('pretrain', 'finetune') if config.stage == 'pipeline' else (config.stage,)
  _check_numbers(config, 'finetune' in stages)
  data_config = config.data
  if not 0 <= data_config.test_fraction < 1:
    raise ValueError(f'data.test_fraction {data_config.test_fraction} is outside [0, 1); set '
                     '--config.data.test_fraction')
  if data_config.test_fraction == 0 and data_config.test_tokens <= 0:
    raise ValueError('data.test_fraction and data.test_tokens are both 0, so there is no held-out set; set one')
  mesh = sharding.mesh_shape(config.mesh, devices or jax.device_count())
  divisor = mesh[0] * mesh[1]  # data × fsdp: the axes the batch is split over.
  for name in stages:
    plan = run_plan.make(config, name, grid_point)  # Steps and schedule: one-line errors of their own.
    mixture_lib.stages_from_config(plan.config, name)
    where = 'finetune.batch_size' if name == 'finetune' else 'batch_size'
    if plan.config.batch_size % (divisor * plan.config.grad_accum_steps):
      raise ValueError(f'{where}={plan.config.batch_size} is not a multiple of the {divisor} data-parallel '
                       f'devices × grad_accum_steps={plan.config.grad_accum_steps}; change --config.{where}, '
                       '--config.grad_accum_steps or --config.mesh')
  missing = [key for key in ('general', 'domain') if not config.data[key]]
  if sources and data is None and missing:
    raise ValueError(f'config.data.{" and config.data.".join(missing)} not set: point them at your data '
                     "(e.g. --config.data.domain='files:/data/domain/*.txt'), or run the CPU-scale preset "
                     '--config=configs/<domain>.py:tiny on the built-in corpora')
  if backend == 'cpu' and config.model.d_model >= 1024:
    raise ValueError(f'model {config.model.preset} is paper scale and this host has only a CPU; run it on a '
                     'TPU/GPU host, or run the CPU-scale preset --config=configs/<domain>.py:tiny')
  if sources and data is None:
    _check_sources(config)
  if sources and vocab:
    check_vocab(config, data)


def _check_numbers(config, finetunes: bool) -> None:
  names = _POSITIVE + (_FINETUNE_POSITIVE if finetunes else ())
  for name in names:
    value = _get(config, name)
    if not isinstance(value, (int, float)) or value < 1:
      raise ValueError(f'{name}={value!r} must be a positive integer; set --config.{name}')
  for name in _NON_NEGATIVE:
    value = _get(config, name)
    if not isinstance(value, (int, float)) or value < 0:
      raise ValueError(f'{name}={value!r} must be >= 0; set --config.{name}')


def _check_sources(config) -> None:
  """Every source spec parses and its files exist (nothing is read; built-in corpora are not fetched)."""
  from spt_jax.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  extra = dict(config.get('extra_eval', {}) or {})
  clash = sorted(set(extra) & {'domain_test', 'domain_train', 'general_test'})
  if clash:
    raise ValueError(f'extra_eval names {clash} clash with the built-in eval sets; rename them')
  specs = {'domain': config.data.domain, 'general': config.data.general}
  specs.update({f'extra:{name}': spec for name, spec in sorted(extra.items())})
  for name, spec in specs.items():
    sources_lib.parse(spec, name, config.data.cache_dir)


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
      raise ValueError(f"model vocab_size {model.vocab_size} is smaller than the prepared data's tokenizer "
                       f'({size} tokens); set --config.model.vocab_size={size}')
    return
  name = config.data.tokenizer
  if name == 'bpe':
    size = config.data.tokenizer_vocab_size
    if size < 258:
      raise ValueError(f'data.tokenizer_vocab_size={size} is too small for a byte-level BPE (256 bytes + EOS); '
                       'set --config.data.tokenizer_vocab_size to at least 258')
    if size != model.vocab_size:
      raise ValueError(f'model vocab_size {model.vocab_size} does not match data.tokenizer_vocab_size {size} '
                       f'(the BPE to train); set --config.model.vocab_size={size} or '
                       f'--config.data.tokenizer_vocab_size={model.vocab_size}')
    return
  if name == 'olmo':  # Known without fetching it.
    if model.vocab_size != OLMO_VOCAB_SIZE:
      raise ValueError(f"model vocab_size {model.vocab_size} does not match the OLMo tokenizer's "
                       f'{OLMO_VOCAB_SIZE}; set --config.model.vocab_size={OLMO_VOCAB_SIZE} or another '
                       '--config.data.tokenizer')
    return
  path = os.path.expanduser(str(name))
  if not os.path.isfile(path):
    raise ValueError(f'tokenizer file {path!r} does not exist; set --config.data.tokenizer to a tokenizers '
                     "JSON, 'olmo' or 'bpe'")
  size = _load_tokenizer(path, os.path.getmtime(path)).get_vocab_size()
  if model.vocab_size != size:
    raise ValueError(f"model vocab_size {model.vocab_size} does not match the tokenizer's {size}; set "
                     f'--config.model.vocab_size={size}')


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str, mtime: float):
  del mtime  # Part of the cache key: a rewritten file is read again.
  from spt_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  return tokenizer_lib._from_file(path)  # pylint: disable=protected-access
