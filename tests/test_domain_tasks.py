"""Domain MCQA tasks from held-out documents, and the paper-scale benchmark loaders on local files in their layout."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spt_jax.data import sources
from spt_jax.evals import domain_tasks, mcqa

KEYS = ('G', 'D', 'Ador', 'Em', 'A', 'Bb')
METRES = ('6/8', '4/4', '3/4', '2/4', '9/8')


def _tunes(n=30):
  rng = random.Random(1)
  return [
    f'X:{i}\nT:Tune {i}\nM:{METRES[i % 5]}\nL:1/8\nK:{KEYS[i % 6]}\n'
    + ' '.join(rng.choice(['abc', 'dfe', 'gag', 'BAG', 'd2e']) for _ in range(12))
    + ' |]'
    for i in range(n)
  ]


def _proofs(n=6):
  docs = []
  for d in range(n):
    lines = [
      f'Lemma lemma_{d}_{k} : forall n : nat, n + {k} = {k} + n.\nProof.\n  intros n.\n'
      f'  induction n as [| m IH{d}].\n  - simpl; reflexivity.\n  - simpl; rewrite IH{d}; auto.\nQed.'
      for k in range(3)
    ]
    docs.append('\n\n'.join(lines))
  return docs


def _check(examples, n_choices=4):
  assert examples
  for example in examples:
    assert len(example['choices']) == n_choices == len(set(example['choices']))
    assert 0 <= example['answer'] < n_choices
  assert len({example['answer'] for example in examples}) > 1  # The answer moves around.


def test_abc_key_and_metre_hide_the_header_and_offer_other_tunes_values(tmp_path):
  tunes = _tunes()
  for name, field, values in (('abc_key', 'K', KEYS), ('abc_metre', 'M', METRES)):
    examples = domain_tasks.build(name, tunes, n=20, seed=0)
    _check(examples)
    assert len(examples) == 20
    for example in examples:
      assert f'\n{field}:' not in '\n' + example['question']  # The asked field is gone...
      number = int(example['question'].split('\n')[0][2:])
      true = example['choices'][example['answer']]
      assert true == f'{field}:{(KEYS[number % 6] if field == "K" else METRES[number % 5])}'  # ...and is the answer.
      assert all(c[2:] in values for c in example['choices'])  # Distractors: values of other tunes.
    path = domain_tasks.write_jsonl(examples, str(tmp_path / f'{name}.jsonl'))
    task = mcqa.load_jsonl(path)
    assert len(task.examples) == 20 and task.examples[0].choices[0].startswith(f' {field}:')
  assert domain_tasks.build('abc_key', tunes, n=5, seed=3) == domain_tasks.build('abc_key', tunes, n=5, seed=3)


def test_canonical_keys():
  assert [domain_tasks.canonical_key(k) for k in ('G major', 'Gmaj', 'A minor', 'Amin', 'D dorian', 'F#m', 'Bb')] == [
    'G',
    'G',
    'Am',
    'Am',
    'Ddor',
    'F#m',
    'Bb',
  ]
  assert domain_tasks.canonical_key('none') is None and domain_tasks.canonical_metre('C|') == 'C|'


def test_proof_next_line_uses_lines_of_other_proofs():
  docs = _proofs()
  examples = domain_tasks.build('proof_next_line', docs, n=30, seed=0)
  _check(examples)
  for example in examples:
    true = example['choices'][example['answer']]
    document = next(d for d in docs if example['question'] in d)
    assert example['question'] + '\n' in document and true in document.split(example['question'])[1].split('\n')[1]
    for choice in example['choices']:
      if choice != true:
        assert choice not in document  # From another document's proofs.
  with pytest.raises(ValueError, match='two'):
    domain_tasks.build('proof_next_line', docs[:1])


def test_smiles_real_against_same_length_corruptions():
  molecules = [
    'CCO',
    'c1ccccc1O',
    'CC(=O)Nc1ccc(O)cc1',
    'CN1CCC[C@H]1c1cccnc1',
    'O=C(O)c1ccccc1OC(C)=O',
    'CC(C)Cc1ccc(C(C)C(=O)O)cc1',
    'COc1ccc2[nH]cc(CCN)c2c1',
    'NC(=O)c1cccnc1',
  ]
  examples = domain_tasks.build('smiles_real', ['\n'.join(molecules)] * 2, n=8, seed=0, context=2)
  _check(examples)
  for example in examples:
    true = example['choices'][example['answer']]
    assert true in molecules and example['question'].split('\n')[-1] in molecules
    assert all(len(c) == len(true) for c in example['choices'])  # No length cue.
    assert all(c not in molecules for c in example['choices'] if c != true)


def test_unknown_task_and_empty_documents_are_errors():
  with pytest.raises(ValueError, match='unknown domain task'):
    domain_tasks.build('jazz_key', [])
  with pytest.raises(ValueError, match='no examples'):
    domain_tasks.build('abc_key', ['not a tune'])


def test_held_out_documents_follow_the_runs_split(tmp_path):

  folder = tmp_path / 'docs'
  folder.mkdir()
  texts = [f'document {i} ' * 5 for i in range(40)]
  for i, text in enumerate(texts):
    (folder / f'{i:02d}.txt').write_text(text)
  spec = f'files:{folder}/*.txt'
  held = domain_tasks.held_out_documents(spec, test_fraction=0.25)
  assert held and len(held) < 40
  assert all(sources.split_unit(sources.content_hash(d)) < 0.25 for d in held)
  prepared = tmp_path / 'prepared'
  prepared.mkdir()
  (prepared / 'test_documents_domain.json').write_text(json.dumps([f'{sources.content_hash(texts[3]):016x}']))
  assert domain_tasks.held_out_documents(spec, prepared_dir=str(prepared)) == [texts[3]]


def test_benchmark_loaders_read_their_layouts(tmp_path):
  pytest.importorskip('datasets')

  music = pa.table(
    {
      'id': [1, 2],
      'instruction': ['Choose.'] * 2,
      'stem': ['Which interval is C-G?', 'X:1\nK:D\nABc|'],
      'options': [
        {'A': 'fourth', 'B': 'fifth', 'C': 'sixth', 'D': 'third'},
        {'A': 'D major', 'B': 'C major', 'C': 'G major', 'D': 'A minor'},
      ],
      'subject': ['knowledge', 'reasoning'],
      'answer': ['B', 'A'],
      'split': ['test'] * 2,
      'abc_score': ['', 'X:1'],
      'analysis': ['', ''],
    }
  )
  (tmp_path / 'music').mkdir()
  pq.write_table(music, tmp_path / 'music' / 'test-00000-of-00001.parquet')
  task = domain_tasks.load_benchmark(
    'musictheorybench',
    path='parquet',
    split='test',
    data_files={'test': str(tmp_path / 'music' / 'test-00000-of-00001.parquet')},
  )
  assert [e.answer for e in task.examples] == [1, 0] and task.examples[0].choices[1] == ' fifth'
  chem_rows = [
    {
      'name': 'q1',
      'subject': 'general_chemistry',
      'metrics': ['multiple_choice_grade'],
      'examples': [
        {'input': 'Which is a noble gas?', 'target_scores': json.dumps({'Ne': 1, 'Na': 0, 'N': 0, 'Ni': 0})}
      ],
    },
    {
      'name': 'q2',
      'subject': 'general_chemistry',
      'metrics': ['mae'],
      'examples': [{'input': 'pH of pure water?', 'target_scores': json.dumps({'7': 1})}],
    },
    {
      'name': 'q3',
      'subject': 'general_chemistry',
      'metrics': ['multiple_choice_grade'],
      'examples': [{'input': 'Pick two.', 'target_scores': json.dumps({'a': 1, 'b': 1, 'c': 0, 'd': 0})}],
    },
  ]
  (tmp_path / 'chem.jsonl').write_text('\n'.join(json.dumps(r) for r in chem_rows))
  chem = domain_tasks.load_benchmark(
    'chembench', path='json', subset=None, split='train', data_files={'train': str(tmp_path / 'chem.jsonl')}
  )
  assert len(chem.examples) == 1 and chem.examples[0].answer == 0 and chem.examples[0].choices[0] == ' Ne'
  math_rows = [
    {
      'problem': 'What is $2+3$?',
      'choices': ['4', '5', '6', '7'],
      'answer': 1,
      'answer_text': '5',
      'solution': '',
      'level': 'Level 1',
      'type': 'Prealgebra',
    }
  ]
  (tmp_path / 'math.jsonl').write_text(json.dumps(math_rows[0]))
  math = domain_tasks.load_benchmark(
    'math_mcqa', path='json', split='test', data_files={'test': str(tmp_path / 'math.jsonl')}
  )
  assert math.examples[0].answer == 1 and math.examples[0].prompt.startswith('Question: What is $2+3$?')
