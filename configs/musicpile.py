"""MusicPile: symbolic music (ABC notation) as the domain set, general text as the rest.

Paper scale (Cloud TPU VM) on the paper's data from its public homes (spt_jax/data/paper_data.py; swap a
source with e.g. --config.data.domain='jsonl:/data/musicpile/*.jsonl?field=text'):
  python -m spt_jax.main --config=configs/musicpile.py:1b --workdir=/gcs/BUCKET/musicpile/1b_spt2
CPU scale, built-in corpora (English books and docs; music21's ABC tunes), whole pipeline:
  python -m spt_jax.main --config=configs/musicpile.py:tiny --workdir=/tmp/musicpile_tiny
Sizes after the colon: 1b (default), 3b, 600m, 300m (paper scale); tiny (CPU, minutes); test (seconds, for
tests). configs/common.py sets the sizes; this file, the domain set. Override any key with --config.KEY=V.
"""

from configs import common
from spt_jax.data import paper_data

# Built in: music21's ABC tunes. The paper's set is read from the Hub by pinned revision.
get_config = common.domain(builtin='builtin:abc', paper=paper_data.MUSICPILE)
