"""Section 5: the best δ shifts with the budget. Sweep δ ∈ {0, 2, 5, 10}% with many finetuned checkpoints, fit
the laws, and recommend δ per budget (the paper, MusicPile: 10% best under about 30B tokens, smaller mixtures best
at 200B).

  python -m experiments.budget --config=configs/musicpile.py:tiny --workdir=runs/music_budget
"""

import os

from experiments import common
from spt_jax import cli
from spt_jax.storage import layout, markdown

_DELTAS = cli.define_list('deltas', '0,0.02,0.05,0.1', 'δ values (fractions), comma-separated.', cli.FRACTION)
_CHECKPOINTS = common.checkpoints_flag(5)
common.at_least(_DELTAS, 2, 'δ values to fit')


def _runs(base) -> dict:
  return common.delta_variants(base, _DELTAS.value, _CHECKPOINTS.value)


def _report(base, workdirs: dict) -> None:
  tokens = common.pretrain_tokens(base)
  deltas = _DELTAS.value
  fit = common.analyse('fit', runs=list(workdirs.values()))
  budgets = [float(int(tokens * f)) for f in (0.25, 0.5, 1, 2, 4, 8)]
  fit_file = os.path.join(fit.folder, layout.FIT)
  picks = common.analyse('recommend', fit=fit_file, tokens=budgets, candidates=deltas).result.picks
  table = markdown.table(
    ['budget (tokens)', 'best δ (continuous)', 'best of the swept δ', 'forecast post-FT loss'],
    [[f'{p.tokens:.3g}', f'{100 * p.best_delta:.2f}%', f'{100 * p.best_candidate:g}%', f'{p.loss:.4f}'] for p in picks],
  )
  best = [p.best_candidate for p in picks]
  common.write_report(
    f'The best δ by budget on {common.config_name()}',
    [
      f'Forecast from the fit of the δ sweep {{{", ".join(f"{100 * d:g}%" for d in deltas)}}} (pretraining budget '
      f'{tokens:,} tokens; larger budgets are extrapolated).',
      '\n'.join(table),
      '![optimal δ](analysis/recommend/optimal_delta.png)',
      common.paper_table(
        [
          ('best swept δ at the smallest budget', f'{100 * best[0]:g}%', 'budget/best_delta_small_budget'),
          ('best swept δ at the largest budget', f'{100 * best[-1]:g}%', 'budget/best_delta_at_200b'),
        ]
      ),
    ],
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
