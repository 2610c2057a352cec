"""Every key a run reads, typed, with its paper-faithful default (Appendix B) where the paper gives one.

A config file (configs/<domain>.py) starts from `base_config`, an ml_collections ConfigDict of these defaults that it
and the command line (`--config.KEY=VALUE`) change. An entry point then reads it once, through `validate.check`,
into the frozen `Experiment` below: everything under the entry takes that, never the ConfigDict, and a stage's
differences from it are `replace`d copies (run_plan.stage_config). The model's section is decoder.ModelConfig and
the data's data_config.DataConfig, each beside the code that reads it.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from spt_jax import cli
from spt_jax.data.data_config import DataConfig
from spt_jax.model import decoder as model_lib


@dataclasses.dataclass(frozen=True)
class Mesh:
  """Mesh over (data, fsdp, tensor); one axis may be -1: "all remaining devices"."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class Mixture:
  domain_fraction: float = 0.02  # δ: fraction of pretraining tokens drawn from the domain set.
  # Overrides domain_fraction when non-empty: a tuple of (until_tokens, {source: weight}) in order; the
  # last stage's until_tokens may be 0 (to the end). SCPT: ((180e9, {'general': 1.0}), (0, {...δ...})).
  stages: tuple = ()


@dataclasses.dataclass(frozen=True)
class Optimizer:
  lr: float = 4e-4  # Peak learning rate.
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-5
  weight_decay: float = 0.1
  grad_clip: float = 1.0  # Global-norm clipping.
  z_loss: float = 0.0  # Weight of the log(Z)^2 auxiliary loss (0: off).


@dataclasses.dataclass(frozen=True)
class Schedule:
  kind: str = 'cosine'  # 'cosine' (with cut-off), 'wsd' or 'constant' (all with linear warmup).
  warmup_steps: int = 2000  # Warmup in steps...
  warmup_tokens: int = 0  # ...or in tokens (used when > 0).
  final_lr: float = 4e-5  # Cosine: LR at the end of the horizon.
  horizon_tokens: int = int(2e12)  # Cosine: the cosine spans this many tokens; the run may cut it off.
  stable_fraction: float = 0.8  # WSD: fraction of the run at peak LR after warmup...
  decay_fraction: float = 0.2  # ...and fraction spent decaying.
  decay_shape: str = 'linear'  # WSD decay: 'linear', 'cosine' or '1-sqrt'.
  decay_steps: int = 0  # WSD: > 0 decays over the last this many steps instead of the fractions.


