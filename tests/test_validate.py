"""Every pre-run check: one line naming the problem and the fix, before anything is read or written."""

import pytest

from spt_jax.train import validate
from tests import test_loop


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
  from tests.test_hf import _tokenizer
  _tokenizer(vocab_size=300).save(str(tmp_path / 'tokenizer.json'))
  config.data.tokenizer = str(tmp_path / 'tokenizer.json')
  assert 'does not match the tokenizer' in _error(config)
  data = test_loop.tiny_data(vocab=600)
  with pytest.raises(ValueError, match=r'smaller than the prepared data.s tokenizer \(600 tokens\)'):
    validate.check_vocab(config, data)
