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


def _runs(base) -> dict:
  return common.delta_variants(base, _DELTAS.value, _CHECKPOINTS.value)


def _report(base, workdirs: dict) -> None:
  del base
  spts = dict(workdirs)
  npt = spts.pop(common.delta_name(0.0), None)
  fit = common.analyse('fit', runs=[*([npt] if npt else []), *spts.values()])
  relative = os.path.relpath(fit.folder, common.WORKDIR.value)
  fit_link = f'The overfitting scaling-law fit: [{relative}/report.md]({relative}/report.md)'
  if npt:
    common.analyse('gains', npt=npt, spt=list(spts.values()))
    common.gains_report(
      npt,
      list(spts.values()),
      f'δ sweep on {common.config_name()}: SPT against NPT',
      ['![post-FT loss by budget](analysis/gains/gains.png)', fit_link],
    )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
