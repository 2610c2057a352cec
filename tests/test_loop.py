"""The training loop on a tiny model and tiny data (tests/tiny.py): stage switch, early stopping, faults, resumption."""

import collections
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from spt_jax.evals import heldout as evaluation
from spt_jax.interop import hf
from spt_jax.model import sharding
from spt_jax.train import checkpoint, loop, run_plan
from spt_jax.train import step as train
from tests.test_hf import _tokenizer
from tests.tiny import frozen, tiny_config, tiny_data

# The subprocess scripts rebuild the same config and data.
HELPERS = 'from tests.tiny import tiny_config, tiny_data, frozen\n'


def _losses(workdir):
  if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    return {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in records if 'train/loss' in r}


def _wait_for(condition, process, timeout=900):
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.time() < deadline, 'timed out'
    time.sleep(0.05)


def test_stage_config_is_the_only_difference():
  config = tiny_config()
  pretrain = run_plan.stage_config(frozen(config), 'pretrain')
  finetune = run_plan.stage_config(frozen(config), 'finetune', (4e-5, 100))
  differences = checkpoint.config_differences(checkpoint.config_dict(pretrain), finetune, ignored=())
  assert differences == [
    'eval_every',
    'model.tie_embeddings',
    'optimizer.lr',
    'optimizer.weight_decay',
    'patience',
    'schedule.kind',
    'schedule.warmup_steps',
    'stage',
  ]
  assert (finetune.optimizer.lr, finetune.schedule.warmup_steps, finetune.schedule.kind) == (4e-5, 100, 'constant')
  with pytest.raises(ValueError, match='pipeline'):
    run_plan.stage_config(frozen(config), 'pipeline')


def test_pretrain_then_finetune_switch(tmp_path):
  data = tiny_data()
  pretrain = loop.run(frozen(tiny_config(steps=4)), str(tmp_path / 'pretrain'), stage='pretrain', data=data)
  assert pretrain.stop_reason == 'budget' and pretrain.steps == 4
  assert pretrain.final['domain_test'] < pretrain.initial['domain_test']
  assert pretrain.eval_seconds > 0 and pretrain.train_tokens_per_second >= 0  # Training time apart.
  config = tiny_config(init_from=str(tmp_path / 'pretrain'))
  runner, state, loop_state = loop.build(frozen(config), str(tmp_path / 'finetune'), stage='finetune', data=data)
  assert int(state.step) == 0 and loop_state.step == 0
  adam = state.opt_state[1][0]  # clip_by_global_norm, then adamw's ScaleByAdamState.
  assert int(adam.count) == 0
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves((adam.mu, adam.nu)))
  pretrained = checkpoint.restore_params(str(tmp_path / 'pretrain'), runner.trainer.abstract_state.params)
  np.testing.assert_array_equal(state.params['embed']['embedding'], pretrained['embed']['embedding'])
  np.testing.assert_array_equal(state.params['lm_head']['kernel'], state.params['embed']['embedding'].T)
  summary = runner.train(state, loop_state)
  assert summary.stage == 'finetune' and summary.batch_size == 8 and summary.lr == 1e-3
  # The untied model starts as the tied one: the loss before finetuning equals the pretrain's final loss.
  assert summary.initial['domain_test'] == pytest.approx(pretrain.final['domain_test'], rel=1e-5)
  assert summary.data['tokens']['general'] == 0
  records = [json.loads(line) for line in open(tmp_path / 'finetune' / 'metrics.jsonl')]
  assert {'eval/domain_test/loss', 'eval/domain_test/loss_stderr', 'eval/domain_test/bpb', 'eval/gap'} <= set(
    records[0]
  )
  assert {'step', 'tokens', 'train/loss', 'lr', 'data/tokens/domain', 'data/epochs/domain'} <= set(records[1])
  record = records[0]
  assert record['eval/domain_test/bpb'] == pytest.approx(record['eval/domain_test/loss'] / np.log(2) / 2.0)
  assert os.path.exists(tmp_path / 'finetune' / 'summary.json')
  assert json.load(open(tmp_path / 'finetune' / 'config.json'))['stage'] == 'finetune'


def test_early_stopping_on_rising_curve_keeps_the_best(tmp_path, monkeypatch):
  data = tiny_data()
  loop.run(frozen(tiny_config(steps=2)), str(tmp_path / 'pretrain'), stage='pretrain', data=data)
  curve = iter([3.0, 2.0, 1.5, 1.7, 1.8, 1.9, 2.0, 2.1])  # Evals at steps 0, 2, 4, 6, ...
  real_call = evaluation.Evaluator.heldout

  def rising(self, params, *args, **kwargs):
    results = real_call(self, params, *args, **kwargs)
    results['domain_test']['loss'] = next(curve)
    return results

  monkeypatch.setattr(evaluation.Evaluator, 'heldout', rising)
  workdir = str(tmp_path / 'finetune')
  summary = loop.run(frozen(tiny_config(init_from=str(tmp_path / 'pretrain'))), workdir, stage='finetune', data=data)
  assert summary.stop_reason == 'early_stopping'
  assert summary.steps == 8  # Two evaluations (steps 6 and 8) without improvement on step 4.
  assert summary.best.step == 4 and summary.best.eval['domain_test'] == 1.5
  assert summary.best.epochs['domain'] == pytest.approx(4 * 8 / 40)
  checkpoints = checkpoint.Checkpoints(workdir, keep=2)
  assert 4 in checkpoints.all_steps() and checkpoints.best_step() == 4
  checkpoints.close()
  assert checkpoint.resolve_checkpoint(workdir).endswith(os.path.join('checkpoints', '4'))
  # A finished run is not trained again.
  assert (
    loop.run(frozen(tiny_config(init_from=str(tmp_path / 'pretrain'))), workdir, stage='finetune', data=data).steps == 8
  )


