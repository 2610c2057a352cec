"""The whole pipeline on a tiny model: pretrain, a finetune grid (also from an earlier checkpoint), report."""

import json
import os
import signal

import pytest

from spt_jax.data import mixture as mixture_lib
from spt_jax.storage import records
from spt_jax.train import loop, pipeline, run_plan, validate
from tests import test_loop
from tests.tiny import frozen


def _counting(monkeypatch, module, name: str) -> list:
  """Records every call of module.name (its arguments), still calling it."""
  calls, function = [], getattr(module, name)

  def counted(*args, **kwargs):
    calls.append((args, kwargs))
    return function(*args, **kwargs)

  monkeypatch.setattr(module, name, counted)
  return calls


def test_pipeline_writes_summary_and_report(tmp_path, monkeypatch):
  config = test_loop.tiny_config(steps=6, eval_every=3, checkpoint_every=3, stage='pipeline')
  config.finetune.grid = ((1e-3, 1), (3e-3, 2))
  config.finetune.max_steps, config.finetune.eval_every, config.finetune.patience = 4, 2, 1
  config.finetune['from_steps'] = (3,)
  data = test_loop.tiny_data()
  workdir = str(tmp_path / 'w')
  loop._TRAINERS.clear()
  checks, plans = _counting(monkeypatch, validate, 'check'), _counting(monkeypatch, run_plan, 'make')
  experiment = validate.check(config, data=data)  # As an entry point reads the config.
  result = pipeline.run_pipeline(experiment, workdir, data=data)

  # The config is validated once, at the entry (its two stages' plans made to check them), never below it, and
  # each run's plan is made once: the pretraining and the four finetunes.
  assert len(checks) == 1 and len(plans) == 2 + 1 + 4

  # Four finetunes (two learning rates and warmups, two starting checkpoints), one compiled train step: the
  # schedule is an input of the step.
  finetune_trainer = list(loop._TRAINERS.values())[-1]
  assert finetune_trainer.train_step._cache_size() == 1
  lrs = {
    name: [r['lr'] for r in map(json.loads, open(os.path.join(workdir, 'finetune', name, 'metrics.jsonl')))]
    for name in ('lr0.001_wu1', 'lr0.003_wu2')
  }
  assert lrs['lr0.001_wu1'][-1] == pytest.approx(1e-3) and lrs['lr0.003_wu2'][-1] == pytest.approx(3e-3)

  names = [f.name for f in result.finetunes]
  assert names == ['lr0.001_wu1', 'lr0.003_wu2', 'step3_lr0.001_wu1', 'step3_lr0.003_wu2']
  for name in names:
    assert os.path.exists(os.path.join(workdir, 'finetune', name, 'summary.json'))
  assert result.pretrain.steps == 6 and result.pretrain.stop_reason == 'budget'
  first, from_step3 = result.finetunes[0], result.finetunes[2]
  assert (first.pretrain_step, from_step3.pretrain_step) == (6, 3)
  assert from_step3.pretrain_tokens == 3 * 8 * 16
  # Finetuning starts from the pretrained model: its loss before equals the pretraining's final loss.
  assert first.domain_test_loss_before == pytest.approx(result.pretrain.final['domain_test'], rel=1e-5)
  assert from_step3.domain_test_loss_before != pytest.approx(first.domain_test_loss_before, rel=1e-6)
  best = result.best
  assert best.best_domain_test_loss == min(f.best_domain_test_loss for f in result.finetunes)
  assert best.best_domain_test_loss < best.domain_test_loss_before
  assert best.epochs == pytest.approx(best.best_step * 8 / 40)
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['best']['name'] == best.name
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '## Finetuning grid' in report and best.name in report and 'forgetting' in report
  assert 'Domain data seen' in report
  assert '](report.png)' in report and (tmp_path / 'w' / 'report.png').stat().st_size > 10_000

  # Rerunning finishes at once: every run is found complete.
  again = pipeline.run_pipeline(experiment, workdir, data=data)
  assert [f.best_domain_test_loss for f in again.finetunes] == [f.best_domain_test_loss for f in result.finetunes]


