"""§3.1.1, Fig. 7: does SPT gain more when pretraining holds less of the domain's language?

The paper pretrains on English with a varied share of monolingual Japanese and uses English-Japanese parallel text
as the domain. Built-in stand-in: the domain is the verse-aligned English-Spanish Bible (builtin:bible_en_es); the
general set is English without the English Bible, with Spanish monolingual text (builtin:spanish: fortunes and
manual pages) making up each --shares fraction of its bytes. For each share, NPT and SPT are pretrained and
finetuned, and G is reported against the share. Each share trains its own BPE on its own mixture, so losses
compare within a share (G), not across shares.

  python -m experiments.overlap --config=configs/musicpile.py:small --workdir=runs/overlap
(the --config file gives the size; this study sets data.general and data.domain itself)
"""

import os

from absl import flags

from experiments import common
from spt_jax import cli
from spt_jax.storage import markdown

_SHARES = cli.define_list('shares', '0,0.01,0.03,0.1', 'Shares of Spanish in the general set (by bytes).', cli.FRACTION)
_DELTA = common.delta_flag('delta', 0.1, 'δ of the SPT arms.')
_ENGLISH = flags.DEFINE_string(
  'english',
  'builtin:brown,austen,shakespeare,python_docs,linux_docs',
  "The general set's English: builtin:english without web_bible.",
)
_SPANISH = flags.DEFINE_string('spanish', 'builtin:spanish', 'Spanish monolingual text.')
_DOMAIN = flags.DEFINE_string('domain', 'builtin:bible_en_es', 'The parallel domain set.')
_GENERAL_MB = flags.DEFINE_float(
  'general_mb', 4.0, 'Size of each general set in MB of text (pretraining should read under one epoch of it).'
)
common.at_least(_SHARES, 2, 'shares in [0, 1)')
flags.register_validator(_GENERAL_MB, lambda size: size > 0, 'the general set needs a positive size in MB')


def _share_name(share: float) -> str:
  return f'share_{100 * share:g}pct_'


def general_set(share: float, out: str, cache_dir: str = '') -> tuple:
  """The general set of a share (Spanish for `share` of about --general_mb MB, English for the rest): its path
  and the share of Spanish bytes it really holds (documents are whole)."""
  from spt_jax.data import blend  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  path = os.path.join(out, f'general_{100 * share:g}pct.jsonl')
  taken = blend.write({_SPANISH.value: share, _ENGLISH.value: 1.0 - share}, _GENERAL_MB.value, path, cache_dir)
  return path, taken[_SPANISH.value] / sum(taken.values())


def _general_sets(base) -> dict:
  """Each share's general set: (path, the share of Spanish bytes it really holds)."""
  folder = os.path.join(common.WORKDIR.value, 'data')
  return {share: general_set(share, folder, base.data.cache_dir) for share in _SHARES.value}


def _runs(base) -> dict:
  variants = {}
  for share, (general, _) in _general_sets(base).items():
    variants.update(
      common.arms(
        base,
        _DELTA.value,
        prefix=_share_name(share),
        data__general=f'jsonl:{general}',
        data__general_max_tokens=0,
        data__domain=_DOMAIN.value,
      )
    )
  return variants


def _report(base, workdirs: dict) -> None:
  from spt_jax.analysis import gains as gains_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    plots,
    runs,
    seeds,
  )
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  shares = _SHARES.value
  actual = {share: real for share, (_, real) in _general_sets(base).items()}
  rows = []
  for share in shares:
    npt, spt = (seeds.arm(runs.read(workdirs[f'{_share_name(share)}{arm}_seed0'])) for arm in ('npt', 'spt'))
    rows.append(
      {
        'share': share,
        'actual_share': actual[share],
        'npt': npt,
        'spt': spt,
        'gain_pct': gains_lib.relative_gain(npt.post_ft_loss, spt.post_ft_loss),
      }
    )
  files.write_json(os.path.join(common.WORKDIR.value, 'overlap.json'), rows)
  plots.series_plot(
    {'G': ([100 * r['actual_share'] for r in rows], [r['gain_pct'] for r in rows])},
    os.path.join(common.WORKDIR.value, 'overlap.png'),
    'Spanish share of the general set (%)',
    'G (%)',
    'gain of SPT over NPT after finetuning, by overlap',
    xscale='symlog',
  )
  table = markdown.table(
    ['Spanish share (of the bytes)', 'NPT→FT', 'SPT→FT', 'G', 'NPT forgetting', 'SPT forgetting'],
    [
      [
        f'{100 * r["share"]:g}% ({100 * r["actual_share"]:.2f}%)',
        f'{r["npt"].post_ft_loss:.4f}',
        f'{r["spt"].post_ft_loss:.4f}',
        f'{r["gain_pct"]:+.2f}%',
        f'{r["npt"].forgetting:+.4f}',
        f'{r["spt"].forgetting:+.4f}',
      ]
      for r in rows
    ],
  )
  low, high = rows[0], rows[-1]
  direction = ('falls' if high['gain_pct'] < low['gain_pct'] else 'rises') + ' as the share grows'
  common.write_report(
    "Overlap: G against the share of the domain's second language in pretraining",
    [
      f'Domain `{_DOMAIN.value}` (English-Spanish verse pairs); general: `{_ENGLISH.value}` with `{_SPANISH.value}` '
      f'as {", ".join(f"{100 * s:g}%" for s in shares)} of about {_GENERAL_MB.value:g} MB; SPT at δ = '
      f'{100 * _DELTA.value:g}%; one seed.',
      '\n'.join(table),
      '![G against the share](overlap.png)',
      common.paper_table(
        [
          (
            'direction of G with the share',
            f'G {direction}: {low["gain_pct"]:+.2f}% at {100 * low["share"]:g}% → '
            f'{high["gain_pct"]:+.2f}% at {100 * high["share"]:g}%',
            'overlap/direction',
          ),
          (
            'G at the largest share',
            f'{high["gain_pct"]:+.2f}% at {100 * high["share"]:g}%',
            'overlap/gain_at_10pct_japanese',
          ),
          (
            'G at the smallest share',
            f'{low["gain_pct"]:+.2f}% at {100 * low["share"]:g}%',
            'overlap/gain_at_0.1pct_japanese',
          ),
        ]
      ),
    ],
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
