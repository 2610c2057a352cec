"""Section 5: finetuning with replay of general data (r ∈ {0, 10, 20}%), for NPT and SPT.

  python -m experiments.replay --config=configs/chempile.py:tiny --workdir=runs/chem_replay
"""

from absl import flags

from experiments import common

_REPLAY = flags.DEFINE_list('replay', '0,0.1,0.2', 'Comma-separated replay fractions r.')
_DELTA = flags.DEFINE_float('delta', 0.05, 'δ of the SPT runs.')


def main(argv):
  del argv
  base = common.base_config()
  variants = {}
  for r in common.floats(_REPLAY.value):
    for name, delta in (('npt', 0.0), ('spt', _DELTA.value)):
      variants[f'{name}_replay_{100 * r:g}pct'] = common.variant(
          base, mixture__domain_fraction=delta, finetune__replay_fraction=r)
  workdirs = common.run_variants(variants)
  for r in common.floats(_REPLAY.value):
    name = f'replay_{100 * r:g}pct'
    common.analyse('gains', name=f'gains_{name}', npt=workdirs[f'npt_{name}'], spt=[workdirs[f'spt_{name}']])


if __name__ == '__main__':
  common.run(main)
