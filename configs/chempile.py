"""ChemPile: chemistry (SMILES strings) as the domain set, general text as the rest.

Paper scale (Cloud TPU VM; set the data paths, see README):
  python -m spt_jax.main --config=configs/chempile.py:1b --workdir=/gcs/BUCKET/chempile/1b_spt2 \
      --config.data.general='tokens:/data/dolma/*.npy?dtype=uint16' \
      --config.data.domain='jsonl:/data/chempile/*.jsonl?field=text'
CPU scale, built-in corpora (English books and docs; MOSES SMILES), whole pipeline:
  python -m spt_jax.main --config=configs/chempile.py:tiny --workdir=/tmp/chempile_tiny
Presets: 1b (default), 3b, 600m, 300m (paper scale); tiny (CPU, minutes); test (seconds, for tests).
"""

from spt_jax import config as config_lib


def get_config(preset: str = '1b'):
  return config_lib.domain_config(preset, cpu_domain='builtin:moses')
