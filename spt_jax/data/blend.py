"""A JSON-lines document set blended from several sources by share of bytes (e.g. a general set with a chosen
share of a second language), so that a run reads the blend through `jsonl:PATH`.

  blend.write({'builtin:spanish': 0.1, 'builtin:brown,austen': 0.9}, 4e6, 'general_10pct.jsonl')
"""

import json
import os
import random

from spt_jax.data import sources
from spt_jax.storage import files

TOLERANCE = 0.01  # Each source's bytes land within 1% of its share's budget (documents are whole).


def write(shares: dict, megabytes: float, path: str, cache_dir: str = '', seed: int = 0) -> dict:
  """Writes about `megabytes` MB of whole documents to path, `share` of the bytes from each source spec, and
  returns the bytes taken from each (also in path + '.json'; an existing blend is kept and its counts read).

  Each source's documents are taken in a seeded order, skipping any that would overshoot its budget, until it is
  met within TOLERANCE; the blend is shuffled. A source too small for its share is a one-line error.
  """
  if os.path.exists(path) and os.path.exists(path + '.json'):
    with open(path + '.json') as f:
      return json.load(f)
  if abs(sum(shares.values()) - 1) > 1e-9 or any(s < 0 for s in shares.values()):
    raise ValueError(f'blend shares {shares} must be non-negative and sum to 1')
  target, chosen, taken = int(megabytes * 1e6), [], {}
  for spec, share in shares.items():
    budget, total = int(share * target), 0
    documents = list(sources.parse(spec, 'blend', cache_dir).documents()) if budget else []
    random.Random(seed).shuffle(documents)
    for document in documents:
      if total >= budget * (1 - TOLERANCE):
        break
      size = len(document.encode('utf-8'))
      if total + size <= budget * (1 + TOLERANCE):
        chosen.append(document)
        total += size
    if total < budget * (1 - TOLERANCE):
      raise ValueError(
        f'{spec} gives {total / 1e6:.3f} MB, short of the {budget / 1e6:.3f} MB its share {share:g} '
        f'of {megabytes:g} MB needs; lower the size or the share'
      )
    taken[spec] = total
  random.Random(seed + 1).shuffle(chosen)
  files.write_text(path, ''.join(json.dumps({'text': document}, ensure_ascii=False) + '\n' for document in chosen))
  files.write_json(path + '.json', taken)  # Atomic: a blend without its counts is written again.
  return taken
