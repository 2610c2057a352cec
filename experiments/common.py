"""What every study shares: the base config and workdir flags, running named variants, then the analysis.

The base config is read by ml_collections.config_flags, like spt_jax.main's:
`--config=configs/musicpile.py:tiny --config.seed=1`; a study's own flags are absl flags, each checked where it is
defined (spt_jax/cli.py: a wrong command line exits 2 before anything runs).
"""

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from absl import flags, logging
from ml_collections import config_flags

from spt_jax import cli
from spt_jax.storage import layout, markdown

DEFAULT_CONFIG = 'configs/musicpile.py:tiny'
CONFIG = config_flags.DEFINE_config_file(
  'config', None, f'Base config file with :size (default: {DEFAULT_CONFIG}); override keys with --config.KEY=VALUE.'
)
WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Folder of the study: one pipeline workdir per variant inside.', required=True
)
flags.register_validator(
  'workdir',
  lambda workdir: '://' not in (workdir or ''),
  'a URL; a study runs on one machine: give a local folder (copy it to a bucket afterwards if you like)',
)
ONLY_ANALYSIS = flags.DEFINE_bool('only_analysis', False, 'Skip training; analyse the variants already run.')
CHECKPOINTS_HELP = 'Earlier pretraining checkpoints to finetune from'


@dataclasses.dataclass(frozen=True)
class Study:
  """A study: the runs it trains and the report it writes from them; each experiments/<study>.py declares one.

  runs(base): {name: config}, variants of the --config file's config (`base`, read once into its frozen
  Experiment), each validated and trained as a pipeline into WORKDIR/<name> (finished ones are skipped;
  --only_analysis trains none). report(base, workdirs): the analysis into WORKDIR (report.md and the study's own
  JSON and plots), from the workdirs by name.
  """

  runs: Callable[[Any], dict]
  report: Callable[[Any, dict], None]

  def main(self, argv) -> None:
    del argv
    base = base_config()
    self.report(base, run_variants(self.runs(base)))


def run(study: Study) -> None:
  """Runs a study under spt_jax/cli.py's convention (flags checked first, one-line errors, exit 2 or 1)."""
  if not any(re.match(r'--?config(=|$)', argument) for argument in sys.argv[1:]):
    # On the command line rather than as the flag's default: config_flags applies a default's --config.KEY
    # overrides as the flag is defined, at import, where an unknown key is a traceback rather than a usage error.
    # It reads sys.argv itself.
    sys.argv.insert(1, f'--config={DEFAULT_CONFIG}')
  cli.run(study.main)


def delta_flag(name: str, default: float | None, help_text: str) -> flags.FlagHolder:
  """A float flag holding δ (or another fraction), checked to lie in (0, 1) (None allowed when the default)."""
  holder = flags.DEFINE_float(name, default, help_text)
  flags.register_validator(
    holder, lambda value: value is None or 0 < value < 1, f'--{name} is a fraction in (0, 1), e.g. 0.1 for 10%'
  )
  return holder


def checkpoints_flag(default: int, help_text: str = CHECKPOINTS_HELP) -> flags.FlagHolder:
  return flags.DEFINE_integer('checkpoints', default, f'{help_text}.', lower_bound=0)


def at_least(holder: flags.FlagHolder, count: int, what: str) -> None:
  """A validator: the list flag holds at least `count` items."""
  flags.register_validator(
    holder, lambda values: len(values) >= count, f'give at least {count} {what}, comma-separated'
  )


def base_config():
  """The --config file's config with its --config.KEY overrides applied, as a frozen Experiment."""
  from spt_jax.train import config as config_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return config_lib.freeze(CONFIG.value)


def variant(config, **overrides):
  """A copy of an Experiment with dotted-key overrides ('mixture.domain_fraction': 0.02 as mixture__domain_fraction)."""
  from spt_jax.train import config as config_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return config_lib.replace(config, **{key.replace('__', '.'): value for key, value in overrides.items()})


def delta_variants(base, deltas, checkpoints: int) -> dict:
  """A δ sweep: `delta_<δ>pct` per δ, each also finetuned from `checkpoints` earlier pretraining checkpoints."""
  from_steps = earlier_steps(base, checkpoints)
  return {delta_name(d): variant(base, mixture__domain_fraction=d, finetune__from_steps=from_steps) for d in deltas}


