"""Sampling with a KV cache: greedy, temperature and top-p; one jitted program per (model, batch, context).

The prompt is written into a fixed buffer of the context length and prefilled in one call; then a
`lax.while_loop` decodes one position at a time against the fixed-size cache. Prompt length, temperature, top-p
and the number of new tokens are traced values, so changing them never recompiles.

CLI: python -m spt_jax.sample --checkpoint C --prompt 'X:1' [--temperature 0.8 --top_p 0.95 --check_abc]
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from spt_jax import cli
from spt_jax.model import decoder as model_lib


def check_prompt(n_prompt: int, max_len: int) -> None:
  """One-line errors for a prompt that cannot be continued within the context."""
  if n_prompt < 1:
    raise ValueError('the prompt is empty; give at least one token (or keep the EOS prefix on).')
  if n_prompt >= max_len:
    raise ValueError(
      f'the prompt has {n_prompt} tokens but the context is {max_len}; shorten the prompt to at '
      f'most {max_len - 1} tokens or raise --max_len.'
    )


def filter_logits(logits_BxV: jax.Array, vocab_size: int, top_p: jax.Array) -> jax.Array:
  """Logits with the padded vocabulary and everything outside the top-p nucleus set to -inf."""
  ids = jnp.arange(logits_BxV.shape[-1])
  logits_BxV = jnp.where(ids < vocab_size, logits_BxV, -jnp.inf)
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  # Keep a token when the probability mass strictly before it is below top_p (the first token always stays).
  before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  kept_BxV = before_BxV < top_p
  threshold_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV >= threshold_Bx1, logits_BxV, -jnp.inf)


def choose(logits_BxV, rng, temperature, top_p, vocab_size: int):
  """Next tokens: argmax when temperature == 0, else a sample from the tempered top-p distribution."""
  masked_BxV = jnp.where(jnp.arange(logits_BxV.shape[-1]) < vocab_size, logits_BxV, -jnp.inf)
  greedy_B = jnp.argmax(masked_BxV, axis=-1)
  tempered_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
  sampled_B = jax.random.categorical(rng, filter_logits(tempered_BxV, vocab_size, top_p), axis=-1)
  return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@functools.lru_cache(maxsize=8)
def _generate_fn(cfg: model_lib.ModelConfig, batch: int, max_len: int):
  """The jitted generation program of one (model config, batch, context length)."""
  decoder = model_lib.Decoder(cfg)

  @jax.jit
  def generate(params, buffer_BxT, n_prompt, n_new, rng, temperature, top_p, eos):
    cache = model_lib.init_cache(cfg, batch, max_len)
    # Prefill the whole buffer: causal attention makes positions < n_prompt exact whatever lies after them,
    # and each later cache entry is rewritten by its decode step before any query attends to it.
    logits_BxTxV, cache = decoder.apply({'params': params}, buffer_BxT, cache=cache, start=0)
    last_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, n_prompt - 1, axis=1, keepdims=False)
    end = jnp.minimum(n_prompt + n_new, max_len)
    done_B = jnp.zeros([batch], bool)

    def cond(carry):
      position, _, _, _, done_B, _ = carry
      return (position < end) & ~jnp.all(done_B)

    def body(carry):
      position, buffer_BxT, cache, last_BxV, done_B, rng = carry
      rng, step_rng = jax.random.split(rng)
      token_B = choose(last_BxV, step_rng, temperature, top_p, cfg.vocab_size)
      token_B = jnp.where(done_B, eos, token_B)
      buffer_BxT = jax.lax.dynamic_update_slice_in_dim(buffer_BxT, token_B[:, None], position, axis=1)
      done_B = done_B | (token_B == eos)
      logits_Bx1xV, cache = decoder.apply({'params': params}, token_B[:, None], cache=cache, start=position)
      return position + 1, buffer_BxT, cache, logits_Bx1xV[:, 0], done_B, rng

    position, buffer_BxT, _, _, _, _ = jax.lax.while_loop(
      cond, body, (n_prompt, buffer_BxT, cache, last_BxV, done_B, rng)
    )
    return buffer_BxT, position

  return generate


def generate(
  params,
  model_cfg,
  prompt_ids,
  max_new_tokens: int,
  *,
  max_len: int,
  temperature: float = 0.0,
  top_p: float = 1.0,
  num_samples: int = 1,
  seed: int = 0,
  eos_id: int | None = None,
) -> list[list[int]]:
  """Continues one prompt (token ids) num_samples times; each continuation stops after EOS (kept) or the context.

  temperature 0: greedy. top_p < 1: nucleus sampling. Returns the new token ids of each sample.
  """
  prompt_ids = [int(t) for t in prompt_ids]
  check_prompt(len(prompt_ids), max_len)
  if not 0.0 < top_p <= 1.0 or temperature < 0:
    raise ValueError(f'temperature={temperature}, top_p={top_p}: use temperature >= 0 and 0 < top_p <= 1.')
  buffer = np.zeros((num_samples, max_len), np.int32)
  buffer[:, : len(prompt_ids)] = prompt_ids
  run = _generate_fn(model_cfg, num_samples, max_len)
  tokens, end = run(
    nn.unbox(params),
    buffer,
    jnp.int32(len(prompt_ids)),
    jnp.int32(max_new_tokens),
    jax.random.PRNGKey(seed),
    jnp.float32(temperature),
    jnp.float32(top_p),
    jnp.int32(-1 if eos_id is None else eos_id),
  )
  tokens = np.asarray(tokens)[:, len(prompt_ids) : int(end)]
  samples = []
  for row in tokens.tolist():
    if eos_id is not None and eos_id in row:
      row = row[: row.index(eos_id) + 1]
    samples.append(row)
  return samples


def check_abc(text: str) -> tuple[bool, str]:
  """(parses, message) for an ABC tune, by music21 when it is installed."""
  try:
    from music21 import converter  # noqa: PLC0415  heavy optional dependency
  except ImportError:
    return False, 'music21 is not installed (pip install music21) so the tune was not checked'
  try:
    score = converter.parse(text, format='abc')
  except Exception as error:  # music21 raises many kinds on bad ABC.
    return False, f'does not parse as ABC: {str(error).splitlines()[0] if str(error) else type(error).__name__}'
  notes = len(score.flatten().notes)
  return notes > 0, f'parses as ABC with {notes} notes'


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The CLI's flags (defined on use, so that importing this module as a library defines none)."""
  flags.DEFINE_string('checkpoint', None, 'Run workdir, checkpoint folder or Hugging Face OLMo dir.', required=True)
  flags.DEFINE_string('prompt', '', 'Text to continue (\\n is a newline).')
  flags.DEFINE_integer('max_new_tokens', 256, 'Tokens to generate at most.', lower_bound=1)
  flags.DEFINE_float('temperature', 0.0, '0: greedy.', lower_bound=0)
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1: off).', upper_bound=1)
  flags.DEFINE_integer('num_samples', 1, 'Continuations of the prompt.', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Sampling seed.', lower_bound=0)
  flags.DEFINE_integer('max_len', 0, "Context length; 0: the run's data.seq_len.", lower_bound=0)
  flags.DEFINE_bool('eos_prefix', True, 'Start the prompt after EOS, as every training document.')
  flags.DEFINE_bool('check_abc', False, 'Check that each sample parses as ABC music (needs music21).')
  cli.must_exist('checkpoint', 'point it at a run workdir, a checkpoint folder or a Hugging Face OLMo directory')
  flags.register_validator('top_p', lambda mass: mass > 0, 'the nucleus mass is in (0, 1]; 1 turns it off')


def main(argv) -> None:
  del argv
  from spt_jax import export  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  loaded = export.load_checkpoint(FLAGS.checkpoint)
  tokenizer = loaded.tokenizer
  max_len = FLAGS.max_len or loaded.seq_len
  eos = tokenizer_lib.eos_id(tokenizer)
  prompt = FLAGS.prompt.replace('\\n', '\n')
  ids = ([eos] if FLAGS.eos_prefix else []) + tokenizer.encode(prompt, add_special_tokens=False).ids
  check_prompt(len(ids), max_len)
  samples = generate(
    loaded.params,
    loaded.model_cfg,
    ids,
    FLAGS.max_new_tokens,
    max_len=max_len,
    temperature=FLAGS.temperature,
    top_p=FLAGS.top_p,
    num_samples=FLAGS.num_samples,
    seed=FLAGS.seed,
    eos_id=eos,
  )
  parsed, checked = 0, True
  for i, sample in enumerate(samples):
    text = prompt + tokenizer.decode([t for t in sample if t != eos])
    print(f'--- sample {i} ({len(sample)} tokens)\n{text}')
    if FLAGS.check_abc:
      ok, message = check_abc(text)
      parsed += ok
      checked = checked and 'not installed' not in message
      print(f'--- ABC check: {message}')
  if FLAGS.check_abc and checked:
    print(f'{parsed}/{len(samples)} samples parse as ABC')


def run() -> None:
  cli.run(main, _define_flags)


if __name__ == '__main__':
  run()
