"""PNG figures for the plan reports (matplotlib Agg): fits, forecasts, optimal δ, gains, cost, similarity."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

from spt_jax.analysis import cost as cost_lib
from spt_jax.analysis import (
  scaling,
  scaling_fit,
)


def _colors(n: int):
  return plt.cm.viridis(np.linspace(0.0, 0.9, max(n, 1)))


def _save(figure, path: str) -> str:
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
  return path


def _percent(delta: float) -> str:
  return f'δ={100 * delta:g}%'


def fit_plot(data: scaling_fit.ScalingData, law: scaling.ScalingLaw, path: str) -> str:
  """Observed domain train/test loss and gap against the joint fit, one colour per δ."""
  figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
  deltas = np.unique(data.delta)
  grid = np.geomspace(np.min(data.tokens), np.max(data.tokens), 200)
  for color, d in zip(_colors(len(deltas)), deltas, strict=True):
    mask = data.delta == d
    left.scatter(data.tokens[mask], data.test_loss[mask], s=12, color=color, marker='o')
    left.scatter(data.tokens[mask], data.train_loss[mask], s=12, color=color, marker='x')
    left.plot(grid, law.test_loss(d, grid), color=color, label=_percent(d))
    left.plot(grid, law.train_loss(d, grid), color=color, linestyle='--')
    right.scatter(data.tokens[mask], data.test_loss[mask] - data.train_loss[mask], s=12, color=color)
    right.plot(grid, law.gap(d, grid), color=color, label=_percent(d))
  left.set(
    xscale='log',
    xlabel='pretraining tokens',
    ylabel='domain loss (nats/token)',
    title='test (o, solid) and train (x, dashed): data vs fit',
  )
  right.set(
    xscale='log',
    xlabel='pretraining tokens',
    ylabel='test − train (nats/token)',
    title='train-test gap: data vs eq. (2)',
  )
  left.legend(fontsize=8)
  right.legend(fontsize=8)
  for axis in (left, right):
    axis.grid(True, which='both', alpha=0.3)
  return _save(figure, path)


def forecast_plot(law: scaling.ScalingLaw, deltas, token_range, path: str) -> str:
  """Forecast test and post-FT loss curves per δ, with each δ's overfitting onset marked."""
  figure, axis = plt.subplots(figsize=(8, 5))
  grid = np.geomspace(token_range[0], token_range[1], 300)
  for color, d in zip(_colors(len(deltas)), deltas, strict=True):
    axis.plot(grid, law.test_loss(d, grid), color=color, label=f'{_percent(d)} test')
    if law.finetune_delta:
      axis.plot(grid, law.post_ft_loss(d, grid), color=color, linestyle='--', label=f'{_percent(d)} post-FT')
    onset = scaling.overfitting_onset(law, d)
    if onset and token_range[0] <= onset <= token_range[1]:
      axis.plot([onset], [law.test_loss(d, onset)], marker='v', color=color, markersize=9)
  if law.token_range:
    axis.axvline(law.token_range[1], color='grey', linestyle=':', label='largest fitted budget')
  axis.set(
    xscale='log',
    xlabel='pretraining tokens',
    ylabel='domain loss (nats/token)',
    title='forecast domain loss (▼ overfitting onset)',
  )
  axis.grid(True, which='both', alpha=0.3)
  axis.legend(fontsize=8, ncol=2)
  return _save(figure, path)


def optimal_delta_plot(budgets, best_deltas, path: str, candidates=None, candidate_best=None) -> str:
  """Best δ (percent) against the pretraining budget."""
  figure, axis = plt.subplots(figsize=(8, 4.5))
  axis.plot(budgets, 100 * np.asarray(best_deltas), marker='o', label='best δ (continuous)')
  if candidate_best is not None:
    axis.step(
      budgets,
      100 * np.asarray(candidate_best),
      where='mid',
      linestyle='--',
      label=f'best of {", ".join(f"{100 * c:g}%" for c in candidates)}',
    )
  axis.set(
    xscale='log',
    xlabel='pretraining budget (tokens)',
    ylabel='optimal δ (%)',
    title='optimal domain fraction against budget',
  )
  axis.grid(True, which='both', alpha=0.3)
  axis.legend()
  return _save(figure, path)


def gains_plot(result, path: str) -> str:
  """Post-finetuning domain test loss against pretraining tokens for NPT, SPT (and a larger NPT)."""
  figure, axis = plt.subplots(figsize=(8, 5))
  rows = [result.npt] + ([result.npt_large] if result.npt_large else []) + result.spt
  for color, row in zip(_colors(len(rows)), rows, strict=True):
    label = f'{row.run} ({_percent(row.delta)}, {row.model or "model"})'
    axis.plot(row.curve['tokens'], row.curve['loss'], marker='o', color=color, label=label)
  axis.axhline(result.npt.post_ft_loss, color='grey', linestyle=':', label='NPT final post-FT loss')
  axis.set(
    xscale='log',
    xlabel='pretraining tokens',
    ylabel='best post-FT domain test loss',
    title='post-finetuning domain loss by pretraining budget',
  )
  axis.grid(True, which='both', alpha=0.3)
  axis.legend(fontsize=8)
  return _save(figure, path)


