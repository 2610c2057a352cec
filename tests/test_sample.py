"""Sampling: KV-cache decoding vs the full forward pass, greedy vs argmax decoding, top-p, bad prompts."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from spt_jax import sample
from spt_jax.interop import hf
from spt_jax.model import decoder as model

MAX_LEN = 32


@pytest.fixture(scope='module')
def tiny():
  cfg = model.preset_config('cpu-160k')
  init = jax.jit(lambda rng: model.Decoder(cfg).init(rng, jnp.zeros((1, 8), jnp.int32)))
  return cfg, nn.unbox(init(jax.random.PRNGKey(1)))['params']


@jax.jit
def _padded_forward(params, tokens_1xT):
  return model.Decoder(model.preset_config('cpu-160k')).apply({'params': params}, tokens_1xT)


def _forward(cfg, params, ids):
  """Uncached logits [len(ids), V], from one compiled full-context pass (causal: the padding is never seen)."""
  del cfg
  tokens = np.zeros((1, MAX_LEN), np.int32)
  tokens[0, : len(ids)] = ids
  return np.asarray(_padded_forward(params, tokens))[0, : len(ids)]


def test_kv_cache_decoding_equals_uncached_forward(tiny):
  cfg, params = tiny
  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, 20).tolist()
  full_LxV = _forward(cfg, params, ids)
  step = jax.jit(
    lambda p, tokens, cache, start: model.Decoder(cfg).apply({'params': p}, tokens, cache=cache, start=start)
  )
  cache = model.init_cache(cfg, 1, MAX_LEN)
  prefill = 7
  logits, cache = step(params, jnp.asarray([ids[:prefill]]), cache, 0)
  np.testing.assert_allclose(logits[0], full_LxV[:prefill], rtol=1e-5, atol=1e-5)
  for position in range(prefill, len(ids)):
    logits, cache = step(params, jnp.asarray([[ids[position]]]), cache, jnp.int32(position))
    np.testing.assert_allclose(logits[0, 0], full_LxV[position], rtol=1e-5, atol=1e-5)


def test_greedy_equals_argmax_of_full_forward(tiny):
  cfg, params = tiny
  prompt = [5, 17, 200, 3]
  new = 12
  expected = list(prompt)
  for _ in range(new):
    expected.append(int(np.argmax(_forward(cfg, params, expected)[-1, : cfg.vocab_size])))
  (got,) = sample.generate(params, cfg, prompt, new, max_len=MAX_LEN, temperature=0.0)
  assert got == expected[len(prompt) :]
  # Two samples of one prompt at temperature 0 are both the greedy continuation.
  twice = sample.generate(params, cfg, prompt, new, max_len=MAX_LEN, temperature=0.0, num_samples=2)
  assert twice == [got, got]


def test_generation_stops_at_context_and_eos(tiny):
  cfg, params = tiny
  prompt = list(range(1, 29))
  (got,) = sample.generate(params, cfg, prompt, 100, max_len=MAX_LEN)
  assert len(got) == MAX_LEN - len(prompt)
  (greedy,) = sample.generate(params, cfg, [1, 2], 10, max_len=MAX_LEN)
  eos = greedy[3]  # Pretend the fourth greedy token is EOS: generation must stop right after it.
  (stopped,) = sample.generate(params, cfg, [1, 2], 10, max_len=MAX_LEN, eos_id=eos)
  assert stopped == greedy[: greedy.index(eos) + 1]


def test_top_p_keeps_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(sample.filter_logits(logits, 4, jnp.float32(0.7))))
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = np.isfinite(np.asarray(sample.filter_logits(logits, 4, jnp.float32(0.01))))
  np.testing.assert_array_equal(kept, [[True, False, False, False]])
  # The padded vocabulary (ids >= vocab_size) is never sampled.
  kept = np.isfinite(np.asarray(sample.filter_logits(logits, 3, jnp.float32(1.0))))
  np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(tiny):
  cfg, params = tiny
  prompt = [7, 8, 9]
  kwargs = dict(max_len=MAX_LEN, temperature=1.0, num_samples=4)
  first = sample.generate(params, cfg, prompt, 10, seed=0, **kwargs)
  assert first == sample.generate(params, cfg, prompt, 10, seed=0, **kwargs)
  assert first != sample.generate(params, cfg, prompt, 10, seed=1, **kwargs)
  assert len({tuple(s) for s in first}) > 1
  assert all(0 <= t < cfg.vocab_size for s in first for t in s)
  greedy = sample.generate(params, cfg, prompt, 10, max_len=MAX_LEN)
  nucleus = sample.generate(params, cfg, prompt, 10, seed=3, max_len=MAX_LEN, temperature=1.0, top_p=1e-4)
  assert nucleus == greedy


@pytest.mark.parametrize(
  'prompt, match', [(list(range(MAX_LEN)), 'context is 32'), (list(range(40)), 'shorten the prompt'), ([], 'empty')]
)
def test_bad_prompt_is_a_one_line_error(tiny, prompt, match):
  cfg, params = tiny
  with pytest.raises(ValueError, match=match) as error:
    sample.generate(params, cfg, prompt, 4, max_len=MAX_LEN)
  assert '\n' not in str(error.value)


def test_bad_sampling_settings(tiny):
  cfg, params = tiny
  with pytest.raises(ValueError, match='top_p'):
    sample.generate(params, cfg, [1], 4, max_len=MAX_LEN, top_p=0.0)


def test_check_abc():
  tune = 'X:1\nT:Test\nM:4/4\nL:1/8\nK:G\nGABc dedB|dedB dedB|\n'
  ok, message = sample.check_abc(tune)
  try:
    import music21  # noqa: F401, PLC0415  availability check of an optional dependency
  except ImportError:
    assert not ok and 'music21 is not installed' in message
    return
  assert ok, message
  assert not sample.check_abc('this is not music')[0]


def test_cli_samples_and_rejects_a_long_prompt(tmp_path, tiny):
  cfg, params = tiny
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
    ['X:1\nK:G\nGABc dedB|'] * 10,
    trainer=trainers.BpeTrainer(
      vocab_size=280,
      special_tokens=['<|endoftext|>'],
      show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  directory = hf.export_hf(params, cfg, tokenizer, str(tmp_path / 'hf'), max_position_embeddings=MAX_LEN)
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), JAX_PLATFORMS='cpu')
  command = [
    sys.executable,
    '-m',
    'spt_jax.sample',
    f'--checkpoint={directory}',
    '--max_new_tokens=6',
    '--temperature=0.7',
    '--top_p=0.9',
    '--num_samples=2',
    '--check_abc',
  ]
  done = subprocess.run(
    command + ['--prompt=X:1\\nK:G\\n'], env=env, capture_output=True, text=True, timeout=900, check=False
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.count('--- sample') == 2 and done.stdout.count('--- ABC check') == 2
  done = subprocess.run(
    command + ['--prompt=' + 'GABc dedB| ' * 20], env=env, capture_output=True, text=True, timeout=900, check=False
  )
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('error: the prompt has') and 'context is 32' in last