def test_bad_grid_and_from_steps_fail_at_the_entry(tmp_path):
  config = test_loop.tiny_config(steps=6, stage='pipeline')
  config.finetune['from_steps'] = (9,)
  with pytest.raises(ValueError, match=r'from_steps \[9\] are outside'):
    validate.check(config, data=test_loop.tiny_data())
  config.finetune.from_steps = ()
  config.finetune.grid = ((0.0, 10),)
  with pytest.raises(ValueError, match='finetune.grid'):
    validate.check(config, data=test_loop.tiny_data())
  with pytest.raises(TypeError, match='takes the Experiment that validate.check'):  # Nothing below reads a config.
    pipeline.run_pipeline(config, str(tmp_path / 'a'), data=test_loop.tiny_data())
  assert not os.path.exists(tmp_path / 'a')


def _point(lr, warmup, test_loss, valid_loss=None):
  clean = None if valid_loss is None else records.Selection(step=4, domain_valid_loss=valid_loss, domain_test_loss=1.0)
  return records.FinetunePoint(
    name=records.GridPoint(lr, warmup).folder(),
    pretrain_step=10,
    pretrain_tokens=100,
    lr=lr,
    warmup=warmup,
    stop_reason='early_stopping',
    steps=8,
    best_step=4,
    best_domain_test_loss=test_loss,
    clean=clean,
  )


def _rounded(points) -> set:
  return {(float(f'{lr:.6g}'), warmup) for lr, warmup in points}


def test_a_winner_on_the_grid_edge_adds_the_next_point_that_way_up_to_the_limit():
  grid = [(lr, wu) for lr in (1e-4, 4e-4, 1.6e-3) for wu in (5, 10, 20)]
  losses = {point: 3.0 for point in grid}
  inner = [_point(lr, wu, loss) for (lr, wu), loss in {**losses, (4e-4, 10): 2.0}.items()]
  assert pipeline.extensions(grid, inner, limit=2) == {}  # The winner is inside the grid: nothing to add.

  top_lr = [_point(lr, wu, loss) for (lr, wu), loss in {**losses, (1.6e-3, 10): 2.0}.items()]
  added = pipeline.extensions(grid, top_lr, limit=2)
  assert _rounded(added) == {(6.4e-3, 10)}  # The grid's ratio (4x) further, at the winner's warmup.
  assert 'lr 0.0016 won (test) at the top' in next(iter(added.values()))

  # The added point won too, but one step past the grid is the limit: nothing more.
  past = [*top_lr, _point(6.4e-3, 10, 1.5)]
  assert pipeline.extensions(grid, past, limit=1) == {}
  assert _rounded(pipeline.extensions(grid, past, limit=2)) == {(2.56e-2, 10)}

  # Warmup at the bottom: 5 × 5/10 rounds to 2 steps; and the validation split's winner (another point, at the
  # bottom of lr) is extended too.
  both = [_point(lr, wu, loss, valid_loss=2.0) for (lr, wu), loss in {**losses, (4e-4, 5): 2.0}.items()]
  both[0] = _point(1e-4, 5, 3.0, valid_loss=1.0)
  added = pipeline.extensions(grid, both, limit=2)
  assert _rounded(added) == {(4e-4, 2), (2.5e-5, 5), (1e-4, 2)}
  assert 'warmup 5 won (test) at the bottom' in added[(4e-4, 2)]
  assert '(validation)' in added[(1e-4, 2)]

  # An axis of one value is the user's choice: never extended.
  single = [_point(lr, 10, loss) for lr, loss in ((1e-4, 3.0), (4e-4, 2.0))]
  assert _rounded(pipeline.extensions([(1e-4, 10), (4e-4, 10)], single, limit=2)) == {(1.6e-3, 10)}


