"""Section 4: does a small SPT model close the gap to a larger NPT model? (the paper: 1B SPT vs 3B NPT)

  python -m experiments.model_size --config=configs/proofpile.py:tiny --workdir=runs/proof_model_size
Paper scale: --config=configs/proofpile.py:1b --large_preset=olmo-3b (plus the data paths).
"""

from absl import flags

from experiments import common

_DELTA = flags.DEFINE_float('delta', 0.05, 'δ of the small SPT model.')
_LARGE = flags.DEFINE_string('large_preset', 'cpu-6m', 'Model preset of the larger NPT model.')


def main(argv):
  del argv
  from spt_jax import model
  base = common.base_config()
  large = model.preset_config(_LARGE.value)
  large.update(dtype=base.model.dtype, vocab_size=base.model.vocab_size)  # Same tokenizer for all three.
  workdirs = common.run_variants({
      'small_npt': common.variant(base, mixture__domain_fraction=0.0),
      'small_spt': common.variant(base, mixture__domain_fraction=_DELTA.value),
      'large_npt': common.variant(base, mixture__domain_fraction=0.0, model=large.to_dict()),
  })
  common.analyse('gains', npt=workdirs['small_npt'], spt=[workdirs['small_spt']], npt_large=workdirs['large_npt'])


if __name__ == '__main__':
  common.run(main)
