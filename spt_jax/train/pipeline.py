"""The paper's pipeline: pretrain, finetune every grid point from the same parameters, summarise and report.

W/pretrain is one run; W/finetune/<name>/ one run per grid point (and per earlier pretraining checkpoint in
finetune.from_steps); W/summary.json and W/report.md compare them. Every run resumes, so rerunning the same
command after a preemption continues where it stopped and skips what has finished.
"""

import os
import time
from typing import NamedTuple

import jax
from absl import logging

from spt_jax.analysis import plots, seeds
from spt_jax.data import prepare as prepare_lib
from spt_jax.storage import bucket, files, layout, markdown, records
from spt_jax.train import checkpoint, loop, run_plan, validate
from spt_jax.train import config as config_lib


def stage_folders(config, workdir: str) -> list[str]:
  """Every stage folder of the pipeline in workdir: W/pretrain, then W/finetune/<point> of every grid point."""
  workdir = os.path.abspath(workdir)
  labels = [None, *sorted(int(step) for step in config.finetune.from_steps)]
  return [layout.pretrain_dir(workdir)] + [
    layout.finetune_dir(workdir, point.folder(label))
    for label in labels
    for point in records.grid_points(config.finetune.grid)
  ]


def _selection(best_valid: records.Evaluation | None) -> records.Selection | None:
  """The clean protocol's choice from a finetune's best_valid (None without a validation split)."""
  losses = best_valid.eval if best_valid else {}
  if 'domain_valid' not in losses or 'domain_test' not in losses:
    return None
  return records.Selection(
    step=best_valid.step,
    domain_valid_loss=losses['domain_valid'],
    domain_test_loss=losses['domain_test'],
    general_test_loss_after=losses.get('general_test'),
    epochs=best_valid.epochs.get('domain'),
  )


class _Source(NamedTuple):
  """A pretraining checkpoint the grid finetunes from."""

  pipeline: int  # Its pipeline's index in the set.
  pretrain_step: int
  pretrain_tokens: int
  init_from: str  # The pretraining workdir (its last step) or one checkpoint's folder.
  label: int | None  # The step in the finetune folders' names (None: the last step).


def _finetune_entry(source: _Source, point: records.GridPoint, summary: records.RunSummary) -> records.FinetunePoint:
  initial, best = summary.initial or {}, summary.best or records.Evaluation(step=0)
  return records.FinetunePoint(
    name=point.folder(source.label),
    pretrain_step=source.pretrain_step,
    pretrain_tokens=source.pretrain_tokens,
    init_step=summary.init_step,
    lr=point.lr,
    warmup=point.warmup,
    stop_reason=summary.stop_reason,
    steps=summary.steps,
    best_domain_test_loss=best.eval.get('domain_test'),
    best_step=summary.best.step if summary.best else None,
    epochs=best.epochs.get('domain'),
    domain_test_loss_before=initial.get('domain_test'),
    general_test_loss_before=initial.get('general_test'),
    general_test_loss_after=best.eval.get('general_test'),
    domain_train_loss_after=best.eval.get('domain_train'),
    wall_time_s=summary.wall_time_s,
    mcqa_at_best=best.mcqa,
    clean=_selection(summary.best_valid),
  )


