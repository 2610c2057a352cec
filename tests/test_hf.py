"""Hugging Face OLMo import/export: transformers gives our logits, the round trip is bit-exact, bad dirs fail."""

import dataclasses
import filecmp
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import tokenizers
from safetensors import numpy as safetensors_numpy
from tokenizers import decoders, models, pre_tokenizers, trainers

from configs import common
from spt_jax import export
from spt_jax.interop import hf
from spt_jax.model import decoder as model
from spt_jax.storage import layout
from spt_jax.train import checkpoint


def _tokenizer(vocab_size=300):
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=['<|endoftext|>'],
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tokenizer.train_from_iterator(['the cat sat on the mat and the dog ate the cat food'] * 20, trainer=trainer)
  return tokenizer


def _params(cfg, seed=0):
  init = jax.jit(lambda rng: model.Decoder(cfg).init(rng, jnp.zeros((1, 8), jnp.int32)))
  params = jax.device_get(nn.unbox(init(jax.random.PRNGKey(seed)))['params'])
  if not cfg.tie_embeddings:  # A head that differs from the embedding, as after finetuning.
    params = model.untie(params)
    params['lm_head']['kernel'] = np.asarray(params['lm_head']['kernel']) * 1.5 + 0.01
  return params


def _cfg(tied=True, **overrides):
  return dataclasses.replace(model.preset_config('cpu-160k'), tie_embeddings=tied, **overrides)


def _logits(cfg, params, tokens):
  return np.asarray(jax.jit(model.Decoder(cfg).apply)({'params': params}, jnp.asarray(tokens)))


@pytest.fixture(scope='module')
def tokenizer():
  return _tokenizer()


@pytest.mark.parametrize('tied', [True, False])
def test_transformers_loads_export_with_our_logits(tmp_path, tokenizer, tied):
  torch = pytest.importorskip('torch', reason='the export -> transformers test needs the hf extra (torch)')
  transformers = pytest.importorskip('transformers', reason='the export -> transformers test needs the hf extra')
  cfg = _cfg(tied)
  params = _params(cfg)
  out = hf.export_hf(params, cfg, tokenizer, str(tmp_path / 'hf'), max_position_embeddings=64)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert type(hf_model).__name__ == 'OlmoForCausalLM'
  assert hf_model.config.tie_word_embeddings == tied
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 24))
  with torch.no_grad():
    theirs = hf_model(torch.tensor(tokens)).logits.numpy()
  ours = _logits(cfg, params, tokens)
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
  # The tokenizer files load as a fast tokenizer that encodes like ours.
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  text = 'the dog sat on the cat'
  assert hf_tokenizer(text)['input_ids'] == tokenizer.encode(text).ids
  assert hf_tokenizer.eos_token == '<|endoftext|>'


@pytest.mark.parametrize('tied', [True, False])
def test_round_trip_is_bit_exact(tmp_path, tokenizer, tied):
  cfg = _cfg(tied)
  params = _params(cfg)
  first = hf.export_hf(params, cfg, tokenizer, str(tmp_path / 'first'), max_position_embeddings=64)
  imported, imported_cfg = hf.import_hf(first)
  assert imported_cfg.tie_embeddings == tied and imported_cfg.preset == 'cpu-160k'
  # 281 tokens would pad to 384 rows, not 512: the vocabulary is the embedding's rows.
  assert imported_cfg.vocab_size == cfg.vocab_size
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), imported, params)
  second = hf.export_hf(
    imported, imported_cfg, hf.load_tokenizer(first), str(tmp_path / 'second'), max_position_embeddings=64
  )
  names = sorted(os.listdir(first))
  assert names == sorted(os.listdir(second))
  assert set(names) >= {
    'config.json',
    'model.safetensors',
    'tokenizer.json',
    'tokenizer_config.json',
    'special_tokens_map.json',
  }
  _, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
  assert not mismatch and not errors
  # Unrolled layers import to the same model, and export to the same bytes.
  unrolled, unrolled_cfg = hf.import_hf(first, scan_layers=False)
  assert 'block_1' in unrolled and 'blocks' not in unrolled
  tokens = np.arange(20).reshape(2, 10)
  np.testing.assert_allclose(_logits(unrolled_cfg, unrolled, tokens), _logits(cfg, params, tokens), atol=1e-5)
  third = hf.export_hf(unrolled, unrolled_cfg, tokenizer, str(tmp_path / 'third'), max_position_embeddings=64)
  assert filecmp.cmp(os.path.join(first, 'model.safetensors'), os.path.join(third, 'model.safetensors'), shallow=False)