@dataclasses.dataclass(frozen=True)
class Finetune:
  batch_size: int = 512
  weight_decay: float = 1e-7
  # (lr, warmup_steps) points run from the same pretrained parameters; the best domain_test loss is reported.
  grid: tuple = (
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
  extend_grid: int = 2
  schedule: str = 'constant'  # Appendix B: constant with warmup.
  replay_fraction: float = 0.0  # Fraction r of general data replayed during finetuning.
  untie_embeddings: bool = True  # The output head starts as a copy of the input embedding.
  eval_every: int = 50
  patience: int = 3  # Evaluations without improvement of domain_test before stopping.
  max_steps: int = 100_000
  # finetune.schedule='wsd': steps of LR decay (to schedule.final_lr) once early stopping triggers, resumed from
  # the best checkpoint with its optimizer state, in W/decay (spt_jax/train/finetune_decay.py); a run that reaches
  # max_steps decays over its last decay_steps instead. 0 with 'wsd': the schedule.*_fraction of max_steps.
  decay_steps: int = 0
  decay_from_step: int = -1  # Set by finetune_decay on the decay run: the best step it resumes from.
  # Earlier pretraining steps to finetune from as well (each grid point), e.g. for the compute multiplier and
  # the finetuning-delta law (7); their checkpoints are kept. Empty: only the final pretraining state.
  from_steps: tuple = ()


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A run's whole config, read once at its entry point (validate.check) and frozen."""

  model: model_lib.ModelConfig
  seed: int = 0  # One seed for init, data order and dropout-free training noise: same seed, same run.
  # 'pretrain' or 'finetune' runs one stage into --workdir; 'pipeline' pretrains into W/pretrain, then
  # finetunes (every grid point) into W/finetune/..., then writes W/summary.json and W/report.md.
  stage: str = 'pipeline'
  # A pretrain workdir, a checkpoint folder, or a Hugging Face OLMo directory: parameters are loaded from it
  # (never the optimizer). Empty: random initialisation. The pipeline sets it for its finetune stage.
  init_from: str = ''
  mesh: Mesh = Mesh()
  data: DataConfig = DataConfig()
  mixture: Mixture = Mixture()
  batch_size: int = 2048  # Global batch in sequences.
  # Microbatches per step: gradients of batch_size / grad_accum_steps sequences at a time are summed, so the
  # step is the same with less activation memory. 0: the run chooses the fewest that fit its accelerator's memory
  # by compiling the step first (hardware/aot.fit_to_devices; one on a CPU), as model.remat_policy='auto' does.
  grad_accum_steps: int = 1
  steps: int = 0  # Run length in steps...
  tokens: int = int(200e9)  # ...or in tokens (used when steps == 0).
  optimizer: Optimizer = Optimizer()
  schedule: Schedule = Schedule()
  eval_every: int = 1000  # Steps between evaluations (0: only at the end).
  # Eval sets with their own interval in steps instead of eval_every, e.g. (('general_test', 5000),); every set
  # is evaluated at the start and at the end. Pretraining only (finetuning evaluates every set each time).
  eval_intervals: tuple = ()
  patience: int = 0  # Early stopping: evaluations of domain_test without improvement (0: off; finetuning sets it).
  eval_sequences: int = 256  # Sequences per eval set (a fixed, seeded sample).
  eval_batch_size: int = 0  # 0: batch_size.
  # name -> source spec of any further held-out set.
  extra_eval: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
  # Multiple-choice tasks scored at every evaluation, e.g. ('mmlu_mathematics', 'arc_easy', 'tasks.jsonl'): the
  # summary records their accuracy at the best checkpoint. See spt_jax/evals/mcqa.py for the built-in tasks.
  mcqa_tasks: tuple = ()
  mcqa_max_examples: int = 200  # A fixed, seeded subset of each task.
  log_every: int = 10
  profile_from_step: int = 0  # Trace profile_steps steps from this step into W/plugins/profile (0: off)...
  profile_steps: int = 5
  profiler_port: int = 0  # ...or serve the profiler on this port, for TensorBoard to capture on demand (0: off).
  # JAX's persistent compilation cache, so that a rerun, a resumed run or the next study of the same shapes
  # does not compile again: 'auto' (<data cache>/jax_compilation), a folder, or '' (off).
  compilation_cache: str = 'auto'
  peak_flops: float = 0.0  # Per-chip peak FLOP/s for MFU; 0: a table of accelerators or a measurement; < 0: no MFU.
  checkpoint_every: int = 1000
  # Runs of the same shapes (seeds, δs, finetuning grid points) trained as one program over a leading run axis,
  # at most this many at once, each into its own folder as if alone (spt_jax/train/loop.run_many). It pays on
  # small models on accelerators, whose steps do not fill the chips; 1: one after another; 0: 8 on accelerators
  # and 1 on CPU, where stacks measured no faster (the README's Throughput section).
  runs_together: int = 1
  keep_checkpoints: int = 2  # Last N kept, plus the best by domain_test loss.
  resume_mismatched: bool = False  # Resume a workdir even if its config.json differs from this config.
  finetune: Finetune = Finetune()


def defaults(model_preset: str = 'cpu-160k') -> Experiment:
  """The defaults above with a model preset, frozen (for code that builds its config itself: bench, gpu_check)."""
  return Experiment(model=model_lib.preset_config(model_preset))


def base_config(model_preset: str = 'cpu-160k') -> ml_collections.ConfigDict:
  """The defaults above with a model preset, as the ConfigDict a config file and the command line change."""
  return ml_collections.ConfigDict(to_dict(defaults(model_preset)))


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:preset]` (big_vision style): the file's get_config(preset); one-line errors."""
  return cli.load_config(spec)


def to_dict(record) -> dict:
  """A frozen config (or any part of it) as plain nested dicts, mappings included."""
  if dataclasses.is_dataclass(record):
    return {field.name: to_dict(getattr(record, field.name)) for field in dataclasses.fields(record)}
  if isinstance(record, Mapping):
    return {key: to_dict(value) for key, value in record.items()}
  if isinstance(record, tuple):  # Named tuples (grid points) too: plain tuples, as JSON keeps them.
    return tuple(to_dict(item) for item in record)
  if isinstance(record, list):
    return [to_dict(item) for item in record]
  return record


def freeze(config, cls=Experiment, where: str = '', strict: bool = True):
  """A ConfigDict (or nested dicts) as the frozen `cls`: unknown keys are one line (dropped when not `strict`); an
  integer given as a whole float, or a float field given an integer, takes the field's type (what does not
  convert is left for validate's one-line errors)."""
  values = dict(config.items())
  fields = {field.name: field for field in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown and strict:
    raise ValueError(f'unknown config key {where + unknown[0]!r}; see spt_jax/train/config.py for every key')
  values = {name: value for name, value in values.items() if name in fields}
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in values.items():
    hint = hints[name]
    if dataclasses.is_dataclass(hint):
      kwargs[name] = freeze(value, hint, f'{where}{name}.', strict)
    elif hint is int and isinstance(value, float) and value.is_integer():
      kwargs[name] = int(value)
    elif hint is float and isinstance(value, int) and not isinstance(value, bool):
      kwargs[name] = float(value)
    elif hasattr(value, 'items'):
      kwargs[name] = types.MappingProxyType(dict(value.items()))
    elif isinstance(value, list):
      kwargs[name] = tuple(value)
    else:
      kwargs[name] = value
  return cls(**kwargs)


def saved(values: dict) -> Experiment:
  """The Experiment of a run's config.json, for tools that read a finished run (keys of older releases that no
  field holds are dropped; keys added since take their defaults)."""
  return freeze(values, strict=False)


def replace(config, **changes: Any):
  """A copy of a frozen config with `changes` by dotted key, e.g. replace(c, **{'model.tie_embeddings': False})."""
  nested: dict[str, dict] = {}
  flat = {}
  for key, value in changes.items():
    head, _, rest = key.partition('.')
    if rest:
      nested.setdefault(head, {})[rest] = value
    else:
      flat[head] = value
  for head, inner in nested.items():
    flat[head] = replace(flat.get(head, getattr(config, head)), **inner)
  return dataclasses.replace(config, **flat)


def require_experiment(config, where: str) -> None:
  """What code below an entry point takes: the Experiment that validate.check returned, never a raw config."""
  if not isinstance(config, Experiment):
    raise TypeError(
      f'{where} takes the Experiment that validate.check(config) returns, not a {type(config).__name__}; '
      'read the config through validate.check first'
    )
