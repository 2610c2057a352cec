"""§3.3, Fig. 8 (right), and §2.2's gap closed: does the SPT-NPT gap widen with model size?

Each --presets model (smallest first) is pretrained NPT and SPT at δ on the same tokenizer and data, and finetuned
from earlier checkpoints too (--checkpoints), so every size has post-finetuning losses at several budgets. The
report gives NPT→FT, SPT→FT and the gap per size and budget, and the gap closed by each size's SPT model
against the next size's NPT model (the paper: 1B SPT against 3B NPT).

  python -m experiments.model_size --config=configs/musicpile.py:small --workdir=runs/music_model_size
Paper scale: --config=configs/musicpile.py:300m --presets=olmo-300m,olmo-600m,olmo-1b,olmo-3b (plus data paths).
"""

import dataclasses
import os

from experiments import common
from spt_jax import cli
from spt_jax.model import flops
from spt_jax.storage import markdown

_DELTA = common.delta_flag('delta', 0.1, 'δ of the SPT models.')
_PRESETS = cli.define_list(
  'presets',
  'cpu-160k,cpu-600k,cpu-2m',
  'Model presets, smallest first (at least 3 for the trend).',
  cli.item(str, flops.PRESETS.__contains__, f'a model preset: one of {", ".join(flops.PRESETS)}'),
)
_CHECKPOINTS = common.checkpoints_flag(2, 'Earlier pretraining checkpoints to finetune from (budgets)')
common.at_least(_PRESETS, 2, 'model presets, smallest first')


def _curve(workdir: str) -> dict:
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    gains,
    runs,
  )

  run = runs.read(workdir)
  tokens, losses, _ = gains.post_ft_curve(run)
  return {'params': int(run.summary.params), 'tokens': tokens.tolist(), 'loss': losses.tolist()}


def _runs(base) -> dict:
  from spt_jax.model import decoder as model  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  from_steps = common.earlier_steps(base, _CHECKPOINTS.value)
  variants = {}
  for preset in _PRESETS.value:
    # Same tokenizer for every size.
    size = dataclasses.replace(model.preset_config(preset), dtype=base.model.dtype, vocab_size=base.model.vocab_size)
    variants.update(common.arms(base, _DELTA.value, prefix=f'{preset}_', model=size, finetune__from_steps=from_steps))
  return variants


def _report(base, workdirs: dict) -> None:
  del base
  from spt_jax.analysis import gains as gains_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import plots  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  presets = _PRESETS.value
  curves = {p: {arm: _curve(workdirs[f'{p}_{arm}_seed0']) for arm in ('npt', 'spt')} for p in presets}
  table = markdown.table(['model', 'parameters', 'pretraining tokens', 'NPT→FT', 'SPT→FT', 'gap (NPT − SPT)', 'G'], [])
  gaps = {}
  for preset in presets:
    npt, spt = curves[preset]['npt'], curves[preset]['spt']
    for tokens, npt_loss, spt_loss in zip(npt['tokens'], npt['loss'], spt['loss'], strict=False):
      gaps.setdefault(tokens, []).append(npt_loss - spt_loss)
      table.append(
        markdown.row(
          [preset, f'{npt["params"]:,}', f'{tokens:,.0f}', f'{npt_loss:.4f}', f'{spt_loss:.4f}']
          + [f'{npt_loss - spt_loss:+.4f}', f'{gains_lib.relative_gain(npt_loss, spt_loss):+.2f}%']
        )
      )
  closed = markdown.table(['SPT model', 'NPT model', 'gap closed'], [])
  for small, large in zip(presets, presets[1:], strict=False):
    value = gains_lib.gap_closed(
      curves[small]['npt']['loss'][-1], curves[small]['spt']['loss'][-1], curves[large]['npt']['loss'][-1]
    )
    closed.append(markdown.row([small, large, 'undefined (larger not better)' if value is None else f'{value:.0f}%']))
  params = [curves[p]['npt']['params'] for p in presets]
  plots.series_plot(
    {f'{tokens:,.0f} tokens': (params, values) for tokens, values in sorted(gaps.items())},
    os.path.join(common.WORKDIR.value, 'model_size.png'),
    'parameters',
    'NPT→FT − SPT→FT (nats)',
    'the SPT-NPT gap in post-finetuning domain loss, by model size',
    xscale='log',
  )
  final = gaps[max(gaps)]
  widening = all(b >= a for a, b in zip(final, final[1:], strict=False))
  files.write_json(os.path.join(common.WORKDIR.value, 'model_size.json'), curves)
  common.write_report(
    f'Model size on {common.config_name()}: NPT against SPT (δ = {100 * _DELTA.value:g}%)',
    [
      '\n'.join(table),
      '![the gap by model size](model_size.png)',
      '\n'.join(closed),
      common.paper_table(
        [
          (
            'the gap at the full budget, smallest to largest',
            ' → '.join(f'{g:+.4f}' for g in final) + (' (widens)' if widening else ' (does not widen throughout)'),
            'model_size/direction',
          ),
          (
            f'gap closed, {presets[0]} SPT vs {presets[1]} NPT',
            closed[2].split('|')[3].strip(),
            'gap_closed_pct',
            common.config_name() if common.config_name() in ('musicpile', 'proofpile', 'chempile') else 'musicpile',
          ),
        ]
      ),
    ],
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
