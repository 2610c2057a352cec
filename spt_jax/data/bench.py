"""Data pipeline benchmark: the mixture's tokens/s, and prepare's tokenization speed.

  python -m spt_jax.data.bench --batch_size=16 --seq_len=128
  python -m spt_jax.data.bench --text='files:/data/docs/**/*.txt' --tokenizer=olmo   # prepare's MB/s per core
  python -m spt_jax.data.bench --prepare_bench=/tmp/prep --prepare_gb=2 --prepare_kind=tokens  # prepare_bench.py

The mixture is measured on synthetic packed sources (its cost does not depend on the token values), as the
training loop uses it: one process, one global batch per step, in step order. `python -m spt_jax.bench
--pipeline` puts it next to the train step's consumption.
"""

import json
import os
import time

import numpy as np
from absl import flags

from spt_jax import cli

BATCH = flags.DEFINE_integer('batch_size', 16, 'Global batch in sequences.', lower_bound=1)
SEQ_LEN = flags.DEFINE_integer('seq_len', 128, 'Tokens per sequence.', lower_bound=1)
STEPS = flags.DEFINE_integer('pipeline_steps', 500, 'Mixture steps timed.', lower_bound=1)
DELTA = flags.DEFINE_float('domain_fraction', 0.02, 'δ of the measured mixture.')
_TEXT = flags.DEFINE_string('text', '', "A source spec: also measure prepare's tokenization on it.")
_TOKENIZER = flags.DEFINE_string('tokenizer', 'bpe', "For --text: 'olmo', 'bpe' or a tokenizers JSON path.")
_VOCAB = flags.DEFINE_integer(
  'vocab_size', 32000, 'Vocabulary of the synthetic sources, and of the BPE for --text.', lower_bound=1
)
_WORKERS = flags.DEFINE_integer('num_workers', 0, 'For --text: tokenizer processes (0: one per core).', lower_bound=0)
_CACHE_DIR = flags.DEFINE_string('cache_dir', '', 'Corpora and tokenizer cache.')
_PREPARE_BENCH = flags.DEFINE_string('prepare_bench', '', 'A scratch folder: benchmark preparation only (deleted).')
_PREPARE_GB = flags.DEFINE_float('prepare_gb', 2.0, 'Size of the generated source, GiB.')
_PREPARE_KIND = flags.DEFINE_enum('prepare_kind', 'tokens', ['tokens', 'text'], 'The generated source.')
flags.register_validator(DELTA, lambda delta: 0 <= delta < 1, 'δ is a fraction in [0, 1), e.g. 0.02 for 2%')
flags.register_validator(
  _TOKENIZER,
  lambda name: name in ('olmo', 'bpe') or os.path.isfile(name),
  "use 'olmo', 'bpe' or the path of an existing tokenizers JSON file",
)
flags.register_validator(_PREPARE_GB, lambda size: size > 0, 'the generated source needs a positive size in GiB')


def synthetic_sources(seq_len: int, vocab_size: int, general_rows: int = 50_000, domain_rows: int = 500) -> dict:
  """Random packed sources shaped like prepared ones (uint16 when the vocabulary fits)."""
  dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
  rng = np.random.default_rng(0)
  return {
    name: rng.integers(0, vocab_size, (rows, seq_len + 1)).astype(dtype)
    for name, rows in (('general', general_rows), ('domain', domain_rows))
  }


def measure_pipeline(mixture, steps: int, start_step: int = 0) -> dict:
  """Tokens/s of mixture.global_batch over `steps` consecutive steps (seq_len tokens per sequence)."""
  mixture.global_batch(start_step)  # Warm caches (permutation keys, pages of the sources).
  start = time.perf_counter()
  for step in range(start_step, start_step + steps):
    batch = mixture.global_batch(step)
  seconds = time.perf_counter() - start
  tokens = steps * mixture.batch_size * mixture.seq_len
  return dict(
    pipeline_steps=steps,
    pipeline_seconds=seconds,
    pipeline_tokens_per_second=tokens / seconds,
    pipeline_step_milliseconds=1e3 * seconds / steps,
    batch_shape=list(batch.shape),
  )


