"""§3.1.2, App. E: does any similarity metric predict which domains gain most from SPT?

For each domain: n-gram JSD against the general text (C2ST and MAUVE too with the similarity extra installed and
--embeddings), and, with --gains (default), NPT and SPT runs pretrained and finetuned to measure G. Then each
metric's Spearman rank correlation with G across the domains, beside the proxy the paper found best: the NPT
model's post-finetuning domain loss.

  python -m experiments.similarity --config=configs/musicpile.py:small --workdir=runs/similarity
(the --config file gives the size; each domain replaces its data.domain)
"""

import os

from absl import flags

from experiments import common
from spt_jax.analysis import similarity as similarity_lib
from spt_jax.storage import markdown

_DOMAINS = flags.DEFINE_list(
  'domains', 'builtin:abc,builtin:moses,builtin:coq,builtin:metamath,builtin:hott', 'Domain source specs.'
)
_REFERENCE = flags.DEFINE_string('reference', 'builtin:english', 'The general text the domains are compared with.')
_EMBEDDINGS = flags.DEFINE_bool('embeddings', False, 'Also the classifier two-sample test and MAUVE.')
_GAINS = flags.DEFINE_bool('gains', True, 'Also train NPT and SPT per domain and correlate the metrics with G.')
_DELTA = common.delta_flag('delta', 0.1, 'δ of the SPT arms.')
_MAX_TOKENS = flags.DEFINE_float('max_tokens', 1.5e6, 'Tokens per corpus for the metrics.')
flags.register_validator(_MAX_TOKENS, lambda tokens: tokens >= 1, 'sample at least one token per corpus')
flags.register_multi_flags_validator(
  ['domains', 'gains'],
  lambda values: not values['gains'] or len([d for d in values['domains'] if d]) >= 3,
  'a rank correlation with G needs at least 3 --domains (or --nogains)',
)

METRICS = ('unigram_jsd', 'bigram_jsd', 'trigram_jsd', 'c2st_auc', 'mauve')


def _label(spec: str) -> str:
  return spec.split(':', 1)[-1].replace(',', '+')


def _domains() -> list:
  return [d if ':' in d else f'builtin:{d}' for d in _DOMAINS.value if d]


def _runs(base) -> dict:
  """One NPT/SPT pair per domain (`<domain>_npt_seed0`, ...) when --gains; else no runs."""
  if _EMBEDDINGS.value and similarity_lib.embedding_extra_missing():  # Before any training.
    raise ValueError(similarity_lib.embedding_extra_missing())
  variants = {}
  for spec in _domains() if _GAINS.value else []:
    variants.update(common.arms(base, _DELTA.value, prefix=f'{_label(spec)}_', data__domain=spec))
  return variants


def measured_gains(workdirs: dict, domains: list) -> dict:
  """Per domain: G and the NPT post-finetuning loss of its NPT/SPT pair."""
  from spt_jax.analysis import gains as gains_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    runs,
    seeds,
  )

  out = {}
  for spec in domains:
    npt, spt = (seeds.arm(runs.read(workdirs[f'{_label(spec)}_{arm}_seed0'])) for arm in ('npt', 'spt'))
    out[spec] = {
      'gain_pct': gains_lib.relative_gain(npt.post_ft_loss, spt.post_ft_loss),
      'npt_post_ft_loss': npt.post_ft_loss,
      'spt_post_ft_loss': spt.post_ft_loss,
    }
  return out


def predictors(rows: list, gains: dict) -> dict:
  """Each metric's values over the domains, and the NPT post-FT loss: what might rank the domains like G."""
  candidates = {k: [row[k] for row in rows] for k in METRICS if k in rows[0]}
  candidates['npt_post_ft_loss'] = [gains[row['corpus_spec']]['npt_post_ft_loss'] for row in rows]
  return candidates


def _report(base, workdirs: dict) -> None:
  del base
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  domains = _domains()
  gains = measured_gains(workdirs, domains) if _GAINS.value else {}
  tokenizer = similarity_lib.load_tokenizer()
  corpora = [similarity_lib.load_corpus(c, tokenizer, int(_MAX_TOKENS.value)) for c in [_REFERENCE.value, *domains]]
  rows = similarity_lib.compare(corpora[0], corpora[1:], _EMBEDDINGS.value, tokenizer)
  for row, spec in zip(rows, domains, strict=False):
    row['corpus_spec'] = spec
  sections = [
    f"Each domain against `{_REFERENCE.value}` (OLMo's tokenizer, up to {_MAX_TOKENS.value:.3g} tokens each).",
    similarity_lib.format_table(rows),
  ]
  result = {'rows': rows, 'gains': gains}
  if gains:
    correlations = similarity_lib.rank_correlations(
      predictors(rows, gains), [gains[row['corpus_spec']]['gain_pct'] for row in rows]
    )
    result['correlations'] = correlations
    table = markdown.table(
      ['domain', 'G', 'NPT→FT', 'SPT→FT'],
      [
        [spec, f'{g["gain_pct"]:+.2f}%', f'{g["npt_post_ft_loss"]:.4f}', f'{g["spt_post_ft_loss"]:.4f}']
        for spec, g in gains.items()
      ],
    )
    ranks = markdown.table(
      ['predictor of G', 'Spearman ρ', 'p'],
      [[name, f'{c["rho"]:+.3f}', f'{c["p"]:.3f}'] for name, c in correlations.items()],
    )
    best = max(correlations, key=lambda k: abs(correlations[k]['rho']))
    sections += [
      f'Measured G (SPT at δ = {100 * _DELTA.value:g}%, one seed, the --config size):',
      '\n'.join(table),
      f'Rank correlations across {len(domains)} domains:',
      '\n'.join(ranks),
      common.paper_table(
        [
          (
            'strongest predictor of G (largest absolute ρ)',
            f'{best} (ρ = {correlations[best]["rho"]:+.3f})',
            'similarity/best_proxy',
          )
        ]
      ),
    ]
  files.write_json(os.path.join(common.WORKDIR.value, 'similarity.json'), result)
  common.write_report('Similarity of each domain to the general text, and G', sections)


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
