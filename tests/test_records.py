"""Typed records of summary.json (spt_jax/storage/records.py): written as strict JSON, read back, older ones too."""

import dataclasses
import json

import pytest

from spt_jax.storage import files, records


def test_a_finetune_point_round_trips_through_summary_json_and_reads_older_records():
  point = records.FinetunePoint(
    name='lr0.001_wu5',
    pretrain_step=10,
    pretrain_tokens=1000,
    lr=1e-3,
    warmup=5,
    stop_reason='early_stopping',
    steps=30,
    best_step=20,
    best_domain_test_loss=float('nan'),
    general_test_loss_before=3.0,
    general_test_loss_after=3.5,
  )
  record = json.loads(files.dumps({'finetunes': [point], 'best': None}))['finetunes'][0]
  assert record['best_domain_test_loss'] is None and record['name'] == 'lr0.001_wu5'  # Strict JSON: NaN is null.
  again = records.FinetunePoint.from_json({**record, 'a_field_of_a_later_version': 1})
  assert again == dataclasses.replace(point, best_domain_test_loss=None)
  assert again.forgetting == 0.5 and not again.finished  # No finite best loss: not comparable.
  assert dataclasses.replace(again, best_domain_test_loss=2.5).finished
  older = records.FinetunePoint.from_json({k: v for k, v in record.items() if k not in ('init_step', 'mcqa_at_best')})
  assert older.init_step is None and older.mcqa_at_best == {}
  assert dataclasses.replace(older, general_test_loss_after=None).forgetting is None


def test_a_run_summary_round_trips_with_its_evaluations_and_refuses_what_is_not_one():
  best = records.Evaluation(step=8, tokens=256, eval={'domain_test': 1.5}, epochs={'domain': 0.8})
  summary = records.RunSummary(
    stage='finetune', steps=10, tokens=320, stop_reason='early_stopping', initial={'domain_test': 3.0}, best=best
  )
  record = json.loads(files.dumps(summary))
  assert record['best'] == {
    'step': 8,
    'tokens': 256,
    'eval': {'domain_test': 1.5},
    'epochs': {'domain': 0.8},
    'mcqa': {},
  }
  again = records.RunSummary.from_json({**record, 'a_field_of_a_later_version': 1})
  assert again == summary and again.best.eval['domain_test'] == 1.5 and again.finished
  older = records.RunSummary.from_json({k: record[k] for k in ('stage', 'steps', 'tokens', 'stop_reason')})
  assert older.best is None and older.stage_deltas is None and older.timing == {}
  assert not dataclasses.replace(older, stop_reason='preempted').finished
  with pytest.raises(ValueError, match='without steps, stop_reason'):
    records.RunSummary.from_json({'stage': 'pretrain', 'tokens': 0})


def test_a_run_summary_knows_the_size_of_the_domain_set_it_drew_from():
  accounting = {'tokens': {'domain': 640}, 'epochs': {'domain': 0.08}}
  drew = records.RunSummary('pretrain', 100, 6400, 'budget', data=accounting)
  assert drew.domain_set_tokens == 8000
  npt = records.RunSummary('pretrain', 100, 6400, 'budget', data={'tokens': {'domain': 0}, 'epochs': {'domain': 0.0}})
  assert npt.domain_set_tokens is None and records.RunSummary('pretrain', 1, 1, 'budget').domain_set_tokens is None
