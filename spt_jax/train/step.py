"""One functional train state and the jitted train and eval steps that every stage shares."""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from spt_jax.model import decoder as model_lib
from spt_jax.model import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def make_optimizer(config, schedule: optax.Schedule, weight_decay: float | None = None):
  """AdamW with global-norm clipping (Appendix B: β=(0.9, 0.95), ε=1e-5, clip 1.0)."""
  o = config.optimizer
  return optax.chain(
    optax.clip_by_global_norm(o.grad_clip),
    optax.adamw(
      schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay if weight_decay is None else weight_decay
    ),
  )


def token_losses(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy (nats) and log-partition, in float32."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return log_z_BxL - target_logit_BxL, log_z_BxL


def chunked_token_losses(
  hidden_BxLxD: jax.Array, kernel_DxV: jax.Array, targets_BxL: jax.Array, chunk_length: int, dtype
) -> tuple[jax.Array, jax.Array]:
  """token_losses of the logits hidden·kernel, computed `chunk_length` positions at a time.

  Each chunk's logits are recomputed in the backward pass (jax.checkpoint inside a scan), so at most one
  chunk's [B, chunk, V] float32 logits (and their gradient) are alive at once instead of [B, L, V].
  """
  batch, length, width = hidden_BxLxD.shape
  if length % chunk_length:
    raise ValueError(f'model.loss_chunk_length={chunk_length} does not divide the sequence length {length}')
  n = length // chunk_length
  hidden_NxBxCxD = hidden_BxLxD.reshape(batch, n, chunk_length, width).swapaxes(0, 1)
  targets_NxBxC = targets_BxL.reshape(batch, n, chunk_length).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(chunk):
    hidden_BxCxD, targets_BxC = chunk
    logits_BxCxV = jnp.dot(hidden_BxCxD.astype(dtype), kernel_DxV.astype(dtype))  # As nn.Embed.attend does.
    return token_losses(logits_BxCxV, targets_BxC)

  losses_NxBxC, log_z_NxBxC = jax.lax.map(one_chunk, (hidden_NxBxCxD, targets_NxBxC))

  def unchunk(x_NxBxC):
    return x_NxBxC.swapaxes(0, 1).reshape(batch, length)

  return unchunk(losses_NxBxC), unchunk(log_z_NxBxC)


class Trainer:
  """A model, an optimizer and a mesh, turned into sharded state and jitted, donated steps.

  optimizer: an optax GradientTransformation (its schedule fixed: `train_step(state, batch)`), or a function
  schedule -> GradientTransformation, whose schedule is then an input of the step: `train_step(state, batch,
  lr_table)` with lr_table[s] the learning rate of step s, so that one compiled step serves any learning rate and
  warmup (a finetuning grid compiles once).
  """

  def __init__(
    self,
    model_cfg,
    mesh,
    optimizer,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    z_loss: float = 0.0,
    microbatches: int = 1,
  ):
    self.model_cfg, self.mesh = model_cfg, mesh
    self.optimizer_for = optimizer if callable(optimizer) else None
    self.optimizer = optimizer(lambda step: jnp.zeros([])) if self.optimizer_for else optimizer
    self.microbatches = microbatches
    self.model = model_lib.Decoder(model_cfg, mesh=mesh)
    self.schedule = schedule or (lambda step: jnp.zeros([]))
    self.z_loss = z_loss
    boxed = jax.eval_shape(self._boxed_state, jax.random.PRNGKey(0))
    self.state_shardings = sharding.tree_shardings(boxed, mesh)
    self.param_shardings = self.state_shardings.params
    self.abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), self.state_shardings
    )
    self.batch_sharding = sharding.batch_sharding(mesh)
    replicated = self.replicated = sharding.replicated(mesh)
    self._init = jax.jit(lambda rng: nn.unbox(self._boxed_state(rng)), out_shardings=self.state_shardings)
    self._from_params = jax.jit(
      self._state_from_params, in_shardings=(self.param_shardings, replicated), out_shardings=self.state_shardings
    )
    step, inputs = (self._train_step_with_table, (replicated,)) if self.optimizer_for else (self._train_step, ())
    self.train_step = jax.jit(
      step,
      in_shardings=(self.state_shardings, self.batch_sharding, *inputs),
      out_shardings=(self.state_shardings, replicated),
      donate_argnums=0,
    )
    self.eval_step = jax.jit(
      self._eval_step, in_shardings=(self.param_shardings, self.batch_sharding), out_shardings=replicated
    )

  def _boxed_state(self, rng) -> TrainState:
    params = self.model.init(rng, jnp.zeros((1, 8), jnp.int32))['params']
    return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=self.optimizer.init(params), rng=rng)

  def _state_from_params(self, params, rng) -> TrainState:
    return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=self.optimizer.init(params), rng=rng)

  def init_state(self, seed: int) -> TrainState:
    """Freshly initialised, sharded state."""
    return self._init(jax.random.PRNGKey(seed))

  def state_from_params(self, params, seed: int) -> TrainState:
    """Step 0 and a fresh optimizer over given parameters (finetuning); unties the head if the model needs it."""
    if not self.model_cfg.tie_embeddings and 'lm_head' not in params:
      params = model_lib.untie(params)
    if self.model_cfg.tie_embeddings and 'lm_head' in params:
      raise ValueError(
        'the parameters have an untied output head but the model is tied; set --config.model.tie_embeddings=False'
      )
    return self._from_params(params, jax.random.PRNGKey(seed))

  def token_losses(self, params, batch_BxLp1) -> tuple[jax.Array, jax.Array]:
    """Per-token losses and log-partitions [B, L] of a batch of L + 1 tokens (chunked when configured)."""
    inputs_BxL, targets_BxL = batch_BxLp1[:, :-1], batch_BxLp1[:, 1:]
    chunk_length = self.model_cfg.get('loss_chunk_length', 0)
    if not chunk_length or chunk_length >= inputs_BxL.shape[1]:
      return token_losses(self.model.apply({'params': params}, inputs_BxL), targets_BxL)
    hidden_BxLxD = self.model.apply({'params': params}, inputs_BxL, return_hidden=True)
    return chunked_token_losses(
      hidden_BxLxD, model_lib.head_kernel(self.model_cfg, params), targets_BxL, chunk_length, self.model_cfg.dtype
    )

  def loss_fn(self, params, batch_BxLp1):
    losses_BxL, log_z_BxL = self.token_losses(params, batch_BxLp1)
    loss = losses_BxL.mean()
    z_loss = jnp.square(log_z_BxL).mean()
    return loss + self.z_loss * z_loss, (loss, z_loss)

  def _gradients(self, params, batch_BxLp1):
    """Gradients and losses of the batch; with microbatches, accumulated over them (same mean, less memory)."""
    grad_fn = jax.grad(self.loss_fn, has_aux=True)
    m = self.microbatches
    if m == 1:
      return grad_fn(params, batch_BxLp1)
    # Microbatch k takes every m-th row, so that each one is spread over all data-parallel devices.
    batch_MxBxLp1 = batch_BxLp1.reshape(batch_BxLp1.shape[0] // m, m, -1).swapaxes(0, 1)

    def accumulate(totals, micro_BxLp1):
      micro_BxLp1 = jax.lax.with_sharding_constraint(micro_BxLp1, self.batch_sharding)
      grads, (loss, z_loss) = grad_fn(params, micro_BxLp1)
      return jax.tree.map(jnp.add, totals, (grads, loss, z_loss)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros([]), jnp.zeros([]))
    (grads, loss, z_loss), _ = jax.lax.scan(accumulate, zeros, batch_MxBxLp1)
    return jax.tree.map(lambda g: g / m, grads), (loss / m, z_loss / m)

  def _train_step(self, state: TrainState, batch_BxLp1):
    return self._update(state, batch_BxLp1, self.optimizer, self.schedule)

  def _train_step_with_table(self, state: TrainState, batch_BxLp1, lr_table_S):
    def schedule(step):
      return lr_table_S[jnp.minimum(step, lr_table_S.shape[0] - 1)]

    return self._update(state, batch_BxLp1, self.optimizer_for(schedule), schedule)

  def _update(self, state: TrainState, batch_BxLp1, optimizer, schedule):
    grads, (loss, z_loss) = self._gradients(state.params, batch_BxLp1)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      'loss': loss,
      'z_loss': z_loss,
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(params),
      'lr': schedule(state.step),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, params, batch_BxLp1):
    """Mean loss of each sequence (nats/token), for the mean and its standard error over sequences."""
    losses_BxL, _ = self.token_losses(params, batch_BxLp1)
    return {'sequence_loss': losses_BxL.mean(axis=1)}
