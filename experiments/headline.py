"""§2.2 and Figs. 4-5, the headline: NPT→FT against SPT→FT, finetuning grid and early stopping included, over seeds.

Reports mean ± standard deviation of the post-finetuning domain test loss, the relative gain G and the forgetting,
with the paper's values beside them, and plots both arms' domain and general loss through pretraining and
finetuning (W/report.md, W/headline.json, W/headline.png). A re-run skips the arms already finished.

CPU scale, the settings of experiments/results/ (SPT at δ = 10%): the `small` size, and the `study` size in the
paper's regime (8 seeds, both finetuning protocols):
  python -m experiments.headline --config=configs/musicpile.py:small --delta=0.1 --workdir=runs/headline_music
  python -m experiments.headline --config=configs/musicpile.py:study --delta=0.1 --seeds=0,1,2,3,4,5,6,7 \
    --workdir=runs/headline_study_music
Paper scale: --config=configs/musicpile.py:1b --seeds=0 (the paper runs one seed).
"""

import dataclasses
import os

from experiments import common
from spt_jax import cli
from spt_jax.analysis import paper
from spt_jax.analysis import seeds as seeds_lib
from spt_jax.storage import markdown

_SEEDS = cli.define_list(
  'seeds', '0,1,2', 'Seeds; each runs both arms (init, data order and split of batches).', cli.SEED
)
_DELTA = common.delta_flag('delta', None, "δ of the SPT arm; default: the config's mixture.domain_fraction.")
common.at_least(_SEEDS, 1, 'seeds, e.g. --seeds=0,1,2')


def title(result: seeds_lib.Comparison, domain: str) -> str:
  return f'Headline: NPT→FT against SPT→FT on {domain}, {result.seeds} seeds'


def report(result: seeds_lib.Comparison, domain: str, delta: float, config) -> str:
  """The report's body (the regime section follows it: common.write_report)."""
  known = f'relative_gain_pct/{domain}' in paper.VALUES
  paper_gain = paper.cell('relative_gain_pct', domain) if known else '– (not a paper domain)'
  lines = [
    f'Model `{config.model.preset}`, {config.tokens:,} pretraining tokens, sequences of {config.data.seq_len}, '
    f'SPT at δ = {100 * delta:g}%; finetuning grid {list(map(tuple, config.finetune.grid))} (lr, warmup) with '
    f'early stopping (patience {config.finetune.patience}, evaluation every {config.finetune.eval_every} steps, '
    f'at most {config.finetune.max_steps} steps; the grid extended up to {config.finetune.extend_grid} step(s) '
    "past an edge that wins); each arm's best grid point by domain test loss (the paper's protocol) and, where "
    'the data has a validation split, by validation loss with its test loss reported (the clean protocol).',
    '',
    '## Per seed',
    '',
    seeds_lib.format_tables(result),
    '',
    'G = 100·(L_NPT→FT − L_SPT→FT)/L_NPT→FT. Forgetting: general test loss after finetuning (at the best '
    'step) minus before.',
    '',
    '## Against the paper',
    '',
    *markdown.table(
      ['quantity', 'ours (mean ± sd over seeds)', 'paper'],
      [
        [
          'relative gain G',
          f'{result.gain_pct.plus_minus(2, "%")}; 95% CI of the mean '
          f'{result.gain_pct.interval(2, "%")} ({result.seeds_spt_better} of {result.seeds} seeds '
          'SPT better)',
          paper_gain,
        ],
        *(
          [
            [
              'relative gain G, clean protocol (selected on validation)',
              f'{result.gain_pct_clean.plus_minus(2, "%")}; 95% CI of the mean '
              f'{result.gain_pct_clean.interval(2, "%")} ({result.seeds_spt_better_clean} of '
              f'{result.gain_pct_clean.n} seeds SPT better)',
              '– (the paper selects on test)',
            ],
          ]
          if result.gain_pct_clean is not None
          else []
        ),
        [
          'forgetting at the selected step, NPT → SPT',
          f'{result.npt_forgetting.plus_minus()} → {result.spt_forgetting.plus_minus()} nats',
          paper.cell('forgetting'),
        ],
        [
          'forgetting at equal finetuning steps, NPT → SPT',
          f'{result.npt_forgetting_equal_steps.plus_minus()} → {result.spt_forgetting_equal_steps.plus_minus()} nats',
          '–',
        ],
        ['finetuning epochs to the best step', 'see per-seed table', paper.cell('finetune_overfit_epochs')],
      ],
    ),
    '',
    "The paper's values are at 1B parameters and 200B tokens; ours at CPU scale, so the direction and rough "
    'size compare, not the numbers.',
    '',
    '![both arms through pretraining and finetuning](headline.png)',
  ]
  return '\n'.join(lines)


def _delta(base) -> float:
  delta = base.mixture.domain_fraction if _DELTA.value is None else _DELTA.value
  if not 0 < delta < 1:
    raise ValueError(f'the SPT arm needs 0 < δ < 1, got {delta}; set --delta or --config.mixture.domain_fraction')
  return delta


def _runs(base) -> dict:
  return common.arms(base, _delta(base), _SEEDS.value)


def _report(base, workdirs: dict) -> None:
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    plots,
    runs,
  )
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  delta, seeds = _delta(base), _SEEDS.value
  pairs = {seed: (runs.read(workdirs[f'npt_seed{seed}']), runs.read(workdirs[f'spt_seed{seed}'])) for seed in seeds}
  result = seeds_lib.compare(pairs)
  domain = common.config_name()
  trajectories = {
    'NPT→FT (δ = 0)': [seeds_lib.trajectory(npt) for npt, _ in pairs.values()],
    f'SPT→FT (δ = {100 * delta:g}%)': [seeds_lib.trajectory(spt) for _, spt in pairs.values()],
  }
  out = common.WORKDIR.value
  plots.seeds_plot(trajectories, os.path.join(out, 'headline.png'), f'{domain}: {len(seeds)} seeds')
  files.write_json(
    os.path.join(out, 'headline.json'),
    {
      'domain': domain,
      'delta': delta,
      'seeds': result.seeds,
      **dataclasses.asdict(result),
      'trajectories': trajectories,
    },
  )
  turned = [arm.epochs for row in result.rows for arm in (row.npt, row.spt) if arm.stopped_early]
  epochs = sum(turned) / len(turned) if turned else None  # Mean over the arms whose domain loss turned up.
  path = common.write_report(title(result, domain), [report(result, domain, delta, base)], epochs)
  gain = result.gain_pct
  print(f'{domain}: G = {gain.plus_minus(2, "%")} (95% CI {gain.interval(2, "%")}) over {len(seeds)} seeds; {path}')


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
