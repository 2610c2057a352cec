"""The decoder: causality, presets' sizes, scan vs unrolled, tying, KV cache, a golden one-step loss."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spt_jax.model import decoder as model
from spt_jax.model import flops, sharding
from spt_jax.train import config as config_lib
from spt_jax.train import step as train


def _tree_size(params) -> int:
  return sum(x.size for x in jax.tree.leaves(nn.unbox(params)))


def _tiny(**overrides):
  return dataclasses.replace(model.preset_config('cpu-160k'), **overrides)


def _params(cfg, seed=0):
  return nn.unbox(model.Decoder(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32)))['params']


def _tokens(batch=2, length=16, vocab=512, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, (batch, length)), jnp.int32)


def test_causality():
  cfg = _tiny()
  params = _params(cfg)
  tokens = _tokens()
  logits = model.Decoder(cfg).apply({'params': params}, tokens)
  for t in (0, 7, 15):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
    logits_changed = model.Decoder(cfg).apply({'params': params}, changed)
    np.testing.assert_array_equal(logits[:, :t], logits_changed[:, :t])
    assert not np.allclose(logits[:, t:], logits_changed[:, t:])


@pytest.mark.parametrize(
  'name, total, non_embedding',
  [
    ('olmo-1b', 1_176_764_416, 1_073_741_824),  # OLMo-1B: about 1.177B (1.074B non-embedding).
    ('olmo-3b', 2_250_506_240, 2_147_483_648),  # The 1B with twice the layers.
    ('olmo-600m', 568_442_880, 471_859_200),
    ('olmo-300m', 305_561_600, 241_172_480),
    ('cpu-600k', 638_976, 589_824),
    ('cpu-160k', 163_840, 131_072),
    ('cpu-40k', 36_864, 20_480),
    ('cpu-25k', 26_112, 13_824),
  ],
)
def test_preset_parameter_counts(name, total, non_embedding):
  cfg = model.preset_config(name)
  assert flops.count_params(cfg) == (total, non_embedding)  # The one count: the dry run, loop and analysis use it.
  assert _tree_size(model.abstract_params(cfg)) == total  # It is the model's own.


@pytest.mark.parametrize('name', ['olmo-600m', 'olmo-300m'])
def test_small_paper_models_halve_the_layers_and_shrink_both_widths(name):
  small, one_b = model.preset_config(name), model.preset_config('olmo-1b')  # §2.1 of the paper.
  assert small.n_layers * 2 == one_b.n_layers
  assert small.d_model < one_b.d_model and small.mlp_dim < one_b.mlp_dim
  assert small.d_model // small.n_heads == one_b.d_model // one_b.n_heads == 128


def test_vocab_padded_to_multiple_of_128():
  cfg = model.preset_config('olmo-1b')
  assert cfg.vocab_size == 50280 and model.padded_vocab_size(cfg) == 50304


def test_scan_and_unrolled_agree():
  scanned, unrolled = _tiny(scan_layers=True), _tiny(scan_layers=False)
  params = _params(scanned)
  tokens = _tokens()
  as_unrolled = model.scan_to_unrolled(params, scanned.n_layers)
  assert jax.tree.map(jnp.shape, as_unrolled) == jax.tree.map(jnp.shape, _params(unrolled))
  np.testing.assert_allclose(
    model.Decoder(scanned).apply({'params': params}, tokens),
    model.Decoder(unrolled).apply({'params': as_unrolled}, tokens),
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.parametrize('scan_unroll', [0, 2])
def test_unrolled_scan_keeps_parameters_and_values(scan_unroll):
  """scan_unroll runs several layers per loop iteration: same parameter tree (and init), same loss and grads."""
  cfg, unrolled = _tiny(n_layers=4), _tiny(n_layers=4, scan_unroll=scan_unroll)
  params, tokens = _params(cfg), _tokens()
  jax.tree.map(np.testing.assert_array_equal, params, _params(unrolled))

  def loss(c):
    return lambda p: model.Decoder(c).apply({'params': p}, tokens).mean()

  (value, grads), (unrolled_value, unrolled_grads) = (jax.value_and_grad(loss(c))(params) for c in (cfg, unrolled))
  np.testing.assert_allclose(value, unrolled_value, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, unrolled_grads)


@pytest.mark.parametrize('remat_policy', ['full', 'dots'])
def test_remat_changes_nothing(remat_policy):
  cfg, remat_cfg = _tiny(), _tiny(remat_policy=remat_policy)
  params, tokens = _params(cfg), _tokens()

  def loss(c):
    return lambda p: model.Decoder(c).apply({'params': p}, tokens).mean()

  np.testing.assert_allclose(
    jax.grad(loss(cfg))(params)['embed']['embedding'],
    jax.grad(loss(remat_cfg))(params)['embed']['embedding'],
    rtol=1e-5,
    atol=1e-7,
  )


def test_untied_head_starts_equal_to_tied():
  tied, untied = _tiny(), _tiny(tie_embeddings=False)
  params = _params(tied)
  untied_params = model.untie(params)
  assert 'lm_head' not in params and 'lm_head' in _params(untied)
  np.testing.assert_array_equal(untied_params['lm_head']['kernel'], params['embed']['embedding'].T)
  tokens = _tokens()
  np.testing.assert_allclose(
    model.Decoder(tied).apply({'params': params}, tokens),
    model.Decoder(untied).apply({'params': untied_params}, tokens),
    rtol=1e-6,
    atol=1e-6,
  )
  total, non_embedding = flops.count_params(untied)
  assert total - non_embedding == 2 * params['embed']['embedding'].size
  assert _tree_size(untied_params) == total


def test_kv_cache_decoding_equals_full_forward():
  cfg = _tiny()
  params, tokens = _params(cfg), _tokens(length=12)
  full = model.Decoder(cfg).apply({'params': params}, tokens)
  cache = model.init_cache(cfg, batch=2, max_len=16)
  logits, cache = model.Decoder(cfg).apply({'params': params}, tokens[:, :5], cache=cache, start=0)
  pieces = [logits]
  for t in range(5, 12):
    logits, cache = model.Decoder(cfg).apply({'params': params}, tokens[:, t : t + 1], cache=cache, start=t)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_bfloat16_computation_keeps_float32_params():
  cfg = _tiny(dtype='bfloat16')
  params = _params(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = model.Decoder(cfg).apply({'params': params}, _tokens())
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, model.Decoder(_tiny()).apply({'params': params}, _tokens()), atol=0.05)


def test_golden_one_step_loss():
  """One AdamW step of the tiny preset on a fixed batch.

  Regenerate (only after an intended change of the model, init or optimizer) by printing `before` and `after`
  from this test: `pytest tests/test_model.py -k golden -s` with a print added.
  """
  config = config_lib.base_config('cpu-160k')
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  schedule = optax.constant_schedule(1e-3)
  trainer = train.Trainer(config.model, mesh, train.make_optimizer(config, schedule), schedule)
  state = trainer.init_state(seed=0)
  batch = np.asarray(_tokens(batch=4, length=33, vocab=config.model.vocab_size, seed=1))
  state, metrics = trainer.train_step(state, batch)
  after = float(trainer.loss_fn(state.params, jnp.asarray(batch))[1][0])
  np.testing.assert_allclose(float(metrics['loss']), GOLDEN_BEFORE, rtol=1e-5)
  np.testing.assert_allclose(after, GOLDEN_AFTER, rtol=1e-5)


GOLDEN_BEFORE = 6.2632222
GOLDEN_AFTER = 6.0938160


def test_schedule_as_an_input_compiles_once_and_matches_a_fixed_schedule():
  """A Trainer built from an optimizer factory takes the learning rate of every step as an input: two schedules
  (a finetuning grid's learning rates and warmups) share one compiled step, each equal to its fixed-schedule run."""
  config = config_lib.base_config('cpu-160k')
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  batch = np.asarray(_tokens(batch=4, length=33, vocab=config.model.vocab_size, seed=1))
  shared = train.Trainer(config.model, mesh, functools.partial(train.make_optimizer, config))
  for peak, warmup in ((1e-3, 1), (3e-3, 2)):
    schedule = optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    fixed = train.Trainer(config.model, mesh, train.make_optimizer(config, schedule), schedule)
    table = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(4)))
    ours, theirs = shared.init_state(seed=0), fixed.init_state(seed=0)
    for _ in range(3):
      ours, ours_metrics = shared.train_step(ours, batch, table)
      theirs, their_metrics = fixed.train_step(theirs, batch)
      assert float(ours_metrics['loss']) == float(their_metrics['loss'])
      assert float(ours_metrics['lr']) == float(their_metrics['lr'])
    assert float(ours_metrics['lr']) == pytest.approx(peak)
  assert shared.train_step._cache_size() == 1


def test_scanned_program_size_does_not_grow_with_depth():
  """Under nn.scan the layer is traced once: a 32-layer model lowers to about the same program as 2 layers."""

  def program_size(n_layers, scan_layers):
    cfg = _tiny(n_layers=n_layers, scan_layers=scan_layers)
    params = jax.eval_shape(lambda: _params(cfg))
    tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    grad = jax.grad(lambda p, t: model.Decoder(cfg).apply({'params': p}, t).mean())
    return len(jax.jit(grad).lower(params, tokens).as_text())

  assert program_size(32, True) < 1.2 * program_size(2, True)
  assert program_size(8, False) > 2 * program_size(2, False)  # Unrolled layers do grow the program.
