"""Reads run and pipeline workdirs (config.json, metrics.jsonl, summary.json) and checks they can be compared."""

import csv
import dataclasses
import json
import math
import os
import warnings

import numpy as np

from spt_jax.analysis import scaling_fit
from spt_jax.storage import files, layout, records


@dataclasses.dataclass
class Run:
  """One workdir: a single run, or a pipeline whose pretraining run lies in W/pretrain."""

  path: str
  config: dict
  summary: records.RunSummary  # The (pretraining) run's summary.json.
  metrics: list  # The pretraining run's metrics.jsonl records.
  finetunes: list[records.FinetunePoint]  # The pipeline's finetuning runs ([] for a single run).

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.path))

  @property
  def domain_fraction(self) -> float:
    """δ of the stages the run used (SCPT: its stage δ); summaries older than stage_deltas recorded the base δ."""
    value = self.summary.domain_fraction
    stages = self.config.get('mixture', {}).get('stages') or ()
    if stages and self.summary.stage_deltas is None:
      value = max(float(dict(weights).get('domain', 0.0)) for _, weights in stages)
    if value is None:
      value = self.config.get('mixture', {}).get('domain_fraction')
    if value is None:
      raise ValueError(f'{self.path}: neither summary.json nor config.json gives domain_fraction; is it a spt_jax run?')
    return float(value)

  @property
  def tokenizer(self) -> str:
    return str(self.summary.tokenizer or self.config.get('data', {}).get('tokenizer', ''))

  @property
  def seq_len(self):
    return self.summary.seq_len or self.config.get('data', {}).get('seq_len')

  @property
  def model(self) -> str:
    return str(self.summary.model or self.config.get('model', {}).get('preset', ''))


def _read_json(path: str, what: str):
  if not os.path.exists(path):
    raise ValueError(f'{path} does not exist: {what}')
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f'{path} is not valid JSON ({error}); the run may still be writing it') from error


def _read_metrics(path: str) -> list:
  if not os.path.exists(path):
    raise ValueError(f'{path} does not exist: point at a run workdir that has logged metrics')
  return files.read_jsonl(path)


def read(workdir: str) -> Run:
  """A run or pipeline workdir; one-line errors when its files are missing."""
  if not os.path.isdir(workdir):
    raise ValueError(f'workdir {workdir} does not exist; pass the folder a run wrote (with summary.json)')
  pretrain = layout.pretrain_dir(workdir)
  if os.path.isdir(pretrain):
    top = _read_json(os.path.join(workdir, layout.SUMMARY), 'the pipeline has not finished; wait or rerun it')
    run_dir = pretrain
  else:
    top, run_dir = None, workdir
  summary = _read_json(os.path.join(run_dir, layout.SUMMARY), 'the run has not finished; wait or rerun it')
  config_path = os.path.join(run_dir, layout.CONFIG)
  config = _read_json(config_path, 'not a spt_jax workdir') if os.path.exists(config_path) else {}
  metrics = _read_metrics(os.path.join(run_dir, layout.METRICS))
  finetunes = [] if top is None else records.PipelineSummary.from_json(top).finetunes
  return Run(workdir, config, records.RunSummary.from_json(summary), metrics, finetunes)


def check_consistent(runs: list) -> None:
  """Runs compared or fitted together must share tokenizer and sequence length (losses differ otherwise)."""
  for attribute, label in (('tokenizer', 'tokenizers'), ('seq_len', 'sequence lengths')):
    values = {str(getattr(run, attribute)) for run in runs if getattr(run, attribute)}
    if len(values) > 1:
      names = ', '.join(f'{run.name}={getattr(run, attribute)}' for run in runs)
      raise ValueError(f'runs use different {label} ({names}); losses are not comparable: compare runs of one setup')


def eval_curve(run: Run, sets=('domain_train', 'domain_test')) -> dict:
  """Tokens and losses of every evaluation (step > 0) in metrics.jsonl; rows with NaN dropped with a warning."""
  keys = [f'eval/{name}/loss' for name in sets]
  rows = [r for r in run.metrics if any(k in r for k in keys) and r.get('tokens', 0) > 0]
  missing = [name for name, key in zip(sets, keys, strict=True) if not any(key in r for r in rows)]
  if missing:
    raise ValueError(
      f'{run.path}: metrics.jsonl has no eval/{missing[0]}/loss after step 0; the fit needs the '
      f'eval sets {", ".join(sets)} (set config.data.domain_train_sequences > 0 and eval_every > 0)'
    )
  good = [r for r in rows if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)]
  if len(good) < len(rows):
    warnings.warn(
      f'{run.path}: {len(rows) - len(good)} of {len(rows)} evaluations have NaN or missing losses '
      '(diverged or cut off); they are left out',
      stacklevel=2,
    )
  if not good:
    raise ValueError(f'{run.path}: no evaluation with finite {" and ".join(sets)} losses after step 0')
  curve = {'tokens': np.array([float(r['tokens']) for r in good])}
  for name, key in zip(sets, keys, strict=True):
    curve[name] = np.array([float(r[key]) for r in good])
  return curve


