"""Fig. 5(b): multiple-choice accuracy before and after finetuning, NPT against SPT, on tasks of the domain.

At CPU scale the tasks are built from the run's *held-out* domain documents (spt_jax/evals/domain_tasks.py): music:
the key and the metre of an ABC tune whose header line is removed; proofs: the true next proof line among lines of
other proofs; chemistry: a real SMILES string among corruptions of it. Each arm is scored at the end of
pretraining and at its best finetuning checkpoint. The arms are the headline's (`npt_seed0`, `spt_seed0`, ...):
point --workdir at a headline study to score its runs without training again.

  python -m experiments.downstream --config=configs/musicpile.py:small --workdir=runs/music_downstream
Paper scale: --config=configs/musicpile.py:1b --tasks=musictheorybench (domain_tasks.load_benchmark).
"""

import os

from absl import flags

from experiments import common
from spt_jax import cli
from spt_jax.storage import layout, markdown

_SEEDS = cli.define_list('seeds', '0', 'Seeds; each runs both arms.', cli.SEED)
_DELTA = common.delta_flag('delta', 0.1, 'δ of the SPT arm.')
_TASKS = flags.DEFINE_list(
  'tasks',
  '',
  'Task builders (domain_tasks.BUILDERS) or benchmark names; default: the '
  "domain's (abc_key,abc_metre | proof_next_line | smiles_real).",
)
_EXAMPLES = flags.DEFINE_integer('examples', 300, 'Examples per task (held-out documents permitting).', lower_bound=1)
common.at_least(_SEEDS, 1, 'seeds')

DOMAIN_TASKS = {'musicpile': ('abc_key', 'abc_metre'), 'proofpile': ('proof_next_line',), 'chempile': ('smiles_real',)}
PAPER_KEYS = {
  'musicpile': 'downstream/musictheorybench_points',
  'proofpile': 'downstream/math_mcqa_points',
  'chempile': 'downstream/chembench',
}


def build_tasks(config, names, out: str, examples: int) -> dict:
  """Task files from the documents the run held out (the prepared folder lists them), built once."""
  from spt_jax.data import prepare  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.evals import domain_tasks  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.train import run_plan  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  paths = {name: os.path.join(out, f'{name}.jsonl') for name in names}
  missing = [name for name, path in paths.items() if not os.path.exists(path) and name in domain_tasks.BUILDERS]
  if missing:
    prepared = prepare.prepare(run_plan.stage_config(config, 'pretrain'))
    documents = domain_tasks.held_out_documents(
      config.data.domain, prepared_dir=str(prepared.path), cache_dir=config.data.cache_dir
    )
    for name in missing:
      domain_tasks.write_jsonl(domain_tasks.build(name, documents, n=examples), paths[name])
  return {name: paths[name] if name in domain_tasks.BUILDERS else name for name in names}


def checkpoints(workdir: str) -> dict:
  """The arm's checkpoint at the end of pretraining and at its best finetuning step."""
  from spt_jax.analysis import (  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
    runs,
    seeds,
  )

  run = runs.read(workdir)
  best = seeds.arm(run)
  return {
    'before': layout.checkpoint_dir(layout.pretrain_dir(workdir), run.summary.steps),
    'after': layout.checkpoint_dir(layout.finetune_dir(workdir, best.best_finetune), best.best_step),
  }


def score(checkpoint: str, tasks: dict) -> dict:
  from spt_jax import export  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.evals import mcqa  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  loaded = export.load_checkpoint(checkpoint)
  return {
    name: mcqa.evaluate(loaded.params, loaded.model_cfg, loaded.tokenizer, task, max_len=loaded.seq_len)
    for name, task in tasks.items()
  }


def report(results: dict, tasks: dict, domain: str, delta: float) -> list:
  from spt_jax.analysis import seeds as seeds_lib  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  header = ['task', 'seed', 'NPT before FT', 'NPT after FT', 'SPT before FT', 'SPT after FT', 'SPT − NPT after FT']
  lines = markdown.table(header, [])
  differences = {name: [] for name in tasks}
  for name in tasks:
    for seed, arms in sorted(results.items()):
      cells = [arms[arm][moment][name] for arm in ('npt', 'spt') for moment in ('before', 'after')]
      difference = 100 * (cells[3]['accuracy'] - cells[1]['accuracy'])
      differences[name].append(difference)
      lines.append(
        markdown.row(
          [f'{name} (n={cells[0]["examples"]}, chance {cells[0]["chance"]:.2f})', seed]
          + [f'{c["accuracy"]:.3f} ± {c["accuracy_stderr"]:.3f}' for c in cells]
          + [f'{difference:+.1f} points']
        )
      )
  ours = '; '.join(
    f'{name} {seeds_lib.spread(values).plus_minus(1, " points")}' for name, values in differences.items()
  )
  paper_rows = [('SPT − NPT accuracy after finetuning', ours, PAPER_KEYS[domain])] if domain in PAPER_KEYS else []
  return [
    f"SPT at δ = {100 * delta:g}%. Accuracy ± standard error over the task's examples; a choice is scored by "
    'the summed log-likelihood of its tokens (spt_jax/evals/mcqa.py).',
    '\n'.join(lines),
    *([common.paper_table(paper_rows)] if paper_rows else []),
  ]


def _task_names() -> list:
  domain = common.config_name()
  names = [t for t in _TASKS.value if t] or list(DOMAIN_TASKS.get(domain, ()))
  if not names:
    raise ValueError(
      f'no built-in tasks for {domain!r}; pass --tasks (one of abc_key, abc_metre, proof_next_line, '
      'smiles_real, or a benchmark name)'
    )
  return names


def _runs(base) -> dict:
  _task_names()  # No tasks: stop before training.
  return common.arms(base, _DELTA.value, _SEEDS.value)


def _report(base, workdirs: dict) -> None:
  domain, names, seeds = common.config_name(), _task_names(), _SEEDS.value
  tasks = build_tasks(base, names, os.path.join(common.WORKDIR.value, 'tasks'), _EXAMPLES.value)
  results = {
    seed: {
      arm: {moment: score(path, tasks) for moment, path in checkpoints(workdirs[f'{arm}_seed{seed}']).items()}
      for arm in ('npt', 'spt')
    }
    for seed in seeds
  }
  from spt_jax.storage import files  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  files.write_json(os.path.join(common.WORKDIR.value, 'downstream.json'), results)
  common.write_report(
    f'Downstream accuracy on {domain}: NPT against SPT, before and after finetuning',
    report(results, tasks, domain, _DELTA.value),
  )


STUDY = common.Study(_runs, _report)

if __name__ == '__main__':
  common.run(STUDY)
