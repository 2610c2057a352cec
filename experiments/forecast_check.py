"""§5.3, Fig. 13: are the scaling laws' forecasts right out of sample?

Runs the δ sweep (finetuning every run from earlier checkpoints too), fits the laws on δ ≤ --max_delta and the
first --max_token_fraction of the budget only, then scores the forecasts on what the fit never saw: the whole
curve of each larger δ, the later tokens of the fitted δ, the post-finetuning loss there, and the predicted against
the observed overfitting onsets and crossover. The variants are the δ sweep's (`delta_5pct`, ...): point --workdir
at a δ-sweep study to reuse its runs.

  python -m experiments.forecast_check --config=configs/musicpile.py:small --workdir=runs/music_forecast
Paper scale: --config=configs/musicpile.py:1b --deltas=0,0.001,0.01,0.02,0.05,0.1
"""

import os

from absl import flags

from experiments import common
from spt_jax import cli

_DELTAS = cli.define_list('deltas', '0,0.01,0.02,0.05,0.1,0.2', 'δ values (fractions), comma-separated.', cli.FRACTION)
_CHECKPOINTS = common.checkpoints_flag(3)
_MAX_DELTA = common.delta_flag('max_delta', 0.05, 'The fit sees δ up to this (the paper: 5%).')
_MAX_TOKEN_FRACTION = flags.DEFINE_float(
  'max_token_fraction',
  0.6,
  'The fit sees tokens up to this fraction of the budget (the paper extrapolates post-FT loss past 120B of 200B).',
)
_CROSSOVER = cli.define_list(
  'crossover', '0.02,0.05', 'Two δ whose predicted and observed crossover to compare (empty: none).', cli.OPEN_FRACTION
)
flags.register_validator(
  _MAX_TOKEN_FRACTION, lambda fraction: 0 < fraction <= 1, "the fit sees a fraction in (0, 1] of the budget's tokens"
)
flags.register_validator(_CROSSOVER, lambda deltas: len(deltas) in (0, 2), 'give two δ, DELTA_A,DELTA_B, or none')
flags.register_multi_flags_validator(
  ['deltas', 'max_delta'],
  lambda values: any(d > values['max_delta'] for d in values['deltas']),
  '--deltas has no δ above --max_delta: nothing would be held out',
)


def _paper_rows(report, budget: float) -> list:
  largest = max(report.held_out_delta, key=float, default=None)
  rows = []
  if largest is not None:
    error = report.held_out_delta[largest].test
    rows.append(
      (
        f'forecast of the held-out δ = {100 * float(largest):g}% curve (mean abs. relative error)',
        f'{100 * error.mean_abs_relative_error:.2f}%',
        'forecast/curve_10pct',
      )
    )
    onset = report.onset.get(largest)
    predicted, observed = (onset.predicted_tokens, onset.observed_tokens) if onset else (None, None)
    rows.append(
      (
        f'overfitting onset of δ = {100 * float(largest):g}%, predicted / observed (tokens)',
        f'{predicted or float("nan"):.3g} / {observed or float("nan"):.3g} (budget {budget:.3g})',
        'forecast/onset_10pct_tokens',
      )
    )
  for cross in report.crossovers:

    def show(found):
      return ', '.join(f'{f["tokens"]:.3g}' for f in found) or 'none'

    rows.append(
      (
        f'crossover δ = {100 * cross.deltas[0]:g}% vs {100 * cross.deltas[1]:g}% '
        f'({cross.objective}), predicted / observed',
        f'{show(cross.predicted)} / {show(cross.observed)}',
        'forecast/crossover_2pct_over_5pct_tokens',
      )
    )
  rows.append(
    (
      'the fit sees',
      f'δ ≤ {100 * _MAX_DELTA.value:g}%, tokens ≤ {_MAX_TOKEN_FRACTION.value:g} of the budget',
      'forecast/fit_max_delta',
    )
  )
  return rows


def _runs(base) -> dict:
  return common.delta_variants(base, _DELTAS.value, _CHECKPOINTS.value)


def _report(base, workdirs: dict) -> None:
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    forecast_check,
    runs,
  )
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  budget = float(common.pretrain_tokens(base))
  max_tokens = _MAX_TOKEN_FRACTION.value * budget
  law = common.analyse(
    'fit', name='fit_subset', runs=list(workdirs.values()), max_delta=_MAX_DELTA.value, max_tokens=max_tokens
  ).result.law
  data = runs.scaling_data([runs.read(w) for w in workdirs.values()])
  pair = tuple(_CROSSOVER.value)
  report = forecast_check.check(law, data, crossover_pairs=[pair] if len(pair) == 2 else [])
  files.write_json(os.path.join(common.WORKDIR.value, 'forecast_check.json'), report.to_json())
  common.write_report(
    f'Forecast check on {common.config_name()}: fitted on δ ≤ {100 * _MAX_DELTA.value:g}% and the first '
    f'{100 * _MAX_TOKEN_FRACTION.value:g}% of {budget:.3g} tokens',
    [
      'Errors are forecast − observed on rows the fit never saw (domain test loss; post-FT: best loss after '
      'finetuning).',
      forecast_check.format_report(report),
      common.paper_table(_paper_rows(report, budget)),
      'The fit itself: [analysis/fit_subset/report.md](analysis/fit_subset/report.md) '
      '(![fit](analysis/fit_subset/fit.png))',
    ],
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