def extensions(grid, points: list[records.FinetunePoint], limit: int) -> dict[records.GridPoint, str]:
  """Grid points to add, with why: where a protocol's best point sits on the edge of an axis (lr or warmup) of
  two or more values, the next value that way (the ratio of the edge to its neighbour, for warmup at least 1),
  at the winner's other coordinate; at most `limit` values past the grid's own range on each side."""
  grid = records.grid_points(grid)
  grid_values = {'lr': sorted({p.lr for p in grid}), 'warmup': sorted({p.warmup for p in grid})}
  tried = {(p.lr, p.warmup) for p in points}
  added = {}
  for protocol, winner in (('test', records.best(points)), ('validation', records.best_clean(points))):
    if winner is None:
      continue
    for axis, original in grid_values.items():
      if len(original) < 2:  # One value: the user fixed this axis.
        continue
      values = sorted({getattr(p, axis) for p in points})
      won = getattr(winner, axis)
      for side, edge, inner in (('top', values[-1], values[-2]), ('bottom', values[0], values[1])):
        past = sum(v > original[-1] for v in values) if side == 'top' else sum(v < original[0] for v in values)
        if won != edge or past >= limit or edge <= 0:
          continue
        value = edge * edge / inner if inner > 0 else edge * 2
        if axis == 'warmup':
          value = int(round(value))
          if value < 1 or value == edge:
            continue
        point = records.GridPoint(value, winner.warmup) if axis == 'lr' else records.GridPoint(winner.lr, value)
        if point not in tried and point not in added:
          added[point] = f'{axis} {won:g} won ({protocol}) at the {side} of the grid'
  return added


def run_pipeline(config: config_lib.Experiment, workdir: str, data=None) -> records.PipelineSummary:
  """Pretrains into W/pretrain, finetunes each grid point into W/finetune/, writes W/summary.json, W/report.md.

  config: the Experiment an entry point read and validated as a pipeline (validate.check with stage='pipeline':
  every stage, the finetuning grid and from_steps); the stages below take it as valid.
  """
  return run_pipelines([(config, workdir, data)])[0]


def run_pipelines(pipelines: list[tuple]) -> list[records.PipelineSummary]:
  """Runs several pipelines, given as (config, workdir, data or None), as `run_pipeline` runs each; their stages
  train config.runs_together at a time where shapes allow (every pretraining together, then every finetune)."""
  started = time.time()
  folders = []
  for config, workdir, _ in pipelines:
    config_lib.require_experiment(config, 'pipeline.run_pipeline')
    folders += [workdir, *stage_folders(config, workdir)]
  # W and every stage folder, taken before any file is touched (re-entered when the caller already holds them).
  with files.WorkdirLock(folders, enabled=jax.process_index() == 0):
    results = _run_locked(pipelines)
    for (_, workdir, _), result in zip(pipelines, results, strict=True):
      reporting = time.time()
      if jax.process_index() == 0 and result.pretrain is not None:
        plotted = _plot(result, workdir)
        files.write_text(os.path.join(workdir, layout.REPORT), report(result, plotted))
      result.timing['report'] = round(time.time() - reporting, 3)
      result.wall_time_s = round(time.time() - started, 1)
      if jax.process_index() == 0 and result.pretrain is not None:
        files.write_json(os.path.join(workdir, layout.SUMMARY), result)
      report_at = bucket.located(os.path.join(workdir, layout.REPORT))  # A bucket's URL when W mirrors one.
      logging.info('Pipeline stopped (%s); report: %s', result.stop_reason, report_at)
  return results


