"""The preparation benchmark: a generated source of a chosen size, prepared in a child process, timed and watched.

  python -m spt_jax.data.bench --prepare_bench=/tmp/prep --prepare_gb=2 --prepare_kind=tokens
  python -m spt_jax.data.bench --prepare_bench=/tmp/prep --prepare_gb=0.25 --prepare_kind=text [--tokenizer=F.json]

`tokens`: flat uint16 token files (OLMo's layout) as the general set, used in place. `text`: plain-text files
of random words, tokenized by a small byte-level BPE or --tokenizer (a tokenizers JSON file, e.g. OLMo's). Peak
memory is the largest sum of anonymous resident memory (RssAnon: not the pages of memory-mapped inputs, which
the kernel can drop) over the child's process tree, sampled every 20 ms. The generated files and the prepared
folder are deleted afterwards.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import types

import numpy as np

_FILE_BYTES = 512 << 20
_WORDS = (
  'the of and to in is was for on that with as by at from his her an be this which or are were had not '
  'but it have one all their been has more when who will there would lemma proof qed note chord'
).split()


def _generate_tokens(folder: pathlib.Path, size: int, vocab: int, eos: int) -> int:
  rng = np.random.default_rng(0)
  written, number = 0, 0
  while written + 2 <= size:
    tokens = rng.integers(1, vocab, min(_FILE_BYTES, size - written) // 2, dtype=np.uint16)
    tokens[rng.random(len(tokens)) < 1 / 800] = eos  # Documents of ~800 tokens.
    tokens[-1] = eos
    tokens.tofile(folder / f'part-{number:03d}-00000.npy')
    written += tokens.nbytes
    number += 1
  return written


def _generate_text(folder: pathlib.Path, size: int) -> int:
  """Documents of ~9 kB: random slices of one stream of random words (distinct, so the split sees them all)."""
  rng = np.random.default_rng(0)
  stream = ' '.join(rng.choice(_WORDS, 2_000_000).tolist())
  written, number = 0, 0
  while written < size:
    with open(folder / f'{number:04d}.txt', 'w') as f:
      for start in rng.integers(0, len(stream) - 10_000, 256).tolist():
        document = stream[start : start + 9000] + '.\n'
        f.write(document + '\f')
        written += len(document) + 1
    number += 1
  return written


def _watch(process: subprocess.Popen) -> int:
  """Peak of the summed RssAnon (bytes) of process and its descendants while it runs."""
  peak = 0
  while process.poll() is None:
    total = 0
    for pid in _tree(process.pid):
      try:
        with open(f'/proc/{pid}/status') as f:
          total += next((int(line.split()[1]) * 1024 for line in f if line.startswith('RssAnon:')), 0)
      except OSError:
        pass
    peak = max(peak, total)
    time.sleep(0.02)
  return peak


def _tree(root: int) -> list:
  children = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          parent = int(f.read().rsplit(')', 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
      except (OSError, IndexError, ValueError):
        pass
  found, todo = [], [root]
  while todo:
    pid = todo.pop()
    found.append(pid)
    todo.extend(children.get(pid, []))
  return found


def _child(spec: str) -> None:
  """Runs in the child: prepares the config described by spec (JSON) and prints the metadata's timing."""
  from spt_jax.data import prepare  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.data.data_config import DataConfig  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  # What prepare reads of a run's config: the seed, the data section and any further eval sets.
  config = types.SimpleNamespace(seed=0, data=DataConfig(**json.loads(spec)), extra_eval={})
  start = time.time()
  data = prepare.prepare(config)
  print(
    json.dumps(
      dict(seconds=time.time() - start, sequences_train={k: len(v) for k, v in data.train.items()}, path=str(data.path))
    )
  )


def run(folder: str, gigabytes: float, kind: str, num_workers: int = 0, tokenizer_file: str = '') -> dict:
  """Generates the source, prepares it in a child process and returns its figures (then deletes everything)."""
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  root = pathlib.Path(folder)
  source, cache = root / 'source', root / 'cache'
  shutil.rmtree(root, ignore_errors=True)
  source.mkdir(parents=True)
  (root / 'domain').mkdir()
  _generate_text(root / 'domain', 1 << 20)
  if tokenizer_file:  # e.g. OLMo's: python -m spt_jax.data.bench ... --tokenizer=PATH/TO/tokenizer.json
    import tokenizers  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
  else:
    tokenizer = tokenizer_lib.train_bpe({'domain': f'files:{root}/domain'}, 1024, str(cache), sample_bytes=1 << 20)
  tokenizer.save(str(root / 'tokenizer.json'))
  eos = tokenizer_lib.eos_id(tokenizer)
  size = int(gigabytes * (1 << 30))
  start = time.time()
  written = (
    _generate_tokens(source, size, tokenizer.get_vocab_size(), eos)
    if kind == 'tokens'
    else _generate_text(source, size)
  )
  generate_seconds = time.time() - start
  general = f'tokens:{source}/*.npy?dtype=uint16' if kind == 'tokens' else f'files:{source}/*.txt?separator=%0C'
  workers = num_workers or os.cpu_count() or 1
  options = dict(
    seq_len=2048,
    general=general,
    domain=f'files:{root}/domain?separator=%0C',
    domain_max_tokens=0,
    general_max_tokens=0,
    tokenizer=str(root / 'tokenizer.json'),
    tokenizer_vocab_size=0,
    test_fraction=0.0,
    test_tokens=200_000,
    domain_train_sequences=8,
    valid_tokens=0,
    cache_dir=str(cache),
    num_workers=workers,
    keep_tokenized=False,  # Each measurement tokenizes.
    remote_cache_bytes=1 << 20,
  )
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
      p for p in [str(pathlib.Path(__file__).parents[2]), os.environ.get('PYTHONPATH', '')] if p
    ),
  )
  child = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys; from spt_jax.data import prepare_bench; prepare_bench._child(sys.argv[1])',
      json.dumps(options),
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
  )
  start, cpu = time.time(), os.times()
  peak = _watch(child)
  wall, cpu_end = time.time() - start, os.times()
  out, err = child.communicate()
  if child.returncode:
    raise RuntimeError(f'the preparation failed: {err.strip().splitlines()[-1] if err.strip() else child.returncode}')
  prepared = json.loads(out.strip().splitlines()[-1])
  cpu_seconds = (cpu_end.children_user + cpu_end.children_system) - (cpu.children_user + cpu.children_system)
  shutil.rmtree(root, ignore_errors=True)
  megabytes = written / 1e6
  return dict(
    prepare_kind=kind,
    source_megabytes=round(megabytes, 1),
    generate_seconds=round(generate_seconds, 1),
    prepare_seconds=round(prepared['seconds'], 2),
    process_seconds=round(wall, 2),
    workers=workers,
    megabytes_per_second=round(megabytes / prepared['seconds'], 1),
    megabytes_per_second_per_core=round(megabytes / prepared['seconds'] / workers, 1),
    cpu_seconds=round(cpu_seconds, 1),
    peak_anonymous_megabytes=round(peak / 1e6, 1),
    # Robust to other load on the machine: what one core does per second of its own time.
    megabytes_per_cpu_second=round(megabytes / max(cpu_seconds, 1e-9), 1),
    sequences_train=prepared['sequences_train'],
  )
