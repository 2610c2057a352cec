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


def _with_run_axis(named: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
  """The sharding of a stack of runs of arrays sharded as `named`: the leading run axis is whole on every device."""
  return jax.sharding.NamedSharding(named.mesh, jax.sharding.PartitionSpec(None, *named.spec))


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def _stack(*trees):
  """One tree whose leaves stack the trees' leaves along a new leading run axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _take(stacked, index):
  """The leaves of a stack of runs at `index` along the run axis (a scalar index drops the axis)."""
  return jax.tree.map(lambda leaf: leaf[index], stacked)


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
    if microbatches < 1 or model_cfg.remat_policy == model_lib.AUTO_REMAT:
      raise ValueError(
        'grad_accum_steps=0 and remat_policy=auto are chosen for the devices at the start of a run: '
        'spt_jax.main does it; elsewhere call spt_jax.hardware.aot.fit_to_devices(config, jax.devices()) first'
      )
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
    # Runs trained together (loop.run_many): the same state, batch and learning-rate table with a leading run axis.
    self.stacked_state_shardings = jax.tree.map(_with_run_axis, self.state_shardings)
    self.stacked_batch_sharding = _with_run_axis(self.batch_sharding)
    self._stacked_train_step = self._stacked_eval_step = None
    self._stack = jax.jit(_stack, out_shardings=self.stacked_state_shardings)
    self._take_one = jax.jit(_take, out_shardings=self.state_shardings)
    self._take_runs = jax.jit(_take, out_shardings=self.stacked_state_shardings)

  def stack(self, states: list[TrainState]) -> TrainState:
    """One state whose every leaf has a leading run axis, from the states of several runs."""
    return self._stack(*states)

  def unstack(self, stacked: TrainState, run: int) -> TrainState:
    """Run `run`'s state out of a stacked one (a copy: the stack may be donated to the next step)."""
    return self._take_one(stacked, jnp.asarray(run, jnp.int32))

  def select(self, stacked: TrainState, runs: list[int]) -> TrainState:
    """The stack of only the runs `runs` (runs that stopped are dropped, so that they stop costing steps)."""
    return self._take_runs(stacked, jnp.asarray(runs, jnp.int32))

  def stacked_train_step(self, stacked: TrainState, batches_RxBxLp1, lr_tables_RxS, active_R):
    """One step of every run of a stack (jax.vmap of the train step), each with its own batch and learning-rate
    table; a run whose `active` is False keeps its state (it stopped; its slot is computed and discarded)."""
    if self.optimizer_for is None:
      raise ValueError('runs train together only with a learning-rate table (Trainer(optimizer=a function))')
    if self._stacked_train_step is None:
      replicated = self.replicated
      self._stacked_train_step = jax.jit(
        jax.vmap(self._masked_train_step),
        in_shardings=(self.stacked_state_shardings, self.stacked_batch_sharding, replicated, replicated),
        out_shardings=(self.stacked_state_shardings, replicated),
        donate_argnums=0,
      )
    return self._stacked_train_step(stacked, batches_RxBxLp1, lr_tables_RxS, active_R)

  def stacked_eval_step(self, stacked_params, batches_RxBxLp1):
    """The eval step of every run of a stack (jax.vmap), each on its own batch."""
    if self._stacked_eval_step is None:
      self._stacked_eval_step = jax.jit(
        jax.vmap(self._eval_step),
        in_shardings=(self.stacked_state_shardings.params, self.stacked_batch_sharding),
        out_shardings=self.replicated,
      )
    return self._stacked_eval_step(stacked_params, batches_RxBxLp1)

  def _masked_train_step(self, state: TrainState, batch_BxLp1, lr_table_S, active):
    updated, metrics = self._train_step_with_table(state, batch_BxLp1, lr_table_S)
    return jax.tree.map(lambda new, old: jnp.where(active, new, old), updated, state), metrics

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
    chunk_length = self.model_cfg.loss_chunk_length
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