def test_the_pipeline_extends_its_grid_and_reports_both_protocols(tmp_path):
  config = test_loop.tiny_config(steps=6, eval_every=3, checkpoint_every=3)
  config.finetune.grid = ((1e-4, 1), (1e-3, 1))
  config.finetune.max_steps, config.finetune.eval_every, config.finetune.patience = 6, 2, 1
  config.finetune.extend_grid = 1
  data = test_loop.tiny_data()
  data.eval_sets['domain_valid'] = data.eval_sets.pop('domain_train')  # Held-out counting rows beside the test.
  data.bytes_per_token['domain_valid'] = 2.0
  workdir = tmp_path / 'w'
  result = pipeline.run_pipeline(frozen(config), str(workdir), data=data)

  first = result.finetunes[:2]
  expected = pipeline.extensions(config.finetune.grid, first, limit=1)
  assert expected and [e.name for e in result.extended] == [p.folder() for p in expected]
  names = [f.name for f in result.finetunes]
  assert names[2:] == [e.name for e in result.extended]
  report = (workdir / 'report.md').read_text()
  assert all(f'Grid extended by `{e.name}`' in report for e in result.extended)

  for point in result.finetunes:
    logged = map(json.loads, open(workdir / 'finetune' / point.name / 'metrics.jsonl'))
    evals = [r for r in logged if 'eval/domain_test/loss' in r]
    test = {r['step']: r['eval/domain_test/loss'] for r in evals}
    valid = {r['step']: r['eval/domain_valid/loss'] for r in evals}
    assert point.best_step == min(test, key=test.get) and point.clean.step == min(valid, key=valid.get)
    assert point.clean.domain_test_loss == pytest.approx(test[point.clean.step])
    assert point.clean.domain_valid_loss == pytest.approx(valid[point.clean.step])
    # Early stopping waits for both sets: it stops at the first evaluation (patience 1, every 2 steps) after
    # the later of the two best steps.
    if point.stop_reason == 'early_stopping':
      assert max(test) == max(point.best_step, point.clean.step) + 2
  clean = result.best_clean
  assert clean.clean.domain_valid_loss == min(f.clean.domain_valid_loss for f in result.finetunes)
  assert f'`{clean.name}`: domain_test' in report and 'the clean protocol' in report
  read = records.PipelineSummary.from_json(json.loads((workdir / 'summary.json').read_text()))
  assert (read.best_clean, read.best) == (clean, result.best)
  assert (read.finetunes, read.extended) == (result.finetunes, result.extended)


def test_a_preemption_during_one_pipelines_pretraining_stops_every_pipeline_before_finetuning(tmp_path, monkeypatch):
  data = test_loop.tiny_data()
  configs = [test_loop.tiny_config(seed=seed, steps=6, checkpoint_every=3) for seed in (0, 1)]
  for config in configs:
    config.finetune.grid, config.finetune.max_steps = ((1e-3, 1),), 2
  local_batch = mixture_lib.Mixture.local_batch

  def notice_in_seed_1(self, step, *args):  # The notice arrives while the second pipeline pretrains.
    if self.seed == 1 and step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return local_batch(self, step, *args)

  monkeypatch.setattr(mixture_lib.Mixture, 'local_batch', notice_in_seed_1)
  workdirs = [str(tmp_path / f'w{seed}') for seed in (0, 1)]
  results = pipeline.run_pipelines([(frozen(c), w, data) for c, w in zip(configs, workdirs, strict=True)])
  assert [r.stop_reason for r in results] == ['preempted', 'preempted']
  assert results[0].pretrain.stop_reason == 'budget' and results[1].pretrain.stop_reason == 'preempted'
  assert not any(r.finetunes for r in results)
  trained = [files for _, _, files in os.walk(os.path.join(workdirs[0], 'finetune')) if 'metrics.jsonl' in files]
  assert not trained  # Its folder is only held (locked), nothing ran in it.
  monkeypatch.setattr(mixture_lib.Mixture, 'local_batch', local_batch)
  again = pipeline.run_pipelines([(frozen(c), w, data) for c, w in zip(configs, workdirs, strict=True)])  # The rerun.
  assert [r.stop_reason for r in again] == ['budget', 'budget'] and all(len(r.finetunes) == 1 for r in again)
