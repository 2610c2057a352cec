"""ChemPile: chemistry (SMILES strings) as the domain set, general text as the rest.

Paper scale (Cloud TPU VM) on the paper's data from its public homes (spt_jax/data/paper_data.py; swap a
source with e.g. --config.data.domain='jsonl:/data/chempile/*.jsonl?field=text'):
  python -m spt_jax.main --config=configs/chempile.py:1b --workdir=/gcs/BUCKET/chempile/1b_spt2
CPU scale, built-in corpora (English books and docs; MOSES SMILES), whole pipeline:
  python -m spt_jax.main --config=configs/chempile.py:tiny --workdir=/tmp/chempile_tiny
Sizes after the colon: 1b (default), 3b, 600m, 300m (paper scale); tiny (CPU, minutes); test (seconds, for
tests). configs/common.py sets the sizes; this file, the domain set. Override any key with --config.KEY=V.
"""

from configs import common
from spt_jax.data import paper_data

# Built in: MOSES SMILES strings. The paper's set is read from the Hub by pinned revision.
get_config = common.domain(builtin='builtin:moses', paper=paper_data.CHEMPILE)
