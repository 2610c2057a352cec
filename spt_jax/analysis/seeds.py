"""NPT→FT against SPT→FT over seeds (§2.2, Figs. 4-5): per-seed gains and forgetting, mean ± standard deviation.

Each arm is a pipeline workdir (W/pretrain, W/finetune/<grid point>, W/summary.json). An arm's result is the best
finetune over the grid from its last pretraining checkpoint, chosen by domain test loss as the pipeline chooses
(the paper's protocol); where the data had a validation split, also the clean protocol's (the point and step
chosen on validation, its test loss reported). Forgetting is compared at each arm's selected step and at equal
finetuning steps (the earlier of the two arms' selected steps, in both arms' selected finetunes).
"""

import math
import os

import numpy as np
from scipy import stats

from spt_jax.analysis import gains as gains_lib
from spt_jax.analysis import runs as runs_lib
from spt_jax.storage import files, layout, markdown, records

SETS = ('domain_test', 'general_test')


def _clean(run: runs_lib.Run, pretrain_tokens: float) -> dict | None:
  """The clean protocol's choice among the finetunes of one pretraining checkpoint (None without validation)."""
  best = records.best_clean([f for f in run.finetunes if float(f.pretrain_tokens) == pretrain_tokens])
  if best is None:
    return None
  return {
    'post_ft_loss': float(best.clean.domain_test_loss),
    'forgetting': best.clean_forgetting,
    'best_finetune': best.name,
    'best_step': int(best.clean.step),
  }


def arm(run: runs_lib.Run) -> dict:
  """One arm's numbers: pre- and post-finetuning domain loss, general loss before and after, forgetting (and
  under 'clean' the same by the clean protocol, None without a validation split)."""
  points = runs_lib.finetune_points(run)
  if not points:
    raise ValueError(f'{run.path}: no finetune with a finite best_domain_test_loss; rerun the study to finish it')
  best = points[-1]
  return {
    'clean': _clean(run, float(best.pretrain_tokens)),
    'run': run.name,
    'delta': run.domain_fraction,
    'pretrain_tokens': float(best.pretrain_tokens),
    'pre_ft_loss': float(best.domain_test_loss_before),
    'post_ft_loss': float(best.best_domain_test_loss),
    'general_before': float(best.general_test_loss_before),
    'general_after': float(best.general_test_loss_after),
    'forgetting': best.forgetting,
    'best_finetune': best.name,
    'best_step': int(best.best_step),
    'epochs': float(best.epochs),
    'stopped_early': best.stop_reason == 'early_stopping',  # The domain loss turned up (else: out of steps).
  }


def spread(values) -> dict:
  """Mean, sample standard deviation and the 95% confidence interval of the mean (Student's t) of the finite
  values; None where there are too few."""
  values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
  sd = float(values.std(ddof=1)) if len(values) > 1 else None
  mean = float(values.mean()) if len(values) else None
  half = None if sd is None else float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
  ci95 = None if half is None else [mean - half, mean + half]
  return {'mean': mean, 'sd': sd, 'n': int(len(values)), 'ci95': ci95}


def interval(summary: dict, digits: int = 2, suffix: str = '') -> str:
  """'[lo, hi]' of a spread's 95% confidence interval of the mean ('–' with fewer than two values)."""
  if summary.get('ci95') is None:
    return '–'
  low, high = summary['ci95']
  return f'[{low:.{digits}f}, {high:.{digits}f}]{suffix}'


def _general_at(run: runs_lib.Run, finetune: str, step: int) -> float | None:
  """The general test loss a finetune logged at `step` (None when it did not evaluate there)."""
  path = os.path.join(layout.finetune_dir(run.path, finetune), layout.METRICS)
  key = 'eval/general_test/loss'
  losses = [r[key] for r in files.read_jsonl(path) if r.get('step') == step and key in r]
  return float(losses[-1]) if losses else None


