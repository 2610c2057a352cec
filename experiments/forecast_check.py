"""§5.3, Fig. 13: are the scaling laws' forecasts right out of sample?

Runs the δ sweep (finetuning every run from earlier checkpoints too), fits the laws on δ ≤ --max_delta and the
first --max_token_fraction of the budget only, then scores the forecasts on what the fit never saw: the whole
curve of each larger δ, the later tokens of the fitted δ, the post-finetuning loss there, and the predicted against
the observed overfitting onsets and crossover. The variants are the δ sweep's (`delta_5pct`, ...): point --workdir
at a δ-sweep study to reuse its runs.

  python -m experiments.forecast_check --config=configs/musicpile.py:small --workdir=runs/music_forecast
On several seeds, pretraining only (the curves' forecasts need no finetunes), a fit and a check per seed:
  python -m experiments.forecast_check --config=configs/musicpile.py:study --seeds=1,2,3 --pretrain_only \
    --checkpoints=0 --crossover= --workdir=runs/music_forecast_seeds
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
_SEEDS = cli.define_list(
  'seeds',
  '',
  'Seeds, each a δ sweep of its own (variants delta_<δ>pct_seed<S>) fitted and checked alone; the report gives each '
  "seed and their mean ± sd. Empty: the config's seed, variants delta_<δ>pct.",
  cli.SEED,
)
_PRETRAIN_ONLY = flags.DEFINE_bool(
  'pretrain_only', False, 'Train only the pretraining of each variant: the curves need no finetunes.'
)
flags.register_validator(_CROSSOVER, lambda deltas: len(deltas) in (0, 2), 'give two δ, DELTA_A,DELTA_B, or none')
flags.register_multi_flags_validator(
  ['pretrain_only', 'checkpoints', 'crossover'],
  lambda values: not values['pretrain_only'] or (values['checkpoints'] == 0 and not values['crossover']),
  '--pretrain_only trains no finetunes: give --checkpoints=0 and --crossover= (the post-finetuning forecasts need '
  'finetunes)',
)
flags.register_multi_flags_validator(
  ['deltas', 'max_delta'],
  lambda values: any(d > values['max_delta'] for d in values['deltas']),
  '--deltas has no δ above --max_delta: nothing would be held out',
)


def _paper_rows(checks: dict, budget: float) -> list:
  """The paper's §5.3 quantities beside ours (checks: seed -> ForecastCheck): one value, or each seed's (mean ± sd
  for the curve's error)."""
  from spt_jax.analysis import forecast_check  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  reports = list(checks.values())

  def each(values):
    return '; '.join(values) + (f' (seeds {", ".join(map(str, checks))})' if len(values) > 1 else '')

  first = reports[0]
  largest = max(first.held_out_delta, key=float, default=None)
  rows = []
  if largest is not None:
    errors = [r.held_out_delta[largest].test.mean_abs_relative_error for r in reports]
    rows.append(
      (
        f'forecast of the held-out δ = {100 * float(largest):g}% curve (mean abs. relative error)',
        forecast_check.mean_sd(errors) + (' over seeds' if len(errors) > 1 else ''),
        'forecast/curve_10pct',
      )
    )
    onsets = [r.onset.get(largest) for r in reports]
    rows.append(
      (
        f'overfitting onset of δ = {100 * float(largest):g}%, predicted / observed (tokens)',
        each([f'{o.predicted_tokens or float("nan"):.3g} / {o.observed_tokens or float("nan"):.3g}' for o in onsets])
        + f' (budget {budget:.3g})',
        'forecast/onset_10pct_tokens',
      )
    )
  for i, cross in enumerate(first.crossovers):

    def show(found):
      return ', '.join(f'{f["tokens"]:.3g}' for f in found) or 'none'

    rows.append(
      (
        f'crossover δ = {100 * cross.deltas[0]:g}% vs {100 * cross.deltas[1]:g}% '
        f'({cross.objective}), predicted / observed',
        each([f'{show(r.crossovers[i].predicted)} / {show(r.crossovers[i].observed)}' for r in reports]),
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
  overrides = {'stage': 'pretrain'} if _PRETRAIN_ONLY.value else {}
  variants = {}
  for seed in _SEEDS.value or [None]:
    config = base if seed is None else common.variant(base, seed=seed)
    suffix = '' if seed is None else f'_seed{seed}'
    for name, run in common.delta_variants(config, _DELTAS.value, _CHECKPOINTS.value).items():
      variants[name + suffix] = common.variant(run, **overrides)
  return variants


def _report(base, workdirs: dict) -> None:
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    forecast_check,
    runs,
  )
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  budget = float(common.pretrain_tokens(base))
  max_tokens = _MAX_TOKEN_FRACTION.value * budget
  pair = tuple(_CROSSOVER.value)
  checks, sections = {}, []
  for seed in _SEEDS.value or [None]:  # A fit and a check per seed, each on that seed's runs alone.
    suffix = '' if seed is None else f'_seed{seed}'
    group = [w for name, w in workdirs.items() if name.endswith(suffix)]
    fit = f'fit_subset{suffix}'
    law = common.analyse('fit', name=fit, runs=group, max_delta=_MAX_DELTA.value, max_tokens=max_tokens).result.law
    data = runs.scaling_data([runs.read(w) for w in group])
    checks[seed] = forecast_check.check(law, data, crossover_pairs=[pair] if len(pair) == 2 else [])
    sections.append(
      ('' if seed is None else f'## Seed {seed}\n\n')
      + forecast_check.format_report(checks[seed])
      + f'\n\nThe fit: [analysis/{fit}/report.md](analysis/{fit}/report.md) (![fit](analysis/{fit}/fit.png))'
    )
  if _SEEDS.value:
    summary = forecast_check.across_seeds({str(s): r for s, r in checks.items()})
    record = {'seeds': {str(s): r.to_json() for s, r in checks.items()}, 'summary': summary}
    sections.insert(0, f'## Every seed\n\n{forecast_check.format_seeds(summary)}')
  else:
    record = checks[None].to_json()
  files.write_json(os.path.join(common.WORKDIR.value, 'forecast_check.json'), record)
  seeds = f' on {len(checks)} seeds' if _SEEDS.value else ''
  common.write_report(
    f'Forecast check on {common.config_name()}{seeds}: fitted on δ ≤ {100 * _MAX_DELTA.value:g}% and the first '
    f'{100 * _MAX_TOKEN_FRACTION.value:g}% of {budget:.3g} tokens',
    [
      'Errors are forecast − observed on rows the fit never saw (domain test loss; post-FT: best loss after '
      'finetuning).',
      *sections,
      common.paper_table(_paper_rows(checks, budget)),
    ],
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
