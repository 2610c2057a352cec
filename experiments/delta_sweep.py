"""Sections 3 and 5.1: sweep δ, finetune each run, then the gains over NPT and the overfitting scaling laws.

  python -m experiments.delta_sweep --config=configs/musicpile.py:tiny --workdir=runs/music_delta_sweep
Paper scale: --config=configs/musicpile.py:1b (plus the data paths), δ ∈ {0, 0.1, 1, 2, 5}%.
Every pretraining run is also finetuned from earlier checkpoints (--checkpoints of them, evenly spaced), so the
compute multiplier can be read off post-finetuning curves and the finetuning delta (7) fitted over steps.
"""

import os

from experiments import common
from spt_jax import cli

_DELTAS = cli.define_list('deltas', '0,0.001,0.01,0.02,0.05', 'δ values (fractions), comma-separated.', cli.FRACTION)
_CHECKPOINTS = common.checkpoints_flag(3)
common.at_least(_DELTAS, 2, 'δ values to fit')


def main(argv):
  del argv
  base = common.base_config()
  from_steps = common.earlier_steps(base, _CHECKPOINTS.value)
  variants = {
    common.delta_name(d): common.variant(base, mixture__domain_fraction=d, finetune__from_steps=from_steps)
    for d in _DELTAS.value
  }
  workdirs = common.run_variants(variants)
  npt = workdirs.pop(common.delta_name(0.0), None)
  fit = common.analyse('fit', runs=[*([npt] if npt else []), *workdirs.values()])
  relative = os.path.relpath(fit, common.WORKDIR.value)
  fit_link = f'The overfitting scaling-law fit: [{relative}/report.md]({relative}/report.md)'
  if npt:
    common.analyse('gains', npt=npt, spt=list(workdirs.values()))
    common.gains_report(
      npt,
      list(workdirs.values()),
      f'δ sweep on {common.config_name()}: SPT against NPT',
      ['![post-FT loss by budget](analysis/gains/gains.png)', fit_link],
    )


if __name__ == '__main__':
  common.run(main)
