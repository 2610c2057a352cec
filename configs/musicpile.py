"""MusicPile: symbolic music (ABC notation) as the domain set, general text as the rest.

Paper scale (Cloud TPU VM) on the paper's data from its public homes (spt_jax/data/paper_data.py; swap a
source with e.g. --config.data.domain='jsonl:/data/musicpile/*.jsonl?field=text'):
  python -m spt_jax.main --config=configs/musicpile.py:1b --workdir=/gcs/BUCKET/musicpile/1b_spt2
CPU scale, built-in corpora (English books and docs; music21's ABC tunes), whole pipeline:
  python -m spt_jax.main --config=configs/musicpile.py:tiny --workdir=/tmp/musicpile_tiny
Sizes after the colon: 1b (default), 3b, 600m, 300m (paper scale); tiny (CPU, minutes); test (seconds, for
tests). configs/common.py sets what the sizes share; this file, the domain. Override any key with --config.KEY=V.
"""

from configs import common
from spt_jax.data import paper_data


def get_config(arg: str = '1b'):
  """This domain's experiment at size `arg`: common.sized(arg) with the domain's data."""
  c = common.sized(arg)  # Model, batch, tokens, δ, schedule, finetuning grid and evals of the size.
  if arg in common.CPU_SIZES:
    c.data.domain = 'builtin:abc'  # Built in: music21's ABC tunes.
  else:
    c.data.domain = paper_data.MUSICPILE  # The paper's set, read from the Hub by pinned revision.
  return c
