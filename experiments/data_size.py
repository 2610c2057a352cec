"""§3.2, Fig. 8 (left): how the size of the domain set matters, and specialized continued pretraining (SCPT).

Domain sets of --domain_tokens sizes (by whole documents), each pretrained NPT and SPT at each --deltas and
finetuned from earlier checkpoints too, give the maximum G over δ at three budgets per size. The two smallest
sizes also get SCPT: general text only for the first --scpt_start of the tokens, then --scpt_delta (the paper: NPT
to 180B, then 20B at δ = 1%). SCPT rows are labelled with their stage δ.

  python -m experiments.data_size --config=configs/musicpile.py:small --workdir=runs/music_data_size \
      --scpt_delta=0.1
(at 400k CPU tokens, 1% of the last 10% is 400 domain tokens, so the CPU command raises the SCPT δ)
"""

import os

from experiments import common
from spt_jax import cli
from spt_jax.storage import markdown

_SIZES = cli.define_list(
  'domain_tokens',
  '2500,10000,40000',
  'Domain set sizes in tokens, smallest first.',
  cli.item(lambda text: int(float(text)), lambda size: size > 0, 'a positive number of tokens'),
)
_DELTAS = cli.define_list('deltas', '0.05,0.2', 'δ of the SPT runs (G is maximised over them).', cli.OPEN_FRACTION)
_CHECKPOINTS = common.checkpoints_flag(2, 'Earlier pretraining checkpoints to finetune from (budgets)')
_SCPT_START = common.delta_flag('scpt_start', 0.9, 'Fraction of the pretraining tokens before SCPT mixes in.')
_SCPT_DELTA = common.delta_flag('scpt_delta', 0.01, 'δ of the SCPT stage (the paper: 1%).')
common.at_least(_SIZES, 1, 'domain set sizes')
common.at_least(_DELTAS, 1, 'δ values')


def _runs(base) -> dict:
  tokens = common.pretrain_tokens(base)
  sizes, deltas = _SIZES.value, _DELTAS.value
  from_steps = common.earlier_steps(base, _CHECKPOINTS.value)
  variants = {}
  for size in sizes:
    sized = common.variant(base, data__domain_max_tokens=size, finetune__from_steps=from_steps)
    for delta in [0.0, *deltas]:
      variants[f'size_{size}_{common.delta_name(delta)}'] = common.variant(sized, mixture__domain_fraction=delta)
    if size in sizes[:2]:
      variants[f'size_{size}_scpt'] = common.variant(
        sized,
        mixture__stages=(
          (int(tokens * _SCPT_START.value), {'general': 1.0}),
          (0, {'general': 1.0 - _SCPT_DELTA.value, 'domain': _SCPT_DELTA.value}),
        ),
      )
  return variants


def _report(base, workdirs: dict) -> None:
  from spt_jax.analysis import gains as gains_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    plots,
    runs,
  )
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  tokens = common.pretrain_tokens(base)
  sizes, deltas = _SIZES.value, _DELTAS.value
  table = markdown.table(
    ['domain set (tokens)', 'budget (tokens)', 'NPT→FT', 'best SPT→FT (δ)', 'max G over δ', 'SCPT→FT (stage δ)']
    + ['SCPT G'],
    [],
  )
  series, result = {}, {}
  for size in sizes:
    curves = {}
    for name in [common.delta_name(d) for d in [0.0, *deltas]] + (['scpt'] if size in sizes[:2] else []):
      run = runs.read(workdirs[f'size_{size}_{name}'])
      budget, losses, _ = gains_lib.post_ft_curve(run)
      curves[name] = {'delta': run.domain_fraction, 'tokens': budget.tolist(), 'loss': losses.tolist()}
    npt = curves.pop(common.delta_name(0.0))
    scpt = curves.pop('scpt', None)
    result[size] = {'npt': npt, 'spt': curves, 'scpt': scpt}
    best_gains = []
    for i, budget in enumerate(npt['tokens']):
      name = min(curves, key=lambda n: curves[n]['loss'][i])
      best = gains_lib.relative_gain(npt['loss'][i], curves[name]['loss'][i])
      best_gains.append(best)
      scpt_cells = (
        ['', '']
        if scpt is None
        else [
          f'{scpt["loss"][i]:.4f} (δ = {100 * scpt["delta"]:g}%)',
          f'{gains_lib.relative_gain(npt["loss"][i], scpt["loss"][i]):+.2f}%',
        ]
      )
      table.append(
        markdown.row(
          [f'{size:,}', f'{budget:,.0f}', f'{npt["loss"][i]:.4f}']
          + [f'{curves[name]["loss"][i]:.4f} (δ = {100 * curves[name]["delta"]:g}%)', f'{best:+.2f}%', *scpt_cells]
        )
      )
    series[f'{size:,} domain tokens'] = (npt['tokens'], best_gains)
    result[size]['max_gain_pct'] = best_gains
  plots.series_plot(
    series,
    os.path.join(common.WORKDIR.value, 'data_size.png'),
    'pretraining tokens',
    'max G over δ (%)',
    'the gain of the best δ, by domain-set size and budget',
  )
  files.write_json(os.path.join(common.WORKDIR.value, 'data_size.json'), result)
  final = {size: result[size]['max_gain_pct'][-1] for size in sizes}
  common.write_report(
    f'Domain-set size and SCPT on {common.config_name()}',
    [
      f'δ ∈ {{{", ".join(f"{100 * d:g}%" for d in deltas)}}}; SCPT: general only to {100 * _SCPT_START.value:g}% '
      f'of {tokens:,} tokens, then δ = {100 * _SCPT_DELTA.value:g}%. Budgets: finetuned from earlier checkpoints.',
      '\n'.join(table),
      '![max G by size and budget](data_size.png)',
      common.paper_table(
        [
          (
            'max G at the first budget, by size',
            ', '.join(f'{s:,}: {result[s]["max_gain_pct"][0]:+.2f}%' for s in sizes),
            'data_size/at_40b',
          ),
          (
            'max G at the full budget, by size',
            ', '.join(f'{s:,}: {g:+.2f}%' for s, g in final.items()),
            'data_size/later',
          ),
          (
            'SCPT against SPT at the full budget',
            ', '.join(
              f'{s:,}: SCPT {result[s]["scpt"]["loss"][-1]:.4f} vs best SPT '
              f'{min(c["loss"][-1] for c in result[s]["spt"].values()):.4f}'
              for s in sizes[:2]
            ),
            'data_size/scpt',
          ),
        ]
      ),
    ],
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