def test_an_eval_set_with_its_own_interval(tmp_path):
  config = tiny_config(steps=8, eval_every=2, checkpoint_every=0, eval_intervals=(('general_test', 4),))
  summary = loop.run(frozen(config), str(tmp_path / 'run'), stage='pretrain', data=tiny_data())
  records = {r['step']: r for r in map(json.loads, open(tmp_path / 'run' / 'metrics.jsonl'))}
  assert [s for s in sorted(records) if 'eval/domain_test/loss' in records[s]] == [0, 2, 4, 6, 8]
  assert [s for s in sorted(records) if 'eval/general_test/loss' in records[s]] == [0, 4, 8]
  assert summary.final['general_test'] == records[8]['eval/general_test/loss']


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  class PoisonedTrainer(train.Trainer):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      step_fn = self.train_step

      def poisoned(state, batch, *lr_table):
        state, metrics = step_fn(state, batch, *lr_table)
        return state, dict(metrics, loss=jnp.where(state.step >= 7, jnp.nan, metrics['loss']))

      self.train_step = poisoned

  monkeypatch.setattr(train, 'Trainer', PoisonedTrainer)
  monkeypatch.setattr(loop, '_TRAINERS', collections.OrderedDict())  # No Trainer cached by an earlier test.
  workdir = str(tmp_path / 'run')
  summary = loop.run(frozen(tiny_config()), workdir, stage='pretrain', data=tiny_data())
  assert summary.stop_reason == 'nonfinite_loss' and summary.last_checkpoint == 4
  checkpoints = checkpoint.Checkpoints(workdir, keep=2)
  assert checkpoints.all_steps() == [4]
  state, meta = checkpoints.restore(PoisonedTrainer(*_trainer_args()).abstract_state)
  checkpoints.close()
  assert int(state.step) == 4 and meta['step'] == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  assert max(_losses(workdir)) == 6


def _trainer_args():

  c = tiny_config()
  return c.model, sharding.make_mesh(c.mesh), train.make_optimizer(c, lambda step: 0.0)


def test_init_from_errors_before_data(tmp_path, monkeypatch):
  monkeypatch.setattr(loop.prepare_lib, 'prepare', lambda c: pytest.fail('data prepared before the error'))
  with pytest.raises(ValueError, match='does not exist') as error:
    loop.run(frozen(tiny_config(init_from=str(tmp_path / 'missing'))), str(tmp_path / 'a'), stage='finetune')
  assert '\n' not in str(error.value)
  loop.run(frozen(tiny_config(steps=2, eval_every=0)), str(tmp_path / 'small'), stage='pretrain', data=tiny_data())
  wider = tiny_config(init_from=str(tmp_path / 'small'), **{'model.d_model': 128})
  expected = r'another shape \(blocks/down/kernel: checkpoint \(2, 256, 64\) vs model \(2, 256, 128\)'
  with pytest.raises(ValueError, match=expected) as error:
    loop.run(frozen(wider), str(tmp_path / 'b'), stage='finetune')
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='finetuning needs parameters'):
    loop.run(frozen(tiny_config()), str(tmp_path / 'c'), stage='finetune')


def test_mismatched_config_refuses_to_resume(tmp_path):
  workdir = str(tmp_path / 'run')
  loop.run(frozen(tiny_config(steps=4, checkpoint_every=2)), workdir, stage='pretrain', data=tiny_data())
  with pytest.raises(ValueError, match=r'different config \(batch_size: 8 -> 16\).*resume_mismatched') as error:
    loop.run(
      frozen(tiny_config(steps=4, checkpoint_every=2, batch_size=16)), workdir, stage='pretrain', data=tiny_data()
    )
  assert '\n' not in str(error.value)


def test_finetune_from_a_hugging_face_directory_with_mcqa(tmp_path):
  """The finetuner's baseline: open weights in, same pipeline; multiple-choice accuracy recorded at the best."""

  tokenizer = _tokenizer(vocab_size=500)
  data = tiny_data()
  data.tokenizer = tokenizer
  pretrain = loop.run(frozen(tiny_config(steps=2)), str(tmp_path / 'pretrain'), stage='pretrain', data=data)
  abstract = train.Trainer(*_trainer_args()).abstract_state.params
  params = checkpoint.restore_params(str(tmp_path / 'pretrain'), abstract)
  hf.export_hf(jax.device_get(params), tiny_config().model, tokenizer, str(tmp_path / 'open_model'))
  task = tmp_path / 'task.jsonl'
  task.write_text(
    '\n'.join(
      json.dumps({'question': f'the cat sat on the {i}', 'choices': ['mat', 'dog food'], 'answer': 0}) for i in range(4)
    )
  )
  config = tiny_config(init_from=str(tmp_path / 'open_model'), mcqa_tasks=(str(task),), mcqa_max_examples=4)
  summary = loop.run(frozen(config), str(tmp_path / 'finetune'), stage='finetune', data=data)
  assert summary.initial['domain_test'] == pytest.approx(pretrain.final['domain_test'], rel=1e-5)

  saved = tokenizers.Tokenizer.from_file(str(tmp_path / 'finetune' / 'tokenizer.json'))
  assert saved.to_str() == tokenizer.to_str()
  accuracy = summary.best.mcqa[str(task)]
  assert 0.0 <= accuracy <= 1.0
  records = [json.loads(line) for line in open(tmp_path / 'finetune' / 'metrics.jsonl')]
  assert f'eval/mcqa/{task}/accuracy' in records[0]
