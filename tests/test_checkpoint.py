"""Checkpoints on tiny pytrees: retention (last N plus best), exact restore with shardings, init_from errors."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from spt_jax.storage import manifest
from spt_jax.train import checkpoint
from spt_jax.train import config as config_lib
from spt_jax.train import step as train


def _state(value: float, head: bool = False, width: int = 3) -> train.TrainState:
  value = float(value)
  params = {'embed': {'embedding': jnp.full((8, width), value)}, 'blocks': {'w': jnp.arange(6.0) * value}}
  if head:
    params['lm_head'] = {'kernel': jnp.full((width, 8), -value)}
  return train.TrainState(
    step=jnp.int32(value), params=params, opt_state=({'mu': jnp.ones(4) * value},), rng=jax.random.PRNGKey(int(value))
  )


def _abstract(tree):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _save_steps(workdir, losses, keep=2, stage='pretrain'):
  checkpoint.write_config(workdir, ml_collections.ConfigDict(dict(stage=stage)))
  checkpoints = checkpoint.Checkpoints(workdir, keep=keep)
  for step, loss in losses.items():
    checkpoints.save(step, _state(step), {'step': step, 'train_loss': 1.0}, domain_test_loss=loss)
  checkpoints.wait()
  return checkpoints


def test_keeps_last_n_plus_best(tmp_path):
  checkpoints = _save_steps(str(tmp_path), {1: 3.0, 2: 1.0, 3: None, 4: 2.0, 5: None, 6: 5.0})
  assert checkpoints.all_steps() == [2, 5, 6]
  assert checkpoints.best_step() == 2
  assert checkpoints.latest_step() == 6
  checkpoints.close()
  # After a restart the best is still known and still kept.
  checkpoints = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert checkpoints.best_step() == 2
  for step in (7, 8):
    checkpoints.save(step, _state(step), {'train_loss': 1.0})
  checkpoints.wait()
  assert checkpoints.all_steps() == [2, 7, 8]
  checkpoints.close()


def test_restore_is_exact_with_shardings(tmp_path):
  checkpoints = _save_steps(str(tmp_path), {7: 1.0})
  state, meta = checkpoints.restore(_abstract(_state(0.0)))
  expected = _state(7)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got.dtype == want.dtype
  assert isinstance(state, train.TrainState)
  assert meta == {'step': 7, 'train_loss': 1.0}
  assert state.params['embed']['embedding'].sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
  checkpoints.close()


def test_non_finite_is_refused_and_existing_step_kept(tmp_path):
  checkpoints = _save_steps(str(tmp_path), {3: 1.0})
  with pytest.raises(ValueError, match='not finite'):
    checkpoints.save(4, _state(4), {'train_loss': float('nan')})
  with pytest.raises(ValueError, match='not finite'):
    checkpoints.save(4, _state(4), {'train_loss': 1.0}, domain_test_loss=float('inf'))
  assert not checkpoints.save(3, _state(99), {'train_loss': 1.0})
  checkpoints.wait()
  state, _ = checkpoints.restore(_abstract(_state(0.0)))
  assert checkpoints.all_steps() == [3]
  assert float(state.params['embed']['embedding'][0, 0]) == 3.0
  checkpoints.close()


def test_every_step_carries_a_manifest_and_one_without_gets_it_once_restored(tmp_path):
  checkpoints = _save_steps(str(tmp_path), {1: 2.0, 2: 1.0})
  folders = {step: os.path.join(checkpoints.directory, str(step)) for step in (1, 2)}
  assert all(manifest.check(folder) is None for folder in folders.values())
  checkpoints.close()
  os.unlink(os.path.join(folders[2], manifest.MANIFEST_FILE))  # Killed between orbax's commit and the manifest.
  checkpoints = checkpoint.Checkpoints(str(tmp_path), keep=2)
  step, state, _ = checkpoints.restore_newest(_abstract(_state(0.0)))
  assert step == 2 and float(state.params['embed']['embedding'][0, 0]) == 2.0  # Used unverified: orbax commits whole.
  assert manifest.check(folders[2]) is None  # And recorded now that it restored.
  checkpoints.close()


def test_restore_params_from_workdir_step_folder_and_best(tmp_path):
  pretrain = str(tmp_path / 'pretrain')
  _save_steps(pretrain, {1: 1.0, 2: 3.0}).close()
  abstract = _abstract(_state(0.0).params)
  params = checkpoint.restore_params(pretrain, abstract)  # A pretrain workdir: its latest checkpoint.
  assert float(params['embed']['embedding'][0, 0]) == 2.0
  params = checkpoint.restore_params(os.path.join(pretrain, 'checkpoints', '1'), abstract)
  assert float(params['embed']['embedding'][0, 0]) == 1.0
  finetune = str(tmp_path / 'finetune')
  _save_steps(finetune, {1: 2.0, 2: 1.0, 3: 4.0}, stage='finetune').close()
  params = checkpoint.restore_params(finetune, abstract)  # A finetune workdir: its best checkpoint.
  assert float(params['embed']['embedding'][0, 0]) == 2.0


def test_restore_params_without_untied_head_leaves_it_out(tmp_path):
  _save_steps(str(tmp_path), {1: 1.0}).close()
  params = checkpoint.restore_params(str(tmp_path), _abstract(_state(0.0, head=True).params))
  assert set(params) == {'embed', 'blocks'}


def test_init_from_errors_are_one_line(tmp_path):
  abstract = _abstract(_state(0.0).params)
  with pytest.raises(ValueError, match='does not exist') as error:
    checkpoint.restore_params(str(tmp_path / 'nowhere'), abstract)
  assert '\n' not in str(error.value)
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(ValueError, match='holds no checkpoint'):
    checkpoint.restore_params(str(tmp_path / 'empty'), abstract)
  _save_steps(str(tmp_path / 'run'), {1: 1.0}).close()
  with pytest.raises(
    ValueError, match=r'another shape \(embed/embedding: checkpoint \(8, 3\) vs model \(8, 5\)'
  ) as error:
    checkpoint.restore_params(str(tmp_path / 'run'), _abstract(_state(0.0, width=5).params))
  assert '\n' not in str(error.value)
  _save_steps(str(tmp_path / 'untied'), {}).close()
  checkpoints = checkpoint.Checkpoints(str(tmp_path / 'untied'), keep=1)
  checkpoints.save(1, _state(1, head=True), {'train_loss': 1.0})
  checkpoints.close()
  with pytest.raises(ValueError, match='lm_head/kernel: not in the model'):
    checkpoint.restore_params(str(tmp_path / 'untied'), abstract)


def test_mismatched_config_refuses_to_resume(tmp_path):
  config = ml_collections.ConfigDict(
    dict(seed=0, batch_size=4, resume_mismatched=False, grid=((1e-5, 50),), data=dict(seq_len=16, cache_dir='/a'))
  )
  checkpoint.write_config(str(tmp_path), config)
  assert json.load(open(tmp_path / 'config.json'))['grid'] == [[1e-5, 50]]
  checkpoint.check_resumable(str(tmp_path), config)  # Same config (after a JSON round trip): fine.
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.data.cache_dir = '/b'  # Harmless.
  checkpoint.check_resumable(str(tmp_path), changed)
  changed.batch_size, changed.data.seq_len = 8, 32
  with pytest.raises(ValueError, match=r'batch_size: 4 -> 8, data.seq_len: 16 -> 32.*resume_mismatched') as error:
    checkpoint.check_resumable(str(tmp_path), changed)
  assert '\n' not in str(error.value)
  changed.resume_mismatched = True
  checkpoint.check_resumable(str(tmp_path), changed)


def test_a_key_added_since_a_run_was_saved_resumes_at_its_default(tmp_path):
  newer = config_lib.defaults()
  saved = config_lib.to_dict(newer)
  del saved['model']['scan_unroll']
  checkpoint.write_config(str(tmp_path), saved)  # Written before model.scan_unroll existed.
  checkpoint.check_resumable(str(tmp_path), newer)
  with pytest.raises(ValueError, match=r"model.scan_unroll: '<absent>' -> 0"):
    checkpoint.check_resumable(str(tmp_path), config_lib.replace(newer, **{'model.scan_unroll': 0}))