def finetune_points(run: Run) -> list:
  """Per finetuned pretraining checkpoint: the best finetune over the grid, sorted by pretraining tokens."""
  by_tokens = {}
  for entry in run.finetunes:
    loss = entry.best_domain_test_loss
    if loss is None or not math.isfinite(float(loss)):
      warnings.warn(
        f'{run.path}: a finetune at {entry.pretrain_tokens} tokens has no finite best_domain_test_loss; left out',
        stacklevel=2,
      )
      continue
    tokens = float(entry.pretrain_tokens)
    if tokens not in by_tokens or loss < by_tokens[tokens].best_domain_test_loss:
      by_tokens[tokens] = entry
  return [by_tokens[t] for t in sorted(by_tokens)]


def scaling_data(runs: list) -> scaling_fit.ScalingData:
  """Every run's domain train/test evaluations, and finetuning deltas where the runs are pipelines."""
  check_consistent(runs)
  columns = {k: [] for k in ('delta', 'tokens', 'train', 'test', 'ft_delta', 'ft_tokens', 'ft_drop', 'ft_before')}
  for run in runs:
    curve = eval_curve(run)
    delta = run.domain_fraction
    if run.config.get('mixture', {}).get('stages'):
      warnings.warn(
        f'{run.path} used a staged mixture (labelled by its stage δ={delta:g}); the law assumes one δ throughout',
        stacklevel=2,
      )
    columns['delta'] += [delta] * len(curve['tokens'])
    columns['tokens'] += list(curve['tokens'])
    columns['train'] += list(curve['domain_train'])
    columns['test'] += list(curve['domain_test'])
    for entry in finetune_points(run):
      before = entry.domain_test_loss_before
      if before is None:
        continue
      columns['ft_delta'].append(delta)
      columns['ft_tokens'].append(float(entry.pretrain_tokens))
      columns['ft_drop'].append(float(before) - float(entry.best_domain_test_loss))
      columns['ft_before'].append(float(before))
  arrays = {k: np.array(v, float) for k, v in columns.items()}
  return scaling_fit.ScalingData(
    arrays['delta'],
    arrays['tokens'],
    arrays['train'],
    arrays['test'],
    arrays['ft_delta'],
    arrays['ft_tokens'],
    arrays['ft_drop'],
    arrays['ft_before'],
  )


CSV_COLUMNS = ('delta', 'tokens', 'domain_train_loss', 'domain_test_loss')


def read_csv(path: str) -> scaling_fit.ScalingData:
  """A CSV with columns delta (fraction), tokens, domain_train_loss, domain_test_loss[, post_ft_domain_test_loss]."""
  if not os.path.exists(path):
    raise ValueError(f'{path} does not exist; pass a CSV with columns {",".join(CSV_COLUMNS)}')
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f'{path} lacks column(s) {", ".join(missing)}; the header must hold {",".join(CSV_COLUMNS)}')
    rows = list(reader)
  try:
    values = {c: np.array([float(r[c]) if r[c] not in ('', None) else math.nan for r in rows]) for c in CSV_COLUMNS}
    post = np.array(
      [
        float(r['post_ft_domain_test_loss']) if r.get('post_ft_domain_test_loss') not in ('', None) else math.nan
        for r in rows
      ]
    )
  except ValueError as error:
    raise ValueError(f'{path}: a value is not a number ({error}); fix that row') from error
  if np.any(values['delta'] > 1):
    raise ValueError(
      f'{path}: δ up to {np.max(values["delta"]):g} > 1: the delta column is a fraction (0.02 for '
      '2%), it looks like percent: divide it by 100'
    )
  bad = ~np.all([np.isfinite(v) for v in values.values()], axis=0)
  if np.any(bad):
    raise ValueError(
      f'{path}: {int(np.sum(bad))} row(s) have NaN or empty values (first at data row '
      f'{int(np.argmax(bad)) + 1}); drop or fill them'
    )
  has_post = np.isfinite(post)
  return scaling_fit.ScalingData(
    values['delta'],
    values['tokens'],
    values['domain_train_loss'],
    values['domain_test_loss'],
    values['delta'][has_post],
    values['tokens'][has_post],
    values['domain_test_loss'][has_post] - post[has_post],
    values['domain_test_loss'][has_post],
  )