def _run_locked(pipelines: list[tuple]) -> list[records.PipelineSummary]:
  """The stages of run_pipelines, once their folders are held."""
  together = min(loop.runs_at_once(config.runs_together) for config, _, _ in pipelines)
  started = time.time()
  prepared = []
  for config, workdir, data in pipelines:
    data = prepare_lib.prepare(run_plan.stage_config(config, 'pretrain')) if data is None else data
    validate.check_vocab(config, data)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      checkpoint.write_config(workdir, config)
    prepared.append((config, layout.pretrain_dir(os.path.abspath(workdir)), data))
  timing = {'prepare': round(time.time() - started, 3)}  # Of every pipeline together (they share their stages).
  started = time.time()
  runs = [loop.Run(c, folder, 'pretrain', data=d) for c, folder, d in prepared]
  pretrains = loop.run_many(runs, together)
  timing['pretrain'] = round(time.time() - started, 3)
  results, sources = [], []  # sources: the checkpoints to finetune from.
  for p, ((config, pretrain_dir, _), pretrain) in enumerate(zip(prepared, pretrains, strict=True)):
    stop_reason = 'preempted' if pretrain is None else pretrain.stop_reason  # None: not started (preempted).
    results.append(records.PipelineSummary(pretrain, stop_reason))
    if pretrain is None or not pretrain.finished:
      continue
    tokens_per_step = pretrain.tokens // max(pretrain.steps, 1)
    sources.append(_Source(p, pretrain.steps, pretrain.tokens, pretrain_dir, None))
    sources += [
      _Source(p, s, s * tokens_per_step, layout.checkpoint_dir(pretrain_dir, s), s)
      for s in sorted(int(step) for step in config.finetune.from_steps)
    ]
  if any(result.stop_reason == 'preempted' for result in results):
    # A preemption notice stops every pipeline: none starts finetuning now (the rerun goes on where each stopped).
    sources = []
    for result in results:
      if result.pretrain is not None and result.pretrain.finished:
        result.stop_reason = 'preempted'
  started = time.time()
  points = {source: [] for source in sources}  # The finetunes of each source, as they finish.
  pending = [
    (source, point) for source in sources for point in records.grid_points(prepared[source.pipeline][0].finetune.grid)
  ]
  while pending:  # The grid, then each round of its extensions.
    runs = []
    for source, point in pending:
      config, pretrain_dir, data = prepared[source.pipeline]
      folder = layout.finetune_dir(os.path.dirname(pretrain_dir), point.folder(source.label))
      runs.append(loop.Run(config_lib.replace(config, init_from=source.init_from), folder, 'finetune', point, data))
    summaries = loop.run_many(runs, together)
    for (source, point), summary in zip(pending, summaries, strict=True):
      if summary is None or summary.stop_reason == 'preempted':  # None: not started (an earlier one was).
        results[source.pipeline].stop_reason = 'preempted'
      if summary is not None:
        points[source].append(_finetune_entry(source, point, summary))
    pending = []
    if any(result.stop_reason == 'preempted' for result in results):
      break  # The rerun extends once every point has finished.
    for source, entries in points.items():
      config = prepared[source.pipeline][0]
      for point, why in extensions(config.finetune.grid, entries, config.finetune.extend_grid).items():
        pending.append((source, point))
        results[source.pipeline].extended.append(records.Extension(point.folder(source.label), why))
        logging.info('Finetuning grid extended by %s: %s.', point.folder(source.label), why)
  timing['finetune'] = round(time.time() - started, 3)
  for source, entries in points.items():
    results[source.pipeline].finetunes += entries
  for result in results:
    result.best = records.best(result.finetunes)
    result.best_clean = records.best_clean(result.finetunes)
    result.timing = dict(timing)
  return results


def _plot(result: records.PipelineSummary, workdir: str) -> bool:
  """W/report.png: domain and general test loss through pretraining and the best finetune; whether it was drawn
  (not without a best finetune, nor when the metrics hold no evaluation of both sets)."""
  best = result.best
  if best is None:
    return False
  metrics = [
    files.read_jsonl(os.path.join(folder, layout.METRICS))
    for folder in (layout.pretrain_dir(workdir), layout.finetune_dir(workdir, best.name))
  ]
  trajectory = seeds.trajectory_of(*metrics, best.pretrain_tokens, best.best_step)
  if not trajectory['pretrain_tokens'] or not trajectory['finetune_tokens']:
    return False
  label = f'δ = {100 * result.pretrain.domain_fraction:g}%, finetuned at {best.name}'
  plots.seeds_plot({label: [trajectory]}, os.path.join(workdir, layout.REPORT_PLOT), os.path.basename(workdir))
  return True


def _number(value, digits=4) -> str:
  return '–' if value is None else f'{value:.{digits}f}'


