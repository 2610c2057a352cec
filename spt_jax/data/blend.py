"""A JSON-lines document set blended from several sources by share of bytes (e.g. a general set with a chosen
share of a second language), so that a run reads the blend through `jsonl:PATH`.

  blend.write({'builtin:spanish': 0.1, 'builtin:brown,austen': 0.9}, 4e6, 'general_10pct.jsonl')
"""

import json
import os
import random

from spt_jax.data import sources


def write(shares: dict, megabytes: float, path: str, cache_dir: str = '', seed: int = 0) -> dict:
  """Writes about `megabytes` MB of documents to path, `share` of the bytes from each source spec (whole documents,
  each source in a seeded order, the blend shuffled); returns the bytes taken from each ({} when path exists: it
  is kept). A source shorter than its share is a one-line error."""
  if os.path.exists(path):
    return {}
  if abs(sum(shares.values()) - 1) > 1e-9 or any(s < 0 for s in shares.values()):
    raise ValueError(f'blend shares {shares} must be non-negative and sum to 1')
  target, chosen, taken = int(megabytes * 1e6), [], {}
  for spec, share in shares.items():
    budget, total = int(share * target), 0
    documents = list(sources.parse(spec, 'blend', cache_dir).documents()) if budget else []
    random.Random(seed).shuffle(documents)
    for document in documents:
      if total >= budget:
        break
      chosen.append(document)
      total += len(document.encode('utf-8'))
    if total < budget:
      raise ValueError(f'{spec} has {total / 1e6:.2f} MB, short of the {budget / 1e6:.2f} MB its share {share:g} of '
                       f'{megabytes:g} MB needs; lower the size or the share')
    taken[spec] = total
  random.Random(seed + 1).shuffle(chosen)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    for document in chosen:
      f.write(json.dumps({'text': document}, ensure_ascii=False) + '\n')
  os.replace(path + '.tmp', path)
  return taken
