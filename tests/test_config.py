"""The config read once into a frozen, typed Experiment: what it keeps, what it refuses, how a stage copies it."""

import dataclasses
import pathlib

import ml_collections
import pytest

from configs import common
from spt_jax.train import config as config_lib
from spt_jax.train import loop, pipeline, run_plan, validate
from tests import tiny

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('domain', ['proofpile', 'musicpile', 'chempile'])
def test_every_config_reads_into_an_experiment_with_the_same_values(domain):
  for size in common.SIZES:
    config = config_lib.load(str(ROOT / f'configs/{domain}.py:{size}'))
    experiment = config_lib.freeze(config)
    assert config_lib.to_dict(experiment) == config.to_dict(), size
    # Linked values (the cosine's horizon follows the run's tokens) are read as numbers of the field's type.
    assert isinstance(experiment.schedule.horizon_tokens, int) and isinstance(experiment.optimizer.lr, float)


def test_the_base_config_is_the_experiments_defaults():
  config = config_lib.base_config('cpu-2m')
  defaults = config_lib.Experiment(model=config_lib.model_lib.preset_config('cpu-2m'))
  assert config_lib.freeze(config) == defaults
  assert config.model.preset == 'cpu-2m' and config.finetune.grid == defaults.finetune.grid


def test_an_experiment_is_frozen_and_a_stage_is_a_copy():
  experiment = config_lib.freeze(tiny.tiny_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    experiment.batch_size = 4
  with pytest.raises(dataclasses.FrozenInstanceError):
    experiment.model.d_model = 8
  finetune = run_plan.stage_config(experiment, 'finetune', (2e-3, 3))
  assert (finetune.optimizer.lr, finetune.schedule.warmup_steps, finetune.model.tie_embeddings) == (2e-3, 3, False)
  assert (experiment.optimizer.lr, experiment.schedule.warmup_steps, experiment.model.tie_embeddings) == (3e-3, 2, True)
  assert hash(experiment.model) == hash(dataclasses.replace(finetune.model, tie_embeddings=True))  # Flax hashes it.


def test_replace_takes_dotted_keys_and_leaves_the_rest():
  experiment = config_lib.freeze(tiny.tiny_config())
  changed = config_lib.replace(experiment, **{'model.remat_policy': 'full', 'data.seq_len': 32, 'seed': 3})
  assert (changed.model.remat_policy, changed.data.seq_len, changed.seed) == ('full', 32, 3)
  assert changed.model.d_model == experiment.model.d_model and changed.data.domain == experiment.data.domain
  assert experiment.model.remat_policy == 'none' and experiment.seed == 0


def test_unknown_keys_and_saved_configs():
  config = tiny.tiny_config()
  config.data.unlock()
  config.data.seq_length = 32  # A typo a config file could make.
  with pytest.raises(ValueError, match=r"unknown config key 'data.seq_length'; see spt_jax/train/config.py") as error:
    config_lib.freeze(config)
  assert '\n' not in str(error.value)
  # A run's config.json from an older release: a key since dropped is ignored, one since added takes its default.
  saved = config_lib.to_dict(config_lib.freeze(tiny.tiny_config()))
  saved['model']['retired_key'] = 1
  del saved['data']['heldout_seed']
  experiment = config_lib.saved(saved)
  assert experiment.data.heldout_seed == 0 and experiment.model.d_model == 64


def test_integers_given_as_floats_take_the_fields_type():
  values = tiny.tiny_config().to_dict()
  values['tokens'] = 6.4e3  # A float expression in a config file.
  values['optimizer']['lr'] = 1  # An int where a float is meant.
  experiment = config_lib.freeze(ml_collections.ConfigDict(values))
  assert experiment.tokens == 6400 and isinstance(experiment.tokens, int)
  assert experiment.optimizer.lr == 1.0 and isinstance(experiment.optimizer.lr, float)


def test_below_the_entry_only_an_experiment_is_taken(tmp_path):
  config = tiny.tiny_config()
  for call in (
    lambda: loop.run(config, str(tmp_path / 'a'), data=tiny.tiny_data()),
    lambda: loop.build(config, str(tmp_path / 'b'), data=tiny.tiny_data()),
    lambda: pipeline.run_pipeline(config, str(tmp_path / 'c'), data=tiny.tiny_data()),
  ):
    with pytest.raises(TypeError, match=r'takes the Experiment that validate.check\(config\) returns'):
      call()
  assert not any(tmp_path.iterdir())  # Refused before anything was written.
  experiment = validate.check(config, data=tiny.tiny_data())
  assert (
    isinstance(experiment, config_lib.Experiment) and validate.check(experiment, data=tiny.tiny_data()) == experiment
  )
