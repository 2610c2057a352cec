"""Splash attention (Pallas, interpret mode on CPU) and the chunked loss equal their plain XLA counterparts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spt_jax.model import attention, sharding
from spt_jax.model import decoder as model
from spt_jax.train import config as config_lib
from spt_jax.train import step as train


def _qkv(batch=1, length=128, heads=2, head_dim=32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return [jax.random.normal(k, (batch, length, heads, head_dim), jnp.float32) for k in keys]


def test_splash_attention_matches_xla_in_value_and_gradient():
  q, k, v = _qkv()
  weights = jnp.cos(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)  # A loss that weighs every output.

  def loss(implementation):
    return lambda q, k, v: (attention.causal_attention(q, k, v, implementation) * weights).sum()

  splash, splash_grads = jax.value_and_grad(loss('splash'), argnums=(0, 1, 2))(q, k, v)
  xla, xla_grads = jax.value_and_grad(loss('xla'), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(splash, xla, rtol=1e-5, atol=1e-4)
  for ours, reference in zip(splash_grads, xla_grads, strict=True):
    assert float(jnp.abs(reference).max()) > 1e-3  # The gradient is not trivially zero.
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_auto_attention_picks_by_platform_and_dtype():
  assert attention.resolve('auto', None, jnp.float32) == 'xla'  # This CPU host.
  assert attention.resolve('cudnn', None, jnp.float32) == 'cudnn'
  with pytest.raises(ValueError, match='unknown attention_impl'):
    attention.resolve('flash', None, jnp.float32)


def test_splash_takes_the_xla_path_off_multiples_of_128():
  q, k, v = _qkv(length=96)
  np.testing.assert_array_equal(
    attention.causal_attention(q, k, v, 'splash'), attention.causal_attention(q, k, v, 'xla')
  )


def _trainer(**model_overrides):
  config = config_lib.base_config('cpu-160k')
  config.model.update(model_overrides)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  schedule = optax.constant_schedule(1e-3)
  return train.Trainer(config.model, mesh, train.make_optimizer(config, schedule), schedule, z_loss=1e-4)


@pytest.mark.parametrize('tie', [True, False])
def test_chunked_loss_matches_the_plain_loss_in_value_and_gradient(tie):
  plain, chunked = _trainer(tie_embeddings=tie), _trainer(tie_embeddings=tie, loss_chunk_length=8)
  params = plain.init_state(seed=0).params
  batch = jnp.asarray(np.random.RandomState(1).randint(0, 512, (4, 33)), jnp.int32)
  (value, aux), grads = jax.jit(jax.value_and_grad(plain.loss_fn, has_aux=True))(params, batch)
  (value_c, aux_c), grads_c = jax.jit(jax.value_and_grad(chunked.loss_fn, has_aux=True))(params, batch)
  np.testing.assert_allclose(value_c, value, rtol=1e-6)
  np.testing.assert_allclose(aux_c[1], aux[1], rtol=1e-5)  # z-loss
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_c, grads)
  np.testing.assert_allclose(
    chunked.eval_step(params, batch)['sequence_loss'], plain.eval_step(params, batch)['sequence_loss'], rtol=1e-6
  )


def test_chunked_loss_never_holds_all_logits():
  """The compiled gradient's temporaries shrink when the loss is chunked (the [B, L, V] logits are gone)."""

  def temp_bytes(chunk):
    trainer = _trainer(vocab_size=8192, loss_chunk_length=chunk)
    batch = jax.ShapeDtypeStruct((8, 257), jnp.int32)
    grad = jax.jit(jax.grad(lambda p, b: trainer.loss_fn(p, b)[0]))
    return grad.lower(trainer.abstract_state.params, batch).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = 8 * 256 * 8192 * 4
  assert temp_bytes(0) > logits_bytes
  assert temp_bytes(32) < temp_bytes(0) - logits_bytes // 2


def test_chunk_length_must_divide_the_sequence():
  trainer = _trainer(loss_chunk_length=5)
  with pytest.raises(ValueError, match='does not divide'):
    jax.eval_shape(trainer.loss_fn, trainer.abstract_state.params, jax.ShapeDtypeStruct((2, 17), jnp.int32))


def test_splash_in_the_model_matches_xla():
  """The tiny decoder with splash attention (interpret mode) gives the XLA path's logits."""
  cfg = model.preset_config('cpu-160k')
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 512, (1, 128)), jnp.int32)
  params = model.Decoder(cfg).init(jax.random.PRNGKey(0), tokens[:, :8])['params']
  xla = model.Decoder(cfg).apply({'params': params}, tokens)
  cfg = dataclasses.replace(cfg, attention_impl='splash')
  np.testing.assert_allclose(model.Decoder(cfg).apply({'params': params}, tokens), xla, atol=1e-4)
