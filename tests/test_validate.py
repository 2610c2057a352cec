"""Every pre-run check: one line naming the problem and the fix, before anything is read or written."""

import os
import shutil

import ml_collections
import pytest

from spt_jax import cli
from spt_jax.train import config as config_lib
from spt_jax.train import validate
from tests import test_loop
from tests.test_hf import _tokenizer


def _error(config, **kwargs) -> str:
  with pytest.raises(ValueError) as error:
    validate.check(config, **kwargs)
  assert '\n' not in str(error.value)
  return str(error.value)


def _bpe_config(tmp_path, **overrides):
  (tmp_path / 'docs').mkdir(exist_ok=True)
  (tmp_path / 'docs' / 'a.txt').write_text('some text')
  config = test_loop.tiny_config(**overrides)
  config.data.general = config.data.domain = f'files:{tmp_path}/docs/*.txt'
  config.data.tokenizer, config.data.tokenizer_vocab_size = 'bpe', 512
  return config


def test_sizes_and_the_mixture(tmp_path):
  assert 'batch_size=0 must be a positive integer' in _error(test_loop.tiny_config(batch_size=0))
  assert 'finetune.batch_size=0' in _error(test_loop.tiny_config(**{'stage': 'pipeline', 'finetune.batch_size': 0}))
  assert 'data.seq_len=0' in _error(test_loop.tiny_config(**{'data.seq_len': 0}))
  assert 'the run has no steps' in _error(test_loop.tiny_config(steps=0, tokens=0))
  assert 'domain_fraction (δ) is 1.5' in _error(test_loop.tiny_config(**{'mixture.domain_fraction': 1.5}))
  assert 'sum to' in _error(test_loop.tiny_config(**{'mixture.stages': ((0, {'domain': 0.5, 'general': 0.6}),)}))
  assert 'mesh' in _error(test_loop.tiny_config(**{'mesh.data': 3, 'mesh.fsdp': 1}), devices=2)
  assert 'not a multiple of the 4 data-parallel' in _error(test_loop.tiny_config(batch_size=6), devices=4)
  validate.check(test_loop.tiny_config(), data=test_loop.tiny_data())


def test_data_paths_and_vocabulary(tmp_path):
  config = _bpe_config(tmp_path)
  validate.check(config)
  config.data.domain = f'files:{tmp_path}/misspelt/*.txt'
  assert 'no files match' in _error(config)
  config = _bpe_config(tmp_path)
  config.data.tokenizer_vocab_size = 3000
  assert 'model vocab_size 512 does not match data.tokenizer_vocab_size 3000' in _error(config)
  config.data.tokenizer = 'olmo'
  assert f'--config.model.vocab_size={validate.OLMO_VOCAB_SIZE}' in _error(config)
  config.data.tokenizer = str(tmp_path / 'missing.json')
  assert 'does not exist' in _error(config)

  _tokenizer(vocab_size=300).save(str(tmp_path / 'tokenizer.json'))
  config.data.tokenizer = str(tmp_path / 'tokenizer.json')
  assert 'does not match the tokenizer' in _error(config)
  data = test_loop.tiny_data(vocab=600)
  with pytest.raises(ValueError, match=r'smaller than the prepared data.s tokenizer \(600 tokens\)'):
    validate.check_vocab(config, data)


def test_every_key_of_the_base_config_has_a_rule():

  config = config_lib.base_config()
  leaves = {key for key in cli.flat_keys(config) if not hasattr(_value(config, key), 'items')}
  assert leaves - set(validate.rules()) == set()  # A new key needs a rule in validate.py.
  assert set(validate.rules()) - leaves <= {'extra_eval'}  # No rule for a key that no longer exists.


def _value(config, key):
  for part in key.split('.'):
    config = config[part]
  return config


