"""Section 5: finetuning with replay of general data (r ∈ {0, 10, 20}%), for NPT and SPT.

python -m experiments.replay --config=configs/chempile.py:tiny --workdir=runs/chem_replay
"""

from experiments import common
from spt_jax import cli
from spt_jax.storage import markdown

_REPLAY = cli.define_list('replay', '0,0.1,0.2', 'Comma-separated replay fractions r.', cli.FRACTION)
_DELTA = common.delta_flag('delta', 0.05, 'δ of the SPT runs.')
common.at_least(_REPLAY, 1, 'replay fractions')


def _runs(base) -> dict:
  variants = {}
  for r in _REPLAY.value:
    for name, delta in (('npt', 0.0), ('spt', _DELTA.value)):
      variants[f'{name}_replay_{100 * r:g}pct'] = common.variant(
        base, mixture__domain_fraction=delta, finetune__replay_fraction=r
      )
  return variants


def _report(base, workdirs: dict) -> None:
  del base
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    gains,
    runs,
  )

  cells = []
  losses = {}
  for r in _REPLAY.value:
    name = f'replay_{100 * r:g}pct'
    result = gains.gains(runs.read(workdirs[f'npt_{name}']), [runs.read(workdirs[f'spt_{name}'])])
    npt, spt = result.npt, result.spt[0]
    losses[r] = (npt.post_ft_loss, spt.post_ft_loss)
    cells.append(
      [
        f'{100 * r:g}%',
        f'{npt.post_ft_loss:.4f}',
        f'{spt.post_ft_loss:.4f}',
        f'{spt.relative_gain:+.2f}%',
        f'{npt.forgetting:+.4f}',
        f'{spt.forgetting:+.4f}',
      ]
    )
  table = markdown.table(['replay r', 'NPT→FT', 'SPT→FT', 'G', 'NPT forgetting', 'SPT forgetting'], cells)
  spt_everywhere = all(s < n for n, s in losses.values())
  no_replay_spt = losses[min(losses)][1]
  npt_best = min(n for n, _ in losses.values())
  common.write_report(
    f'Replay during finetuning on {common.config_name()} (SPT at δ = {100 * _DELTA.value:g}%)',
    [
      '\n'.join(table),
      common.paper_table(
        [
          ('SPT→FT below NPT→FT at every replay rate', 'yes' if spt_everywhere else 'no', 'replay/direction'),
          (
            'best NPT→FT (any replay) against SPT→FT without replay',
            f'{npt_best:.4f} vs {no_replay_spt:.4f}',
            'replay/direction',
          ),
        ]
      ),
    ],
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