def cost_plot(costs: dict, path: str, max_inference_tokens: float | None = None) -> str:
  """Figure-3 style: total FLOPs (training + serving) against inference tokens for both strategies."""
  break_even = costs['break_even_inference_tokens']
  top = max_inference_tokens or (100 * break_even if 0 < break_even < np.inf else 1e15)
  tokens = np.geomspace(top * 1e-6, top, 300)
  figure, axis = plt.subplots(figsize=(8, 5))
  axis.plot(tokens, cost_lib.total_flops(costs, 'spt', tokens), label=f'SPT {costs["small"]["name"]}')
  axis.plot(tokens, cost_lib.total_flops(costs, 'finetune_large', tokens), label=f'finetune {costs["large"]["name"]}')
  if 0 < break_even < np.inf:
    axis.axvline(break_even, color='grey', linestyle=':', label=f'break-even {break_even:.3g} tokens')
  axis.set(
    xscale='log',
    yscale='log',
    xlabel='inference tokens served',
    ylabel='total FLOPs',
    title='training + inference compute',
  )
  axis.grid(True, which='both', alpha=0.3)
  axis.legend()
  return _save(figure, path)


def _short(name: str, width: int = 28) -> str:
  return name if len(name) <= width else '…' + name[-(width - 1) :]


def similarity_plot(rows: list, path: str) -> str:
  """Grouped bars of each metric per corpus against the reference."""
  keys = [k for k in ('unigram_jsd', 'bigram_jsd', 'trigram_jsd', 'c2st_auc', 'mauve') if k in rows[0]]
  figure, axis = plt.subplots(figsize=(max(6, 2 * len(rows) + 3), 4.5))
  width = 0.8 / len(keys)
  positions = np.arange(len(rows))
  for i, (color, key) in enumerate(zip(_colors(len(keys)), keys, strict=True)):
    axis.bar(positions + i * width, [row[key] for row in rows], width, color=color, label=key)
  axis.set_xticks(positions + width * (len(keys) - 1) / 2, [_short(row['corpus']) for row in rows], rotation=10)
  axis.set(ylim=(0, 1.05), ylabel='value (JSD in bits)', title=f'similarity to {_short(rows[0]["reference"], 60)}')
  axis.legend(fontsize=8, bbox_to_anchor=(1.01, 1.0), loc='upper left')
  axis.grid(True, axis='y', alpha=0.3)
  return _save(figure, path)


def seeds_plot(trajectories: dict, path: str, title: str = '') -> str:
  """Both arms' domain and general test loss over seeds: pretraining then finetuning (top), finetuning (bottom).

  trajectories: arm label -> list of seeds.trajectory dicts.
  """
  figure, axes = plt.subplots(2, 2, figsize=(12, 8))
  for color, (label, runs) in zip(
    ('tab:blue', 'tab:orange', 'tab:green', 'tab:red'), trajectories.items(), strict=False
  ):
    for index, t in enumerate(runs):
      name = label if index == 0 else None
      for column, eval_set in enumerate(('domain_test', 'general_test')):
        axes[0, column].plot(
          np.array(t['pretrain_tokens'] + t['finetune_tokens']) / 1e6,
          t[f'pretrain_{eval_set}'] + t[f'finetune_{eval_set}'],
          color=color,
          alpha=0.7,
          label=name,
        )
        axes[1, column].plot(
          t['finetune_steps'], t[f'finetune_{eval_set}'], color=color, alpha=0.7, marker='.', label=name
        )
        best = t['finetune_steps'].index(t['best_step']) if t['best_step'] in t['finetune_steps'] else None
        if best is not None:
          axes[1, column].plot(t['best_step'], t[f'finetune_{eval_set}'][best], color=color, marker='*', markersize=12)
  for column, eval_set in enumerate(('domain_test', 'general_test')):
    axes[0, column].set(
      xlabel='tokens (millions): pretraining, then finetuning',
      ylabel=f'{eval_set} loss',
      title=f'{eval_set} through pretraining and finetuning',
    )
    low = min(
      min(t[f'finetune_{eval_set}'] + t[f'pretrain_{eval_set}'][-3:]) for runs in trajectories.values() for t in runs
    )
    high = max(
      max(t[f'finetune_{eval_set}'] + t[f'pretrain_{eval_set}'][-3:]) for runs in trajectories.values() for t in runs
    )
    axes[0, column].set_ylim(low - 0.5, high + 1.5)  # The early pretraining losses would flatten the rest.
    axes[1, column].set(
      xlabel='finetuning step (★ best, by domain test loss)',
      ylabel=f'{eval_set} loss',
      title=f'{eval_set} during finetuning (best grid point)',
    )
    for row in range(2):
      axes[row, column].grid(True, alpha=0.3)
      axes[row, column].legend(fontsize=8)
  if title:
    figure.suptitle(title)
  return _save(figure, path)


def series_plot(series: dict, path: str, xlabel: str, ylabel: str, title: str, xscale: str = 'linear') -> str:
  """Lines with markers: label -> (x values, y values); a dotted zero line when y crosses zero."""
  figure, axis = plt.subplots(figsize=(8, 5))
  for color, (label, (x, y)) in zip(_colors(len(series)), series.items(), strict=True):
    axis.plot(x, y, marker='o', color=color, label=label)
  values = [v for _, y in series.values() for v in y]
  if values and min(values) < 0 < max(values):
    axis.axhline(0.0, color='grey', linestyle=':')
  axis.set(xscale=xscale, xlabel=xlabel, ylabel=ylabel, title=title)
  axis.grid(True, which='both', alpha=0.3)
  axis.legend(fontsize=8)
  return _save(figure, path)
