"""Multiple-choice tasks of each domain (Fig. 5b): built from held-out documents at CPU scale, loaded at paper scale.

CPU scale: the tasks are made from documents of the domain's held-out split (never trained on), one example per
question, the answer at a seeded random position, written as JSON lines {question, choices, answer} that
spt_jax.evals.mcqa scores by log-likelihood (`config.mcqa_tasks=('abc_key.jsonl',)` or `evaluate_mcqa --task F`):
  abc_key, abc_metre   an ABC tune with its K: (or M:) header line removed; the true key (metre) against keys
                       (metres) of other held-out tunes, all written the same canonical way (K:G, K:Am, M:6/8)
  proof_next_line      the lines of a proof so far; the true next line against lines of other documents' proofs
                       of similar length that occur nowhere in this document (Coq: lines between Proof. and
                       Qed./Defined./Admitted.)
  smiles_real          preceding molecules of a held-out document; the true next SMILES string against
                       same-length character corruptions of it (swaps, atom and digit substitutions; most are
                       invalid molecules, a few may be valid other ones)

  docs = domain_tasks.held_out_documents('builtin:abc', prepared_dir=RUN_DATA)   # or test_fraction=0.05
  domain_tasks.write_jsonl(domain_tasks.build('abc_key', docs, n=200), 'abc_key.jsonl')

Paper scale: `load_benchmark('musictheorybench' | 'chembench' | 'math_mcqa')` reads the named benchmarks through
`datasets` (hub ids in BENCHMARKS; any local folder or data_files in the same layout) into an mcqa.Task.
"""

import json
import os
import random
import re

from spt_jax.evals import mcqa
from spt_jax.storage import layout

N_CHOICES = 4
_KEYS = ('C', 'G', 'D', 'A', 'E', 'F', 'Bb', 'Eb', 'Am', 'Em', 'Dm', 'Bm', 'Gm', 'Ador', 'Edor', 'Dmix', 'Gmix')
_METRES = ('4/4', '3/4', '6/8', '2/4', '9/8', '2/2', '12/8', 'C', 'C|', '3/2', '5/4', '6/4')
_MODES = {
  '': '',
  'maj': '',
  'major': '',
  'ion': '',
  'm': 'm',
  'min': 'm',
  'minor': 'm',
  'aeo': 'm',
  'dor': 'dor',
  'mix': 'mix',
  'lyd': 'lyd',
  'phr': 'phr',
  'loc': 'loc',
}
_PROOF_START = re.compile(r'^\s*Proof\b')
_PROOF_END = re.compile(r'^\s*(Qed|Defined|Admitted|Abort)\.')
_SMILES = re.compile(r'^[A-Za-z0-9@+\-\[\]()=#$%/\\.:*]{3,}$')
_ATOMS = 'CNOSPFcnosp'


def canonical_key(value: str) -> str | None:
  """'G major' / 'Gmaj' -> 'G', 'A minor' / 'Amin' -> 'Am', 'D dorian' -> 'Ddor'; None if not a key."""
  match = re.match(r'^\s*([A-Ga-g])([#b]?)\s*([A-Za-z]*)', value.split('%')[0])
  if not match:
    return None
  mode = match.group(3).lower()
  mode = _MODES.get(mode, _MODES.get(mode[:3]))
  return None if mode is None else match.group(1).upper() + match.group(2) + mode


def canonical_metre(value: str) -> str | None:
  value = value.split('%')[0].replace(' ', '')
  return value if re.fullmatch(r'\d+/\d+|C\|?', value) else None


def _header_field(tune: str, field: str):
  """(line index, value) of the first `field:` line of a tune's header (before the body), or None."""
  for index, line in enumerate(tune.split('\n')):
    if line.startswith(f'{field}:'):
      return index, line[len(field) + 1 :].strip()
    if line.startswith('K:'):  # K: closes the header.
      return None
  return None


def _pick_choices(rng, true: str, pool, fallback, n_choices: int):
  others = sorted({v for v in pool if v != true})
  rng.shuffle(others)
  extra = [v for v in fallback if v != true and v not in others]
  distractors = (others + extra)[: n_choices - 1]
  choices = [true] + distractors
  rng.shuffle(choices)
  return choices, choices.index(true)


