"""Beyond the paper: a best δ from at most 3 pilots costing at most 10% of the target run, checked by brute force.

The target is the --config run. Brute force: its whole pipeline at each of --deltas (NPT included), named as the δ
sweep's variants (`delta_<δ>pct`), so a --workdir holding a δ sweep or forecast study of the same config reuses them.
Pilots (`pilot_delta_<δ>pct`, one per --pilot_deltas): scale models of the target (spt_jax/train/regime.py),
together costing --pilot_compute of the target's pretraining FLOPs. `plan recommend --pilots` picks the pilot δ with the
lowest post-finetuning domain test loss; the report gives that δ's brute-force loss against the best brute-force
loss (the check: within 1%), under the paper's protocol and the clean one, and the pilots' cost against the brute
force's. W/report.md, W/pilots_check.json.

  python -m experiments.pilots --config=configs/musicpile.py:study --config.eval_every=50 --workdir=runs/music_pilots
Paper scale: --config=configs/musicpile.py:1b --pilot_preset=olmo-300m (plus the data paths).
"""

import os

from absl import flags

from experiments import common
from spt_jax import cli
from spt_jax.model import flops
from spt_jax.storage import files, markdown

_DELTAS = cli.define_list(
  'deltas', '0,0.001,0.01,0.02,0.05,0.1', 'Brute force: δ of the full pipelines (fractions).', cli.FRACTION
)
_PILOT_DELTAS = cli.define_list(
  'pilot_deltas', '0.02,0.05,0.1', "δ of the pilots, at most 3 (default: the paper's budget study's).", cli.FRACTION
)
_PILOT_PRESET = cli.define(
  'pilot_preset',
  'cpu-25k',
  "The pilots' model: a preset smaller than the target's, of the same depth where one exists.",
  cli.item(str, flops.PRESETS.__contains__, f'a model preset: one of {", ".join(flops.PRESETS)}'),
)
_PILOT_COMPUTE = common.delta_flag(
  'pilot_compute', 0.1, "All pilots' pretraining FLOPs together ÷ one target run's (at most 0.1: the method's limit)."
)
common.at_least(_DELTAS, 2, 'brute-force δ values')
common.at_least(_PILOT_DELTAS, 2, 'pilot δ values')
flags.register_validator(_PILOT_DELTAS, lambda deltas: len(deltas) <= 3, 'at most 3 pilots (--pilot_deltas)')
flags.register_validator(
  _PILOT_COMPUTE, lambda fraction: fraction <= 0.1, 'the pilots may cost at most 10% of the target run'
)


def _pilots(base) -> dict:
  from spt_jax.train import regime  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  count = len(_PILOT_DELTAS.value)
  return {
    f'pilot_{common.delta_name(d)}': regime.scale_model(base, d, _PILOT_PRESET.value, _PILOT_COMPUTE.value, count)[0]
    for d in _PILOT_DELTAS.value
  }


def _runs(base) -> dict:
  return {**common.delta_variants(base, _DELTAS.value, 0), **_pilots(base)}


def _brute_force(workdirs: dict) -> list:
  """(δ, post-FT paper, post-FT clean, pre-FT) of each brute-force pipeline, by δ."""
  from spt_jax.analysis import pilots  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  runs = pilots.read([workdirs[common.delta_name(d)] for d in _DELTAS.value])
  return sorted(runs, key=lambda run: run.delta)


def _best(brute: list, loss) -> float | None:
  """The brute-force δ with the lowest loss (None: no run has that loss, e.g. no validation split)."""
  scored = [(loss(run), run.delta) for run in brute if loss(run) is not None]
  return min(scored)[1] if scored else None


def _regret(brute: list, delta: float | None, loss) -> float | None:
  """How far (percent) the brute-force loss at δ lies above the best brute-force loss."""
  scored = {run.delta: loss(run) for run in brute if loss(run) is not None}
  if delta is None or delta not in scored:
    return None
  best = min(scored.values())
  return 100.0 * (scored[delta] - best) / best


