"""RunPlan: what a stage runs, read by the dry run, the loop, the pipeline and the experiments alike; and FLOPs."""

import jax
import pytest

from configs import common
from spt_jax.model import flops
from spt_jax.train import run_plan
from tests.tiny import frozen


def test_steps_are_whole_batches_for_the_paper_run():
  plan = run_plan.make(frozen(common.sized('1b')))
  assert plan.config.stage == 'pretrain' and plan.tokens_per_step == 2048 * 2048
  assert plan.steps == 200_000_000_000 // (2048 * 2048) == 47_683
  assert plan.tokens <= 200e9 < plan.tokens + plan.tokens_per_step
  assert plan.warmup_steps == 2000
  assert float(plan.schedule(plan.warmup_steps)) == pytest.approx(4e-4)


def test_finetune_plan_takes_the_grid_point():
  config = common.sized('test')
  plan = run_plan.make(frozen(config), 'finetune', (4e-5, 3))
  assert (plan.steps, plan.warmup_steps, plan.tokens_per_step) == (30, 3, 8 * 32)
  assert float(plan.schedule(0)) == 0.0 and float(plan.schedule(10)) == pytest.approx(4e-5)
  assert not plan.config.model.tie_embeddings


def test_a_finetune_takes_microbatches_no_larger_than_pretraining():
  config = common.sized('test')
  config.batch_size, config.grad_accum_steps, config.finetune.batch_size = 2048, 128, 512  # 16 sequences each.
  assert run_plan.make(frozen(config), 'finetune').config.grad_accum_steps == 32
  config.finetune.batch_size = 24  # Two microbatches of 12.
  assert run_plan.make(frozen(config), 'finetune').config.grad_accum_steps == 2
  config.grad_accum_steps = 1  # One pretraining microbatch: the finetune takes its batch whole, as before.
  assert run_plan.make(frozen(config), 'finetune').config.grad_accum_steps == 1


def test_batch_divisibility_is_a_one_line_error():
  config = common.sized('test')
  config.grad_accum_steps = 3
  plan = run_plan.make(frozen(config))
  with pytest.raises(ValueError, match='batch_size=8 is not a multiple of the 2 data-parallel devices') as error:
    plan.sequences_per_device(2)
  assert '\n' not in str(error.value)
  config.grad_accum_steps = 2
  assert run_plan.make(frozen(config)).sequences_per_device(2) == 2


def test_a_run_without_steps_is_an_error():
  config = common.sized('test')
  config.tokens = 10  # Less than one batch.
  with pytest.raises(ValueError, match='the run has no steps'):
    run_plan.make(frozen(config))


def test_flops_per_token_by_hand():
  cfg = {'vocab_size': 500, 'd_model': 64, 'n_layers': 2, 'mlp_dim': 256}  # Vocabulary padded to 512.
  n = 2 * (4 * 64 * 64 + 3 * 64 * 256) + 512 * 64
  assert flops.matmul_params(cfg) == n
  assert flops.train_flops_per_token(cfg, 32) == 6 * n + 12 * 2 * 64 * 32
  assert flops.count_params(dict(cfg, tie_embeddings=False)) == (n + 512 * 64, n - 512 * 64)
  assert flops.mfu(100.0, 10.0, 4000.0) == 0.25 and flops.mfu(100.0, 10.0, 0.0) is None


def test_peak_flops_from_the_config_or_off():

  assert flops.peak_flops(1e12) == 1e12 * jax.device_count()
  assert flops.peak_flops(-1) == 0.0