def abc_field_task(
  documents, field: str = 'K', n: int = 200, seed: int = 0, n_choices: int = N_CHOICES, max_chars: int = 600
) -> list:
  """ABC tunes with their K: (or M:) line removed; the true value among those of other tunes."""
  canonical = canonical_key if field == 'K' else canonical_metre
  fallback = _KEYS if field == 'K' else _METRES
  found = []
  for tune in documents:
    hit = _header_field(tune, field)
    value = canonical(hit[1]) if hit else None
    if value is not None:
      lines = tune.split('\n')
      found.append(('\n'.join(lines[: hit[0]] + lines[hit[0] + 1 :]).strip()[:max_chars], value))
  rng = random.Random(seed)
  rng.shuffle(found)
  pool = [value for _, value in found]
  examples = []
  for text, value in found[:n]:
    choices, answer = _pick_choices(rng, value, pool, fallback, n_choices)
    examples.append({'question': text, 'choices': [f'{field}:{c}' for c in choices], 'answer': answer})
  return examples


def _proof_lines(document: str) -> list:
  """(index, line) of each non-empty line inside a proof block."""
  inside, result = False, []
  lines = document.split('\n')
  for index, line in enumerate(lines):
    if _PROOF_START.match(line):
      inside = True
    elif inside and _PROOF_END.match(line):
      inside = False
    elif inside and len(line.strip()) >= 4:
      result.append((index, line))
  return result


def proof_next_line_task(
  documents, n: int = 200, seed: int = 0, n_choices: int = N_CHOICES, context_lines: int = 12, max_chars: int = 600
) -> list:
  """The proof so far; the true next line against lines of other documents' proofs of similar length."""
  rng = random.Random(seed)
  per_document = [(d, _proof_lines(d)) for d in documents]
  per_document = [(d, lines) for d, lines in per_document if lines]
  if len(per_document) < 2:
    raise ValueError(
      'proof_next_line needs held-out documents with proofs (Proof. ... Qed.) from at least two '
      f'documents; got {len(per_document)}'
    )
  examples, order = [], list(range(len(per_document)))
  rng.shuffle(order)
  for round_ in range(n):
    k = order[round_ % len(order)]
    document, lines = per_document[k]
    index, line = rng.choice(lines)
    true = line.strip()
    context = '\n'.join(document.split('\n')[max(0, index - context_lines) : index])[-max_chars:]
    own = {text.strip() for text in document.split('\n')}  # A line of this proof could be right here too.
    pool = [
      other.strip()
      for j, (_, others) in enumerate(per_document)
      if j != k
      for _, other in others
      if 0.5 <= len(other.strip()) / len(true) <= 2.0 and other.strip() not in own
    ]
    if len(set(pool)) < n_choices - 1 or not context.strip():
      continue
    distractors = rng.sample(sorted(set(pool)), n_choices - 1)
    choices = [true] + distractors
    rng.shuffle(choices)
    examples.append({'question': context, 'choices': choices, 'answer': choices.index(true)})
  return examples


def corrupt_smiles(smiles: str, rng) -> str:
  """A same-length corruption: swap two neighbouring characters, or change one atom or ring digit."""
  for _ in range(50):
    chars = list(smiles)
    kind = rng.randrange(3)
    i = rng.randrange(len(chars))
    if kind == 0 and i + 1 < len(chars) and chars[i] != chars[i + 1]:
      chars[i], chars[i + 1] = chars[i + 1], chars[i]
    elif kind == 1 and chars[i] in _ATOMS:
      chars[i] = rng.choice([a for a in _ATOMS if a != chars[i] and a.islower() == chars[i].islower()])
    elif kind == 2 and chars[i].isdigit():
      chars[i] = rng.choice([d for d in '123456789' if d != chars[i]])
    candidate = ''.join(chars)
    if candidate != smiles:
      return candidate
  return smiles[::-1] if smiles[::-1] != smiles else smiles + 'C'


def smiles_real_task(documents, n: int = 200, seed: int = 0, n_choices: int = N_CHOICES, context: int = 3) -> list:
  """Preceding molecules of a held-out document; the true next SMILES against corruptions of it."""
  rng = random.Random(seed)
  candidates = []
  for document in documents:
    lines = [line.strip() for line in document.split('\n') if _SMILES.match(line.strip())]
    candidates += [(lines[i - context : i], lines[i]) for i in range(context, len(lines))]
  rng.shuffle(candidates)
  examples = []
  for previous, true in candidates:
    choices = [true]
    for _ in range(20 * n_choices):
      corrupted = corrupt_smiles(true, rng)
      if corrupted not in choices:
        choices.append(corrupted)
      if len(choices) == n_choices:
        break
    if len(choices) < n_choices:
      continue  # Too short or too uniform to corrupt into distinct strings.
    rng.shuffle(choices)
    examples.append({'question': '\n'.join(previous), 'choices': choices, 'answer': choices.index(true)})
    if len(examples) == n:
      break
  return examples


