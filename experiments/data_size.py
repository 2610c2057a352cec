"""Section 5: how the size of the domain set matters, and specialized continued pretraining (SCPT).

Domain sets of three sizes (by whole documents) with SPT at δ, against NPT; plus SCPT on the smallest: general
text only for the first 90% of the tokens, then δ for the rest (the paper: NPT to 180B, then 20B at δ = 1%).

  python -m experiments.data_size --config=configs/musicpile.py:tiny --workdir=runs/music_data_size
"""

from absl import flags

from experiments import common

_SIZES = flags.DEFINE_list('domain_tokens', '5000,20000,60000', 'Domain set sizes in tokens.')
_DELTA = flags.DEFINE_float('delta', 0.05, 'δ of SPT and of the SCPT stage.')
_SCPT_START = flags.DEFINE_float('scpt_start', 0.9, 'Fraction of the pretraining tokens before SCPT mixes in.')


def main(argv):
  del argv
  base = common.base_config()
  tokens = common.pretrain_tokens(base)
  sizes = [int(x) for x in common.floats(_SIZES.value)]
  variants = {}
  for size in sizes:
    variants[f'npt_{size}'] = common.variant(base, mixture__domain_fraction=0.0, data__domain_max_tokens=size)
    variants[f'spt_{size}'] = common.variant(base, mixture__domain_fraction=_DELTA.value,
                                             data__domain_max_tokens=size)
  general_until = int(tokens * _SCPT_START.value)
  variants[f'scpt_{sizes[0]}'] = common.variant(
      base, data__domain_max_tokens=sizes[0],
      mixture__stages=((general_until, {'general': 1.0}),
                       (0, {'general': 1.0 - _DELTA.value, 'domain': _DELTA.value})))
  workdirs = common.run_variants(variants)
  for size in sizes:
    spt = [workdirs[f'spt_{size}']] + ([workdirs[f'scpt_{size}']] if f'scpt_{size}' in workdirs else [])
    common.analyse('gains', name=f'gains_{size}', npt=workdirs[f'npt_{size}'], spt=spt)


if __name__ == '__main__':
  common.run(main)
