"""The whole pipeline on a tiny model: pretrain, a finetune grid (also from an earlier checkpoint), report."""

import json
import os

import pytest

from spt_jax.train import loop, pipeline
from tests import test_loop


def test_pipeline_writes_summary_and_report(tmp_path):
  config = test_loop.tiny_config(steps=6, eval_every=3, checkpoint_every=3)
  config.finetune.grid = ((1e-3, 1), (3e-3, 2))
  config.finetune.max_steps, config.finetune.eval_every, config.finetune.patience = 4, 2, 1
  config.finetune['from_steps'] = (3,)
  data = test_loop.tiny_data()
  workdir = str(tmp_path / 'w')
  loop._TRAINERS.clear()
  result = pipeline.run_pipeline(config, workdir, data=data)

  # Four finetunes (two learning rates and warmups, two starting checkpoints), one compiled train step: the
  # schedule is an input of the step.
  finetune_trainer = list(loop._TRAINERS.values())[-1]
  assert finetune_trainer.train_step._cache_size() == 1
  lrs = {
    name: [r['lr'] for r in map(json.loads, open(os.path.join(workdir, 'finetune', name, 'metrics.jsonl')))]
    for name in ('lr0.001_wu1', 'lr0.003_wu2')
  }
  assert lrs['lr0.001_wu1'][-1] == pytest.approx(1e-3) and lrs['lr0.003_wu2'][-1] == pytest.approx(3e-3)

  names = [f.name for f in result['finetunes']]
  assert names == ['lr0.001_wu1', 'lr0.003_wu2', 'step3_lr0.001_wu1', 'step3_lr0.003_wu2']
  for name in names:
    assert os.path.exists(os.path.join(workdir, 'finetune', name, 'summary.json'))
  assert result['pretrain']['steps'] == 6 and result['pretrain']['stop_reason'] == 'budget'
  first, from_step3 = result['finetunes'][0], result['finetunes'][2]
  assert (first.pretrain_step, from_step3.pretrain_step) == (6, 3)
  assert from_step3.pretrain_tokens == 3 * 8 * 16
  # Finetuning starts from the pretrained model: its loss before equals the pretraining's final loss.
  assert first.domain_test_loss_before == pytest.approx(result['pretrain']['final']['domain_test'], rel=1e-5)
  assert from_step3.domain_test_loss_before != pytest.approx(first.domain_test_loss_before, rel=1e-6)
  best = result['best']
  assert best.best_domain_test_loss == min(f.best_domain_test_loss for f in result['finetunes'])
  assert best.best_domain_test_loss < best.domain_test_loss_before
  assert best.epochs == pytest.approx(best.best_step * 8 / 40)
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['best']['name'] == best.name
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '## Finetuning grid' in report and best.name in report and 'forgetting' in report
  assert 'Domain data seen' in report

  # Rerunning finishes at once: every run is found complete.
  again = pipeline.run_pipeline(config, workdir, data=data)
  assert [f.best_domain_test_loss for f in again['finetunes']] == [f.best_domain_test_loss for f in result['finetunes']]


def test_bad_grid_and_from_steps_fail_before_work(tmp_path):
  config = test_loop.tiny_config(steps=6)
  config.finetune['from_steps'] = (9,)
  with pytest.raises(ValueError, match=r'from_steps \[9\] are outside'):
    pipeline.run_pipeline(config, str(tmp_path / 'a'), data=test_loop.tiny_data())
  config.finetune.from_steps = ()
  config.finetune.grid = ((0.0, 10),)
  with pytest.raises(ValueError, match='finetune.grid'):
    pipeline.run_pipeline(config, str(tmp_path / 'b'), data=test_loop.tiny_data())
  assert not os.path.exists(tmp_path / 'a' / 'pretrain')