BUILDERS = {
  'abc_key': lambda docs, **kw: abc_field_task(docs, 'K', **kw),
  'abc_metre': lambda docs, **kw: abc_field_task(docs, 'M', **kw),
  'proof_next_line': proof_next_line_task,
  'smiles_real': smiles_real_task,
}


def build(name: str, documents, **kwargs) -> list:
  """Examples {question, choices, answer} of a named builder over held-out documents."""
  if name not in BUILDERS:
    raise ValueError(f'unknown domain task {name!r}; choose one of {", ".join(sorted(BUILDERS))}')
  examples = BUILDERS[name](list(documents), **kwargs)
  if not examples:
    raise ValueError(f'{name}: the documents gave no examples (is this the right domain?)')
  return examples


def write_jsonl(examples, path: str) -> str:
  """Writes examples as JSON lines that spt_jax.evals.mcqa.load_jsonl reads; returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    for example in examples:
      f.write(json.dumps(example, ensure_ascii=False) + '\n')
  os.replace(path + '.tmp', path)
  return path


def held_out_documents(
  spec: str, prepared_dir: str = '', test_fraction: float = 0.0, source: str = 'domain', cache_dir: str = ''
) -> list:
  """The documents of a source spec that a run held out: those listed in its prepared folder's
  test_documents_<source>.json (exact), or those whose hash split position is below test_fraction."""
  from spt_jax.data import sources  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  documents = list(sources.parse(spec, source, cache_dir).documents())
  if prepared_dir:
    path = os.path.join(prepared_dir, layout.test_documents(source))
    if not os.path.exists(path):
      raise ValueError(f'{path} does not exist; pass the prepared data folder of the run (it lists held-out hashes)')
    with open(path) as f:
      held = set(json.load(f))
    return [d for d in documents if f'{sources.content_hash(d):016x}' in held]
  if not 0 < test_fraction < 1:
    raise ValueError("give prepared_dir (exact) or a test_fraction in (0, 1) equal to the run's data.test_fraction")
  return [d for d in documents if sources.split_unit(sources.content_hash(d)) < test_fraction]


# Paper-scale benchmarks: hub id, default config, split, and the row -> (question, choices, answer) reader.
def _music_theory(row):
  options = row['options']
  letters = sorted(options)
  return row['stem'], [options[k] for k in letters], letters.index(row['answer'].strip())


def _chembench(row):
  example = row['examples'][0]
  scores = example['target_scores']
  scores = json.loads(scores) if isinstance(scores, str) else scores
  correct = [i for i, score in enumerate(scores.values()) if float(score) == 1.0]
  if row.get('metrics') not in (None, ['multiple_choice_grade']) or len(correct) != 1:
    return None  # Numeric questions and multi-answer ones are not 4-way multiple choice.
  return example['input'], list(scores), correct[0]


def _math_mcqa(row):
  return row['problem'], list(row['choices']), int(row['answer'])


BENCHMARKS = {
  'musictheorybench': ('m-a-p/MusicTheoryBench', None, 'test', _music_theory),
  'chembench': ('jablonkagroup/ChemBench', 'general_chemistry', 'train', _chembench),
  'math_mcqa': ('stellaathena/math_mcqa', None, 'test', _math_mcqa),
}


def load_benchmark(
  name: str, path: str = '', subset: str | None = '', split: str = '', data_files=None, max_examples: int = 0
) -> mcqa.Task:
  """A named paper-scale benchmark through `datasets.load_dataset` (hub id, or a local folder / format with
  data_files in the same layout) as an mcqa.Task; rows that are not single-answer multiple choice are skipped."""
  if name not in BENCHMARKS:
    raise ValueError(f'unknown benchmark {name!r}; choose one of {", ".join(sorted(BENCHMARKS))}')
  import datasets  # noqa: PLC0415  heavy; only the sources that need it import it

  hub, default_subset, default_split, reader = BENCHMARKS[name]
  subset = default_subset if subset == '' else subset
  rows = datasets.load_dataset(path or hub, subset, split=split or default_split, data_files=data_files)
  examples = []
  for row in rows:
    read = reader(row)
    if read is not None:
      examples.append(mcqa.make_example(*read))
    if max_examples and len(examples) >= max_examples:
      break
  if not examples:
    raise ValueError(f'{name}: no multiple-choice rows in {path or hub} ({subset}, {split or default_split})')
  return mcqa.Task(name, tuple(examples))