def test_model_config_of_olmo_1b():
  olmo_1b = hf.hf_config(model.preset_config('olmo-1b'))
  assert olmo_1b['vocab_size'] == 50304 and olmo_1b['tie_word_embeddings']
  # With OLMo's tokenizer (50280 tokens) beside the weights, the config is the olmo-1b preset exactly.
  cfg = hf.model_config_from_hf(olmo_1b, vocab_size=50280)
  assert cfg.preset == 'olmo-1b' and cfg.vocab_size == 50280
  assert hf.model_config_from_hf(olmo_1b).vocab_size == 50304


def test_transformers_saved_dir_imports_bit_exact(tmp_path, tokenizer):
  torch = pytest.importorskip('torch', reason='needs the hf extra (torch)')
  transformers = pytest.importorskip('transformers', reason='needs the hf extra (transformers)')
  cfg = _cfg(tied=False)
  params = _params(cfg)
  ours = hf.export_hf(params, cfg, tokenizer, str(tmp_path / 'ours'), max_position_embeddings=64)
  saved = str(tmp_path / 'saved')
  transformers.AutoModelForCausalLM.from_pretrained(ours, dtype=torch.float32).save_pretrained(saved)
  imported, _ = hf.import_hf(saved)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), imported, params)


def test_safetensors_format(tmp_path):
  tensors = {
    'b': np.arange(6, dtype=np.float32).reshape(2, 3),
    'a': np.asarray([1.5, -2.25], dtype=ml_dtypes.bfloat16),
    'c': np.zeros([0], np.float16),
  }
  path = str(tmp_path / 'x.safetensors')
  hf.write_safetensors(path, tensors, {'format': 'pt'})
  with open(path, 'rb') as f:
    header_len = int.from_bytes(f.read(8), 'little')
  assert header_len % 8 == 0
  back = hf.read_safetensors(path)
  assert set(back) == set(tensors)
  for name, array in tensors.items():
    assert back[name].dtype == array.dtype
    np.testing.assert_array_equal(back[name], array)

  plain = {'b': tensors['b'], 'c': np.ones([3, 2], np.float16)}
  reference = str(tmp_path / 'reference.safetensors')
  safetensors_numpy.save_file(plain, reference)
  for name, array in hf.read_safetensors(reference).items():
    np.testing.assert_array_equal(array, plain[name])
  hf.write_safetensors(path, plain)
  for name, array in safetensors_numpy.load_file(path).items():
    np.testing.assert_array_equal(array, plain[name])


def _edit_config(directory, **changes):
  path = os.path.join(directory, 'config.json')
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, 'w') as f:
    json.dump(config, f)


@pytest.mark.parametrize(
  'changes, match',
  [
    ({'model_type': 'llama'}, "'llama' model"),
    ({'hidden_size': 128}, 'weights do not match config.json'),
    ({'num_hidden_layers': 3}, 'missing'),
    ({'num_key_value_heads': 2}, 'grouped-query'),
    ({'vocab_size': 500}, 'multiple of 128'),
  ],
)
def test_other_architectures_are_one_line_errors(tmp_path, changes, match):
  cfg = _cfg()
  directory = hf.export_hf(_params(cfg), cfg, None, str(tmp_path / 'hf'))
  _edit_config(directory, **changes)
  with pytest.raises(ValueError, match=match) as error:
    hf.import_hf(directory)
  assert '\n' not in str(error.value)