def report(result: records.PipelineSummary, plotted: bool = False) -> str:
  """A short Markdown report of a pipeline's summary (with W/report.png when plotted)."""
  pretrain, best = result.pretrain, result.best
  initial, final = pretrain.initial or {}, pretrain.final or {}
  epochs = pretrain.data['epochs']
  lines = [
    '# Specialized pretraining: pretrain, then finetune',
    '',
    f'Model `{pretrain.model}` ({pretrain.params / 1e6:.2f}M parameters), sequences of '
    f'{pretrain.seq_len} tokens, domain fraction δ = {pretrain.domain_fraction:g}.',
    '',
    '## Pretraining',
    '',
    f'{pretrain.steps} steps, {pretrain.tokens:,} tokens ({pretrain.stop_reason}). Domain data seen '
    f'{epochs.get("domain", 0):.2f} epochs ({pretrain.data["tokens"].get("domain", 0):,} tokens); general '
    f'data {epochs.get("general", 0):.3f} epochs.',
    '',
    *markdown.table(
      ['eval set', 'loss at start', 'loss at end'],
      [[name, _number(initial.get(name)), _number(final.get(name))] for name in sorted(final)],
    ),
  ]
  if 'domain_test' in final and 'domain_train' in final:
    lines += ['', f'Train-test gap on the domain at the end: {final["domain_test"] - final["domain_train"]:+.4f}.']
  lines += ['', '## Finetuning grid', '']
  if not result.finetunes:
    lines.append(f'No finetuning ran (pretraining stopped: {pretrain.stop_reason}).')
  else:
    lines += markdown.table(
      ['run', 'from step', 'lr', 'warmup', 'steps', 'stop', 'best step', 'domain epochs']
      + ['domain_test before → best', 'general_test before → after (forgetting)'],
      [],
    )
    for f in result.finetunes:
      forgetting = f.forgetting
      lines.append(
        markdown.row(
          [f.name, f.pretrain_step, f'{f.lr:g}', f.warmup, f.steps, f.stop_reason, f.best_step]
          + [
            _number(f.epochs, 2),
            f'{_number(f.domain_test_loss_before)} → {_number(f.best_domain_test_loss)}',
            f'{_number(f.general_test_loss_before)} → {_number(f.general_test_loss_after)} '
            f'({"–" if forgetting is None else f"{forgetting:+.4f}"})',
          ]
        )
      )
  for extension in result.extended:
    lines += ['', f'Grid extended by `{extension.name}`: {extension.why}.']
  if best is not None:
    gain = best.domain_test_loss_before - best.best_domain_test_loss
    lines += [
      '',
      '## Best point',
      '',
      f"Stopped and selected on the domain test split (the paper's protocol): `{best.name}`: domain_test "
      f'{best.domain_test_loss_before:.4f} → {best.best_domain_test_loss:.4f} ({-gain:+.4f}) at finetuning step '
      f'{best.best_step} ({_number(best.epochs, 2)} domain epochs); general_test '
      f'{_number(best.general_test_loss_before)} → {_number(best.general_test_loss_after)}.',
    ]
  clean = result.best_clean
  if clean is not None:
    lines += [
      '',
      f'Selected on the validation split, reported on test (the clean protocol): `{clean.name}`: domain_test '
      f'{clean.domain_test_loss_before:.4f} → {clean.clean.domain_test_loss:.4f} at finetuning step '
      f'{clean.clean.step} (domain_valid {clean.clean.domain_valid_loss:.4f}, {_number(clean.clean.epochs, 2)} '
      f'domain epochs); general_test {_number(clean.general_test_loss_before)} → '
      f'{_number(clean.clean.general_test_loss_after)}.',
    ]
  if result.stop_reason == 'preempted':
    lines += ['', 'The pipeline was preempted: rerun the same command to continue.']
  if plotted:
    lines += ['', f'![domain and general test loss through pretraining and the best finetune]({layout.REPORT_PLOT})']
  finetune_seconds = sum(f.wall_time_s or 0 for f in result.finetunes)
  lines += [
    '',
    f'Training time: pretraining {pretrain.wall_time_s or 0:.0f} s, finetuning '
    f'{finetune_seconds:.0f} s ({len(result.finetunes)} run{"s" * (len(result.finetunes) != 1)}).',
    '',
  ]
  return '\n'.join(lines)
