"""WSD finetuning under early stopping: the decay runs from the best checkpoint once early stopping triggers."""

import json

import pytest

from spt_jax.evals import heldout as evaluation
from spt_jax.storage import records
from spt_jax.train import finetune_decay, loop, schedules
from tests.test_loop import tiny_config, tiny_data
from tests.test_schedules import _config
from tests.tiny import frozen


def test_wsd_in_steps_decays_over_the_last_steps_of_the_run():
  schedule = schedules.make_schedule(_config('wsd', decay_steps=30), 100, 1)
  assert float(schedule(70)) == pytest.approx(4e-4)  # Stable up to total − decay_steps...
  assert float(schedule(85)) == pytest.approx(4e-5 + (4e-4 - 4e-5) * 0.5)  # ...then linear...
  assert float(schedule(100)) == pytest.approx(4e-5)  # ...to final_lr at the end.
  early = schedules.make_schedule(_config('wsd', decay_steps=500), 100, 1)  # Never decays during warmup.
  assert float(early(10)) == pytest.approx(4e-4) and float(early(100)) == pytest.approx(4e-5)


def test_early_stopping_then_decay_from_the_best_state(tmp_path, monkeypatch):
  data = tiny_data()
  pretrain = loop.run(frozen(tiny_config(steps=2)), str(tmp_path / 'pretrain'), stage='pretrain', data=data)
  delta = tiny_config().mixture.domain_fraction
  assert pretrain.domain_fraction == delta  # The summary records the δ of the stages used.
  assert pretrain.stage_deltas == [{'from_tokens': 0, 'until_tokens': None, 'domain_fraction': delta}]
  # Evals of the stable phase at steps 0, 2, 4, 6, 8 (best 4, stop at 8); of the decay at 6 and 8.
  curve = iter([3.0, 2.0, 1.5, 1.7, 1.8, 1.4, 1.3])
  real_call = evaluation.Evaluator.heldout

  def scripted(self, params, *args, **kwargs):
    results = real_call(self, params, *args, **kwargs)
    results['domain_test']['loss'] = next(curve)
    return results

  monkeypatch.setattr(evaluation.Evaluator, 'heldout', scripted)
  config = tiny_config(
    init_from=str(tmp_path / 'pretrain'),
    **{'finetune.schedule': 'wsd', 'finetune.decay_steps': 4, 'finetune.max_steps': 1000},
  )
  workdir = tmp_path / 'finetune'
  summary = loop.run(frozen(config), str(workdir), stage='finetune', data=data)
  assert summary.decay['from_step'] == 4 and summary.decay['stable_steps'] == 8
  assert summary.stop_reason == 'budget' and summary.steps == 8
  assert summary.best.step == 8 and summary.best.eval['domain_test'] == 1.3
  assert summary.stage_deltas[0]['domain_fraction'] == 1.0 and summary.domain_fraction == delta
  assert summary.initial['domain_test'] == 3.0  # Before finetuning, carried over from the stable phase.
  assert json.loads((workdir / 'summary.json').read_text())['stop_reason'] == 'early_stopping'
  stable = [json.loads(line) for line in open(workdir / 'metrics.jsonl') if '"lr"' in line]
  decay = [json.loads(line) for line in open(workdir / 'decay' / 'metrics.jsonl')]
  assert [r['step'] for r in decay if 'eval/domain_test/loss' in r] == [6, 8]
  peak = max(r['lr'] for r in stable)
  assert all(r['lr'] == pytest.approx(peak) for r in stable if r['step'] > 2)  # Stable, no decay in sight.
  lrs = [r['lr'] for r in decay if 'lr' in r]
  assert lrs[0] == pytest.approx(peak) and all(
    a > b for a, b in zip(lrs, lrs[1:], strict=False)
  )  # Decays from the peak...
  assert lrs[-1] == pytest.approx(config.schedule.final_lr + (peak - config.schedule.final_lr) / 4)  # ...linearly.
  again = loop.run(frozen(config), str(workdir), stage='finetune', data=data)  # Both phases finished: nothing runs.
  assert again.best == summary.best and again.decay['from_step'] == 4


def _stopped(reason):
  return records.RunSummary(stage='finetune', steps=8, tokens=256, stop_reason=reason)


def test_constant_finetunes_and_pretraining_never_decay():
  config = tiny_config()

  assert not finetune_decay.wants_decay(config, 'finetune', _stopped('early_stopping'))
  config.finetune.schedule, config.finetune.decay_steps = 'wsd', 4
  assert finetune_decay.wants_decay(config, 'finetune', _stopped('early_stopping'))
  assert not finetune_decay.wants_decay(config, 'finetune', _stopped('budget'))
  assert not finetune_decay.wants_decay(config, 'pretrain', _stopped('early_stopping'))
  assert not finetune_decay.wants_decay(
    finetune_decay.decay_config(frozen(config), 4), 'finetune', _stopped('early_stopping')
  )