def measure_prepare(spec: str, tokenizer, num_workers: int = 0) -> dict:
  """MB of text per second per worker for reading + tokenizing a source the way prepare does."""
  from spt_jax.data import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    prepare,
    sources,
  )
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  workers = num_workers or os.cpu_count() or 1
  start = time.perf_counter()
  texts = list(sources.parse(spec, 'text').documents())
  read_seconds = time.perf_counter() - start
  megabytes = sum(len(t.encode('utf-8')) for t in texts) / 1e6
  start, cpu_start = time.perf_counter(), os.times()
  tokens = sum(
    len(ids) for ids, _ in prepare.tokenize_documents(texts, tokenizer, tokenizer_lib.eos_id(tokenizer), workers)
  )
  seconds, cpu_end = time.perf_counter() - start, os.times()
  cpu_seconds = sum(cpu_end[:4]) - sum(cpu_start[:4])  # This process's threads and its finished workers.
  return dict(
    text_megabytes=megabytes,
    documents=len(texts),
    tokens=tokens,
    read_seconds=read_seconds,
    tokenize_seconds=seconds,
    workers=workers,
    megabytes_per_second=megabytes / seconds,
    megabytes_per_second_per_worker=megabytes / seconds / workers,
    cpu_seconds=cpu_seconds,
    megabytes_per_cpu_second=megabytes / cpu_seconds,
    bytes_per_token=megabytes * 1e6 / tokens,
  )


def _load_tokenizer(name: str, spec: str):
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.data.data_config import DataConfig  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  data = DataConfig(
    tokenizer=name, tokenizer_vocab_size=_VOCAB.value, general=spec, domain='', cache_dir=_CACHE_DIR.value
  )
  return tokenizer_lib.load_tokenizer(data)


def pipeline_speed(batch_size: int, seq_len: int, vocab_size: int, domain_fraction: float, steps: int) -> dict:
  """measure_pipeline of a two-source mixture at δ = domain_fraction over synthetic sources."""
  from spt_jax.data import mixture as mixture_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  stages = [(0, {'domain': domain_fraction, 'general': 1 - domain_fraction})]
  mixture = mixture_lib.Mixture(synthetic_sources(seq_len, vocab_size), stages, batch_size, seq_len, seed=0)
  return measure_pipeline(mixture, steps, start_step=10**6)


def main(argv):
  del argv
  if _PREPARE_BENCH.value:
    from spt_jax.data import prepare_bench  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    result = prepare_bench.run(
      _PREPARE_BENCH.value,
      _PREPARE_GB.value,
      _PREPARE_KIND.value,
      _WORKERS.value,
      _TOKENIZER.value if os.path.isfile(_TOKENIZER.value) else '',
    )
    print(
      f'prepare {result["prepare_kind"]}: {result["source_megabytes"]:.0f} MB in {result["prepare_seconds"]:.1f} s '
      f'on {result["workers"]} cores: {result["megabytes_per_second_per_core"]:.1f} MB/s per core '
      f'({result["megabytes_per_cpu_second"]:.1f} MB per CPU second), peak '
      f'{result["peak_anonymous_megabytes"]:.0f} MB anonymous memory'
    )
    print(json.dumps(result))
    return
  result = dict(batch_size=BATCH.value, seq_len=SEQ_LEN.value, domain_fraction=DELTA.value)
  result.update(pipeline_speed(BATCH.value, SEQ_LEN.value, _VOCAB.value, DELTA.value, STEPS.value))
  print(
    f'mixture pipeline  batch {BATCH.value} × {SEQ_LEN.value}: '
    f'{result["pipeline_step_milliseconds"]:.3f} ms/step, '
    f'{result["pipeline_tokens_per_second"]:,.0f} tokens/s'
  )
  if _TEXT.value:
    tokenizer = _load_tokenizer(_TOKENIZER.value, _TEXT.value)
    result.update(measure_prepare(_TEXT.value, tokenizer, _WORKERS.value))
    print(
      f'prepare           {result["text_megabytes"]:.1f} MB in {result["tokenize_seconds"]:.1f} s on '
      f'{result["workers"]} workers: {result["megabytes_per_second_per_worker"]:.2f} MB/s per worker, '
      f'{result["megabytes_per_cpu_second"]:.2f} MB per CPU second '
      f'({result["bytes_per_token"]:.2f} bytes/token, vocab {tokenizer.get_vocab_size()})'
    )
  print(json.dumps(result))


if __name__ == '__main__':
  cli.run(main)