@pytest.mark.parametrize(
  'overrides, expected',
  [
    ({'optimizer.lr': float('nan')}, 'optimizer.lr=nan is not a finite number; set --config.optimizer.lr'),
    ({'optimizer.grad_clip': float('inf')}, 'optimizer.grad_clip=inf is not a finite number'),
    ({'optimizer.b2': float('nan')}, 'optimizer.b2=nan is not a finite number'),
    ({'optimizer.weight_decay': float('inf')}, 'optimizer.weight_decay=inf is not a finite number'),
    ({'schedule.final_lr': float('nan')}, 'schedule.final_lr=nan is not a finite number'),
    ({'finetune.grid': ((float('nan'), 2),)}, 'finetune.grid=((nan, 2),) is not a finite number'),
    ({'model.d_model': 0}, 'model.d_model=0 must be a positive integer; set --config.model.d_model'),
    ({'model.n_layers': 0}, 'model.n_layers=0 must be a positive integer'),
    ({'model.n_heads': 3}, 'model.n_heads=3 does not divide model.d_model=64'),
    ({'model.n_heads': 64}, 'd_model / n_heads = 1 is odd'),
    ({'model.loss_chunk_length': 5}, 'model.loss_chunk_length=5 does not divide data.seq_len=16'),
    ({'optimizer.grad_clip': 0.0}, 'optimizer.grad_clip=0.0 must be a number > 0'),
    ({'optimizer.b2': 1.0}, 'optimizer.b2=1.0 is outside [0, 1)'),
    ({'schedule.stable_fraction': 1.5}, 'schedule.stable_fraction=1.5 is outside [0, 1]'),
    ({'schedule.warmup_steps': -1}, 'schedule.warmup_steps=-1 must be an integer >= 0'),
    ({'model.remat_policy': 'some'}, "model.remat_policy='some' is not one of 'none'"),
    ({'stage': 'pipeline', 'finetune.grid': ()}, 'finetune.grid=() must be a non-empty tuple of (lr > 0, warmup'),
    ({'stage': 'pipeline', 'finetune.grid': ((1e-3, -2),)}, 'finetune.grid=((0.001, -2),) must be a non-empty'),
    ({'stage': 'pipeline', 'finetune.from_steps': (12,)}, 'finetune.from_steps [12] are outside the pretraining'),
    ({'eval_intervals': (('general_test', 0),)}, 'eval_intervals='),
    ({'data.test_fraction': 1.0}, 'data.test_fraction=1.0 is outside [0, 1)'),
    ({'data.test_fraction': 0.0, 'data.test_tokens': 0}, 'both 0, so there is no held-out set'),
    ({'data.seq_len': 0}, 'data.seq_len=0 must be a positive integer'),
  ],
)
def test_every_value_is_checked(overrides, expected):
  line = _error(test_loop.tiny_config(**overrides))
  assert expected in line, line
  corrected = test_loop.tiny_config(
    **{key: _value(test_loop.tiny_config(), key) for key in overrides if key != 'stage'}
  )
  validate.check(corrected, data=test_loop.tiny_data())  # The tiny config's own value passes.


def test_a_loss_chunk_as_long_as_the_sequence_or_longer_is_the_whole_sequence():
  validate.check(test_loop.tiny_config(**{'model.loss_chunk_length': 256}), data=test_loop.tiny_data())


def test_types_that_a_config_file_may_change_are_checked():
  config = test_loop.tiny_config()
  config.model = ml_collections.ConfigDict({**config.model.to_dict(), 'scan_layers': 1})  # A new field: any type.
  assert 'model.scan_layers=1 must be True or False' in _error(config)


def test_folders_are_checked_before_they_are_touched(tmp_path, monkeypatch):
  config = test_loop.tiny_config(**{'data.cache_dir': str(tmp_path / 'cache')})
  (tmp_path / 'file').write_text('x')
  with pytest.raises(ValueError, match=rf'the workdir {tmp_path}/file is a file, not a folder; pass another'):
    validate.check_folders(config, str(tmp_path / 'file'))
  with pytest.raises(ValueError, match=rf'workdir {tmp_path}/file/run cannot be made: {tmp_path}/file is a file'):
    validate.check_folders(config, str(tmp_path / 'file' / 'run'))
  read_only = str(tmp_path / 'cache')
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode: path != read_only and real_access(path, mode))
  (tmp_path / 'cache').mkdir()
  with pytest.raises(ValueError, match=rf'data cache {read_only} cannot be written .*--config.data.cache_dir'):
    validate.check_folders(config, str(tmp_path / 'run'))
  monkeypatch.setattr(os, 'access', real_access)
  validate.check_folders(config, str(tmp_path / 'run'))
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
  with pytest.raises(ValueError, match=r'has 0.00 GB free, less than one checkpoint of this model'):
    validate.check_folders(config, str(tmp_path / 'run'))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cache', 'file']  # Nothing was made.


def test_an_extra_eval_set_cannot_take_a_built_in_sets_name():
  config = test_loop.tiny_config()
  config.extra_eval = ml_collections.ConfigDict({'domain_valid': 'builtin:english'})
  assert "extra_eval names ['domain_valid'] clash with the built-in eval sets" in _error(config)