def test_missing_weights_is_a_one_line_error(tmp_path):
  cfg = _cfg()
  directory = hf.export_hf(_params(cfg), cfg, None, str(tmp_path / 'hf'))
  os.rename(os.path.join(directory, 'model.safetensors'), os.path.join(directory, 'pytorch_model.bin'))
  with pytest.raises(ValueError, match='save_pretrained') as error:
    hf.import_hf(directory)
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='no config.json'):
    hf.import_hf(str(tmp_path))
  os.rename(os.path.join(directory, 'pytorch_model.bin'), os.path.join(directory, 'model.safetensors'))
  with open(os.path.join(directory, 'model.safetensors'), 'r+b') as f:
    f.truncate(os.path.getsize(os.path.join(directory, 'model.safetensors')) - 4)
  with pytest.raises(ValueError, match='truncated or corrupt') as error:
    hf.import_hf(directory)
  assert '\n' not in str(error.value)


def test_load_for_init_checks_the_model_shape(tmp_path):
  cfg = _cfg()
  params = _params(cfg)
  directory = hf.export_hf(params, cfg, None, str(tmp_path / 'hf'))
  abstract = nn.unbox(model.abstract_params(cfg))
  loaded = hf.load_for_init(directory, abstract)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded, params)
  untied_abstract = nn.unbox(model.abstract_params(_cfg(tied=False)))
  assert 'lm_head' not in hf.load_for_init(directory, untied_abstract)  # The trainer unties it.
  untied = hf.export_hf(_params(_cfg(tied=False)), _cfg(tied=False), None, str(tmp_path / 'untied'))
  with pytest.raises(ValueError, match='tie_embeddings=False'):
    hf.load_for_init(untied, abstract)
  with pytest.raises(ValueError, match='another shape') as error:
    hf.load_for_init(directory, nn.unbox(model.abstract_params(_cfg(d_model=128))))
  assert '\n' not in str(error.value)


def _run_workdir(tmp_path, tokenizer, cfg, params):
  """A run workdir as training leaves it: config.json and one checkpoint holding the parameters."""
  workdir = str(tmp_path / 'run')
  tokenizer_path = str(tmp_path / 'tokenizer.json')
  tokenizer.save(tokenizer_path)
  config = common.sized('test')
  config.model = dataclasses.asdict(cfg)
  config.data.tokenizer = tokenizer_path
  config.stage = 'pretrain'
  checkpoint.write_config(workdir, config)
  checkpoints = checkpoint.Checkpoints(workdir, keep=1, async_save=False)
  checkpoints.save(3, {'params': params, 'step': np.int32(3)}, {'step': 3, 'train_loss': 1.0})
  checkpoints.close()
  return workdir


def test_export_of_a_run_checkpoint(tmp_path, tokenizer):
  cfg = _cfg(tied=False)
  params = _params(cfg)
  workdir = _run_workdir(tmp_path, tokenizer, cfg, params)
  out = export.export(workdir, str(tmp_path / 'exported'))
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['max_position_embeddings'] == 32  # The run's seq_len.
  imported, imported_cfg = hf.import_hf(out)
  assert not imported_cfg.tie_embeddings
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), imported, params)
  # A step folder and an HF directory load the same way.
  for path in (os.path.join(workdir, 'checkpoints', '3'), out):
    loaded = export.load_checkpoint(path)
    assert loaded.seq_len == 32 and loaded.tokenizer.get_vocab_size() == tokenizer.get_vocab_size()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded.params, params)
  with pytest.raises(ValueError, match='no run config.json'):
    export.load_checkpoint(str(tmp_path))


def test_export_uses_the_tokenizer_saved_with_the_run(tmp_path, tokenizer):
  """A run trained elsewhere with a BPE whose cache is not on this machine still exports with its tokenizer."""
  cfg = _cfg()
  workdir = _run_workdir(tmp_path, tokenizer, cfg, _params(cfg))
  config = checkpoint.read_config(workdir)
  config['data'].update(tokenizer='bpe', cache_dir=str(tmp_path / 'no_cache_here'))
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  tokenizer.save(os.path.join(workdir, layout.TOKENIZER))
  loaded = export.load_checkpoint(workdir)
  assert loaded.tokenizer.to_str() == tokenizer.to_str()
  assert not (tmp_path / 'no_cache_here').exists()  # Nothing was rebuilt.
