"""FLOPs accounting and the break-even point of SPT against finetuning a larger model."""

import math

import pytest

from spt_jax.analysis import cost
from spt_jax.model import decoder as model
from spt_jax.model import flops


def test_flops_per_token_formulas_by_hand():
  size = cost.ModelSize('m', 1e9, n_layers=16, d_model=2048)
  assert size.train_flops_per_token(2048) == 6e9 + 12 * 16 * 2048 * 2048
  assert size.inference_flops_per_token(1024) == 2e9 + 4 * 16 * 2048 * 1024


def test_training_and_inference_count_attention_the_same_way():
  size = cost.ModelSize('m', 1e9, n_layers=16, d_model=2048)
  for context in (1, 512, 2048):  # Training is three forward passes at the same attended context.
    assert size.train_flops_per_token(context) == 3 * size.inference_flops_per_token(context)
  # Per attended token and layer, a forward pass spends 4·d_model FLOPs on attention (QKᵀ and AV).
  attention = size.inference_flops_per_token(2048) - size.inference_flops_per_token(1024)
  assert attention == 4 * 16 * 2048 * 1024


def test_training_count_matches_the_train_step_mfu_count():

  cfg = model.preset_config('cpu-160k')
  size = cost.model_size('cpu-160k')
  assert size.train_flops_per_token(128) == pytest.approx(flops.train_flops_per_token(cfg, 128))


def test_formulas_are_printed():
  costs = cost.strategy_costs(cost.ModelSize('s', 1e9, 4, 64), cost.ModelSize('l', 3e9, 8, 64), 1e9, 1e6, 128, 64)
  text = cost.format_costs(costs)
  for formula in (cost.FORWARD_FORMULA, cost.TRAIN_FORMULA, cost.INFERENCE_FORMULA):
    assert formula in text


def test_break_even_by_hand():
  small, large = cost.ModelSize('s', 1e9), cost.ModelSize('l', 3e9)
  costs = cost.strategy_costs(small, large, pretrain_tokens=100e9, finetune_tokens=0, seq_len=1, context=1)
  # Training 6·1e9·1e11 = 6e20; serving saves 2·(3e9 − 1e9) = 4e9 FLOPs per token: break-even at 1.5e11.
  assert costs['spt']['training_flops'] == pytest.approx(6e20)
  assert costs['break_even_inference_tokens'] == pytest.approx(1.5e11)
  assert cost.total_flops(costs, 'spt', 1.5e11) == pytest.approx(cost.total_flops(costs, 'finetune_large', 1.5e11))
  assert any('attention' in note for note in costs['notes'])
  never = cost.strategy_costs(large, small, 100e9, 0, 1, 1)
  assert math.isinf(never['break_even_inference_tokens'])


def test_paper_models_break_even_near_a_trillion_tokens():
  costs = cost.strategy_costs(cost.model_size('olmo-1b'), cost.model_size('olmo-3b'), 200e9, 1.5e9, 2048, 2048)
  assert 3e11 < costs['break_even_inference_tokens'] < 3e12  # Figure 3: about 1T.
  assert cost.TRAIN_FORMULA in costs['formulas']


def test_parse_count():
  assert cost.parse_count('200B') == 200e9
  assert cost.parse_count('1.5T') == 1.5e12
  assert cost.parse_count('70M') == 70e6
  assert cost.parse_count('3e9') == 3e9
  assert cost.parse_count('olmo-1b') is None