def _equal_steps(npt_run, spt_run, a: dict, b: dict) -> dict:
  """Both arms' forgetting after the same number of finetuning steps: the earlier of their selected steps."""
  step = min(a['best_step'], b['best_step'])
  out = {'step': step}
  for key, run, numbers in (('npt', npt_run, a), ('spt', spt_run, b)):
    general = _general_at(run, numbers['best_finetune'], step)
    out[key] = None if general is None else general - numbers['general_before']
  return out


def compare(pairs: dict) -> dict:
  """pairs: seed -> (NPT Run, SPT Run). Per-seed rows and, over seeds, mean and sample standard deviation."""
  rows = []
  for seed, (npt, spt) in sorted(pairs.items()):
    runs_lib.check_consistent([npt, spt])
    a, b = arm(npt), arm(spt)
    row = {'seed': seed, 'npt': a, 'spt': b, 'gain_pct': gains_lib.relative_gain(a['post_ft_loss'], b['post_ft_loss'])}
    row['equal_steps'] = _equal_steps(npt, spt, a, b)
    if a['clean'] and b['clean']:
      row['gain_pct_clean'] = gains_lib.relative_gain(a['clean']['post_ft_loss'], b['clean']['post_ft_loss'])
    rows.append(row)
  summary = {
    'npt_post_ft_loss': spread(r['npt']['post_ft_loss'] for r in rows),
    'spt_post_ft_loss': spread(r['spt']['post_ft_loss'] for r in rows),
    'npt_pre_ft_loss': spread(r['npt']['pre_ft_loss'] for r in rows),
    'spt_pre_ft_loss': spread(r['spt']['pre_ft_loss'] for r in rows),
    'gain_pct': spread(r['gain_pct'] for r in rows),
    'npt_forgetting': spread(r['npt']['forgetting'] for r in rows),
    'spt_forgetting': spread(r['spt']['forgetting'] for r in rows),
    'npt_general_after': spread(r['npt']['general_after'] for r in rows),
    'spt_general_after': spread(r['spt']['general_after'] for r in rows),
  }
  gains = [r['gain_pct'] for r in rows]
  summary['seeds_spt_better'] = int(sum(g > 0 for g in gains))
  summary['npt_forgetting_equal_steps'] = spread(r['equal_steps']['npt'] for r in rows)
  summary['spt_forgetting_equal_steps'] = spread(r['equal_steps']['spt'] for r in rows)
  clean = [r for r in rows if 'gain_pct_clean' in r]
  if clean:  # The clean protocol, over the seeds whose arms both had a validation split.
    summary['gain_pct_clean'] = spread(r['gain_pct_clean'] for r in clean)
    summary['seeds_spt_better_clean'] = int(sum(r['gain_pct_clean'] > 0 for r in clean))
    summary['npt_forgetting_clean'] = spread(r['npt']['clean']['forgetting'] for r in clean)
    summary['spt_forgetting_clean'] = spread(r['spt']['clean']['forgetting'] for r in clean)
  return {'rows': rows, 'summary': summary, 'seeds': len(rows)}


def trajectory(run: runs_lib.Run) -> dict:
  """Domain and general test loss through pretraining, then through the best finetune (tokens continue)."""
  best = arm(run)
  finetune = files.read_jsonl(os.path.join(layout.finetune_dir(run.path, best['best_finetune']), layout.METRICS))
  return trajectory_of(run.metrics, finetune, best['pretrain_tokens'], best['best_step'])


def trajectory_of(pretrain_metrics: list, finetune_metrics: list, start_tokens: float, best_step: int) -> dict:
  """The evaluations of both test sets in a pretraining's and a finetune's metrics.jsonl records, the finetune's
  tokens counted on from start_tokens (the pretraining tokens it started from)."""
  pretrain = [r for r in pretrain_metrics if all(f'eval/{s}/loss' in r for s in SETS)]
  finetune = [r for r in finetune_metrics if all(f'eval/{s}/loss' in r for s in SETS)]
  out = {
    'pretrain_tokens': [float(r['tokens']) for r in pretrain],
    'finetune_tokens': [start_tokens + float(r['tokens']) for r in finetune],
    'finetune_steps': [int(r['step']) for r in finetune],
    'best_step': best_step,
  }
  for name in SETS:
    out[f'pretrain_{name}'] = [float(r[f'eval/{name}/loss']) for r in pretrain]
    out[f'finetune_{name}'] = [float(r[f'eval/{name}/loss']) for r in finetune]
  return out