def run_variants(variants: dict) -> dict[str, str]:
  """Runs the pipeline of each variant into WORKDIR/<name> (finished runs are skipped); returns the workdirs.

  Every variant is validated here, once and before any is trained (the studies' entry to training)."""
  from spt_jax.train import loop, pipeline, validate  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  workdirs = {name: os.path.join(WORKDIR.value, name) for name in variants}
  if ONLY_ANALYSIS.value:
    return workdirs
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.train import compile_cache  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  variants = {name: validate.check(config) for name, config in variants.items()}
  files.exit_quietly_on_sigterm()  # Outside a training step (preparing, building, between runs): exit 0, one line.
  first = next(iter(variants.values()))
  compile_cache.enable(first.compilation_cache, first.data.cache_dir)  # One setting per process.
  logging.info(
    'Study %s: variants %s, %d run(s) at a time',
    WORKDIR.value,
    ', '.join(variants),
    loop.runs_at_once(first.runs_together),
  )
  # Every pretraining, then every finetune, runs_together at a time where shapes allow; the pipelines lock their
  # folders, so two studies sharing a variant never train it at once (process 0 locks for every host). A variant
  # with stage='pretrain' (a study that needs no finetunes) is that one run, in its locked folder.
  pipelines = [name for name, config in variants.items() if config.stage == 'pipeline']
  alone = [name for name in variants if name not in pipelines]
  results = {}
  if pipelines:
    summaries = pipeline.run_pipelines([(variants[n], workdirs[n], None) for n in pipelines])
    results.update(zip(pipelines, summaries, strict=True))
  if alone:
    with files.WorkdirLock([workdirs[n] for n in alone]):
      results.update(zip(alone, loop.run_many([loop.Run(variants[n], workdirs[n]) for n in alone]), strict=True))
  preempted = [name for name, result in results.items() if result.stop_reason == 'preempted']
  if preempted:
    logging.warning(
      'Study %s stopped by SIGTERM (saved; %s unfinished); rerun the same command to go on.',
      WORKDIR.value,
      ', '.join(preempted),
    )
    raise SystemExit(0)  # As a preempted run: exit 0 so that a scheduler restarts it.
  return workdirs


@dataclasses.dataclass(frozen=True)
class Analysis:
  """Where a `spt_jax.plan` command wrote its files, and what it returned (fit: a JointFit; recommend: a
  Recommendation; None for the others)."""

  folder: str
  result: object = None


def analyse(command: str, name: str = '', **arguments) -> Analysis:
  """spt_jax.plan's `command` (gains, fit, recommend, similarity ...) into WORKDIR/analysis/<name or command>."""
  from spt_jax import plan  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  out = os.path.join(WORKDIR.value, 'analysis', name or command)
  result = getattr(plan, command)(out=out, **arguments)
  print(f'{command}: {out}/')
  return Analysis(out, result)


def config_name() -> str:
  """The --config file's name (musicpile, proofpile, ...): the domain key of the paper's values."""
  return os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS['config'])))[0]


def arms(base, delta: float, seeds=(0,), prefix: str = '', **overrides) -> dict:
  """NPT and SPT (δ) variants per seed, seed by seed: `npt_seed0`, `spt_seed0`, ... (studies share these names,
  so a study pointed at another's workdir reuses its finished runs)."""
  variants = {}
  for seed in seeds:
    for arm, fraction in (('npt', 0.0), ('spt', delta)):
      variants[f'{prefix}{arm}_seed{seed}'] = variant(base, seed=seed, mixture__domain_fraction=fraction, **overrides)
  return variants


def write_report(title: str, sections: list, finetune_epochs: float | None = None, regime: str = '') -> str:
  """WORKDIR/report.md: the title, then the sections (markdown) separated by blank lines, then the regime section
  (regime_section, or `regime` when the study writes its own)."""
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  path = os.path.join(WORKDIR.value, layout.REPORT)
  regime = regime or regime_section(finetune_epochs)
  files.write_text(path, '\n\n'.join([f'# {title}', *sections, regime]) + '\n')
  print(f'report: {path}')
  return path


