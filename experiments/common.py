"""What every study shares: flags for the base config and workdir, running named variants, then the analysis."""

import os

from absl import flags
from absl import logging
import ml_collections

CONFIG = flags.DEFINE_string('config', 'configs/musicpile.py:tiny', 'Base config file with :preset.')
WORKDIR = flags.DEFINE_string('workdir', None, 'Folder of the study: one pipeline workdir per variant inside.')
OVERRIDES = flags.DEFINE_multi_string('set', [], 'key=value overrides of the base config, e.g. --set tokens=2e6.')
ONLY_ANALYSIS = flags.DEFINE_bool('only_analysis', False, 'Skip training; analyse the variants already run.')


def _parse(value: str):
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return {'true': True, 'false': False}.get(value.lower(), value)


def base_config() -> ml_collections.ConfigDict:
  """The --config file's config with the --set overrides applied (unknown keys are one-line errors)."""
  from spt_jax import config as config_lib
  config = config_lib.load(CONFIG.value)
  overrides = [f'--config.{item}' for item in OVERRIDES.value]
  config_lib.check_override_keys(config, overrides)
  config.update_from_flattened_dict({item.split('=', 1)[0]: _parse(item.split('=', 1)[1])
                                     for item in OVERRIDES.value})
  return config


def variant(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A copy of config with dotted-key overrides ('mixture.domain_fraction': 0.02 as mixture__domain_fraction)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.update_from_flattened_dict({key.replace('__', '.'): value for key, value in overrides.items()})
  return copy


def run_variants(variants: dict[str, ml_collections.ConfigDict]) -> dict[str, str]:
  """Runs the pipeline of each variant into WORKDIR/<name> (finished ones are skipped); returns the workdirs."""
  from spt_jax import pipeline
  if not WORKDIR.value:
    raise ValueError('--workdir is required: the folder where the study writes one run per variant')
  workdirs = {name: os.path.join(WORKDIR.value, name) for name in variants}
  if ONLY_ANALYSIS.value:
    return workdirs
  for name, config in variants.items():
    logging.info('Study %s: variant %s', WORKDIR.value, name)
    pipeline.run_pipeline(config, workdirs[name])
  return workdirs


def plan(*argv: str, name: str = '') -> None:
  """Runs `python -m spt_jax.plan ARGV`, writing into WORKDIR/analysis/<name, default the command>."""
  from spt_jax import plan as plan_lib
  out = os.path.join(WORKDIR.value, 'analysis', name or argv[0])
  code = plan_lib.main([*argv, '--out', out])
  if code:
    raise SystemExit(f'python -m spt_jax.plan {" ".join(argv)} failed (exit {code})')
  print(f'{argv[0]}: {out}/')


def pretrain_steps(config) -> int:
  from spt_jax import loop
  return loop.total_steps(loop.stage_config(config, 'pretrain'))


def earlier_steps(config, count: int) -> tuple[int, ...]:
  """`count` evenly spaced pretraining steps before the last: also finetuned from (finetune.from_steps)."""
  steps = pretrain_steps(config)
  return tuple(steps * k // (count + 1) for k in range(1, count + 1))


def delta_name(delta: float) -> str:
  return f'delta_{100 * delta:g}pct'


def floats(text: str) -> list[float]:
  return [float(x) for x in text.split(',') if x]