def plus_minus(summary: dict, digits: int = 4, suffix: str = '') -> str:
  if summary['mean'] is None:
    return '–'
  sd = '' if summary['sd'] is None else f' ± {summary["sd"]:.{digits}f}'
  return f'{summary["mean"]:.{digits}f}{sd}{suffix}'


def format_tables(result: dict) -> str:
  """Markdown: one row per seed, then mean ± sd over seeds."""
  rows = []
  for r in result['rows']:
    a, b = r['npt'], r['spt']
    rows.append(
      [r['seed'], *(f'{x:.4f}' for x in (a['pre_ft_loss'], a['post_ft_loss'], b['pre_ft_loss'], b['post_ft_loss']))]
      + [f'{r["gain_pct"]:+.2f}%', f'{a["forgetting"]:+.4f}', f'{b["forgetting"]:+.4f}']
      + [f'{arm["best_finetune"]} @{arm["best_step"]} ({arm["epochs"]:.1f} ep)' for arm in (a, b)]
    )
  s = result['summary']
  rows.append(
    ['mean ± sd']
    + [plus_minus(s[key]) for key in ('npt_pre_ft_loss', 'npt_post_ft_loss', 'spt_pre_ft_loss', 'spt_post_ft_loss')]
    + [plus_minus(s['gain_pct'], 2, '%'), plus_minus(s['npt_forgetting']), plus_minus(s['spt_forgetting']), '', '']
  )
  header = ['seed', 'NPT pre-FT', 'NPT→FT', 'SPT pre-FT', 'SPT→FT', 'G', 'NPT forgetting', 'SPT forgetting']
  lines = markdown.table([*header, 'NPT best FT', 'SPT best FT'], rows)
  equal = [
    [r['seed'], r['equal_steps']['step'], *(_signed(r['equal_steps'][k]) for k in ('npt', 'spt'))]
    for r in result['rows']
  ]
  equal.append(
    ['mean ± sd', '', plus_minus(s['npt_forgetting_equal_steps']), plus_minus(s['spt_forgetting_equal_steps'])]
  )
  lines += ['', 'Forgetting at equal finetuning steps (the earlier of the two selected steps):', '']
  lines += markdown.table(['seed', 'step', 'NPT forgetting', 'SPT forgetting'], equal)
  if 'gain_pct_clean' in s:
    clean = [
      [r['seed'], *(f'{r[k]["clean"]["post_ft_loss"]:.4f}' for k in ('npt', 'spt')), f'{r["gain_pct_clean"]:+.2f}%']
      + [_signed(r[k]['clean']['forgetting']) for k in ('npt', 'spt')]
      + [f'{r[k]["clean"]["best_finetune"]} @{r[k]["clean"]["best_step"]}' for k in ('npt', 'spt')]
      for r in result['rows']
      if 'gain_pct_clean' in r
    ]
    clean.append(
      ['mean ± sd', '', '', plus_minus(s['gain_pct_clean'], 2, '%')]
      + [plus_minus(s['npt_forgetting_clean']), plus_minus(s['spt_forgetting_clean']), '', '']
    )
    lines += ['', 'The clean protocol (point and step selected on the validation split, test loss reported):', '']
    header = ['seed', 'NPT→FT', 'SPT→FT', 'G', 'NPT forgetting', 'SPT forgetting', 'NPT chosen', 'SPT chosen']
    lines += markdown.table(header, clean)
  return '\n'.join(lines)


def _signed(value) -> str:
  return '–' if value is None else f'{value:+.4f}'