def regime_section(finetune_epochs: float | None = None) -> str:
  """The study's regime beside the paper's (spt_jax/train/regime.py); finetune_epochs: the domain epochs the
  study's finetunes had seen at their best step, where they stopped early (measured; None: not known).

  The domain set's size is what the study's runs drew from (their accounting), which differs from the config's
  subsample target when documents are large (whole files drawn per seed): the smallest and largest, as two columns.
  """
  from spt_jax.train import regime  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  config = base_config()
  sizes = domain_set_sizes(WORKDIR.value)
  if sizes:
    where = f"measured from the accounting of the study's {len(sizes)} runs that drew domain data"
  else:
    sizes, where = [config.data.domain_max_tokens], "the domain set's subsample target (`data.domain_max_tokens`)"
  low, high = min(sizes), max(sizes)
  columns = [('', low)] if low == high else [(', smallest domain set', low), (', largest domain set', high)]
  ours = [
    regime.of_config(f'this study ({config_name()}{label})', config, size, finetune_epochs_before_turn=finetune_epochs)
    for label, size in columns
  ]
  return (
    '## Regime\n\n'
    + regime.table([regime.paper(), *ours])
    + f'\n\nDomain training tokens: {where}; budget points are fifths of the run.'
  )


def domain_set_sizes(folder: str) -> list[int]:
  """The domain training set's size in tokens, per run under `folder` that drew from it (run summaries)."""
  from spt_jax.storage import records  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  sizes = []
  for root, folders, names in os.walk(folder):
    folders[:] = [f for f in folders if f != layout.CHECKPOINTS]  # Orbax's many files hold no summary.
    if layout.SUMMARY in names and layout.METRICS in names:  # A run's folder (not a pipeline's top).
      with open(os.path.join(root, layout.SUMMARY)) as file:
        size = records.RunSummary.from_json(json.load(file)).domain_set_tokens
      if size:
        sizes.append(size)
  return sizes


def paper_table(rows: list) -> str:
  """Markdown rows (quantity, ours, paper key[, domain]) as a table with the paper's value and its source."""
  from spt_jax.analysis import paper  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  lines = markdown.table(
    ['quantity', 'ours', 'paper'], [[quantity, ours, paper.cell(key, *domain)] for quantity, ours, key, *domain in rows]
  )
  return '\n'.join(
    lines
    + [
      '',
      'The paper: OLMo-style models of 300M-3B parameters and up to 200B tokens; ours: CPU '
      'scale. Directions compare, magnitudes need not.',
    ]
  )


def paper_domain() -> str | None:
  """The config's domain when the paper reports it (musicpile, proofpile, chempile), else None."""
  from spt_jax.analysis import paper  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return config_name() if config_name() in paper.DOMAINS else None


def gains_report(npt: str, spts: list, title: str, sections=()) -> dict:
  """The gains of SPT workdirs over an NPT one as WORKDIR/report.md, with the paper's headline values beside."""
  from spt_jax.analysis import gains as gains_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.analysis import runs  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  result = gains_lib.gains(runs.read(npt), [runs.read(w) for w in spts])
  best = max(result.spt, key=lambda row: row.relative_gain)
  multiplier = best.compute_multiplier
  rows = [
    (
      'best relative gain G',
      f'{best.relative_gain:+.2f}% ({best.run}, δ = {100 * best.delta:g}%)',
      'relative_gain_pct',
    ),
    (
      'compute multiplier there',
      '–' if multiplier.value is None else f'{multiplier.bound}{multiplier.value:.2f}×',
      'compute_multiplier',
    ),
  ]
  domain = paper_domain()
  paper_rows = [(*row, domain) for row in rows] if domain else []
  paper_rows.append(
    ('forgetting, NPT → best SPT', f'{result.npt.forgetting:+.4f} → {best.forgetting:+.4f}', 'forgetting')
  )
  write_report(title, [gains_lib.format_table(result), *sections, paper_table(paper_rows)])
  return result


def pretrain_tokens(config) -> int:
  from spt_jax.train import run_plan  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  return run_plan.make(config, 'pretrain').tokens


def earlier_steps(config, count: int) -> tuple[int, ...]:
  """`count` evenly spaced pretraining steps before the last: also finetuned from (finetune.from_steps)."""
  from spt_jax.train import run_plan  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  steps = run_plan.make(config, 'pretrain').steps
  return tuple(steps * k // (count + 1) for k in range(1, count + 1))


def delta_name(delta: float) -> str:
  return f'delta_{100 * delta:g}pct'