def _report(base, workdirs: dict) -> None:
  from spt_jax.analysis import pilots  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.train import regime  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  pilot_configs = _pilots(base)
  pilot_dirs = [workdirs[name] for name in pilot_configs]
  first_pilot = next(iter(pilot_configs.values()))
  pick = common.analyse('recommend', pilots=pilot_dirs).result
  brute = _brute_force(workdirs)
  one_run = brute[0].train_flops  # Every brute-force run is a target run: same model, same tokens.
  brute_flops = sum(run.train_flops for run in brute)
  checks = {
    'paper': (pick.best_delta, lambda run: run.post_ft),
    'clean': (pick.best_delta_clean, lambda run: run.post_ft_clean),
  }
  result = {
    'pick': pick.to_json(),
    'brute_force': [
      {'delta': r.delta, 'pre_ft': r.pre_ft, 'post_ft': r.post_ft, 'post_ft_clean': r.post_ft_clean} for r in brute
    ],
    'regret_pct': {protocol: _regret(brute, delta, loss) for protocol, (delta, loss) in checks.items()},
    'best_brute_force_delta': {protocol: _best(brute, loss) for protocol, (_, loss) in checks.items()},
    'pilot_flops_over_target_run': pick.train_flops / one_run,
    'pilot_flops_over_brute_force': pick.train_flops / brute_flops,
  }
  files.write_text(os.path.join(common.WORKDIR.value, 'pilots_check.json'), files.dumps(result, indent=2))

  def percent(delta):
    return '–' if delta is None else f'{100 * delta:g}%'

  rows = [
    [percent(r.delta), *(f'{v:.4f}' if v is not None else '–' for v in (r.pre_ft, r.post_ft, r.post_ft_clean))]
    for r in brute
  ]
  lines = [
    f'Target: `{base.model.preset}`, {common.pretrain_tokens(base):,} pretraining tokens; '
    f"{len(pilot_dirs)} pilots of `{_PILOT_PRESET.value}` ({_PILOT_COMPUTE.value:g} of the target run's compute "
    'together).',
    '## Pilots',
    pilots.format_table(pick),
    '## Brute force',
    '\n'.join(markdown.table(['δ', 'pre-FT loss', 'post-FT (paper)', 'post-FT (clean)'], rows)),
    '## The check',
    '\n'.join(
      markdown.table(
        ['protocol', 'pilots pick', 'brute force best', "the pick's loss above the best (target: ≤ 1%)"],
        [
          [
            protocol,
            percent(delta),
            percent(result['best_brute_force_delta'][protocol]),
            '–' if result['regret_pct'][protocol] is None else f'{result["regret_pct"][protocol]:.2f}%',
          ]
          for protocol, (delta, _) in checks.items()
        ],
      )
    ),
    f"Pilots' pretraining compute: {result['pilot_flops_over_target_run']:.3f} of one target run, "
    f'{result["pilot_flops_over_brute_force"]:.4f} of the brute force ({len(brute)} runs); model FLOPs '
    '(spt_jax/model/flops.py), finetuning not counted.',
  ]
  # The domain sets the runs drew (whole documents, so they can differ much from the subsample targets).
  target_domain = max((r.domain_tokens for r in brute if r.domain_tokens), default=base.data.domain_max_tokens)
  pilot_domain = max((p.domain_tokens for p in pick.pilots if p.domain_tokens), default=0)
  table = regime.table(
    [
      regime.paper(),
      regime.of_config(f'target ({common.config_name()})', base, target_domain),
      regime.of_config('each pilot', first_pilot, pilot_domain or first_pilot.data.domain_max_tokens),
    ]
  )
  where = (
    'Domain training tokens: the domain sets the runs drew, from their accounting (the subsample targets: '
    f'{base.data.domain_max_tokens:,} and {first_pilot.data.domain_max_tokens:,}); budget points are fifths of a run.'
  )
  common.write_report(
    f'Pilots against brute force on {common.config_name()}', lines, regime=f'## Regime\n\n{table}\n\n{where}'
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
