"""The regime table: the paper's ratios from its own settings, and a CPU config's beside them."""

import pathlib

import pytest

from spt_jax.model import flops
from spt_jax.train import config as config_lib
from spt_jax.train import regime, run_plan
from tests.tiny import frozen

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_flops(config) -> float:
  """Pretraining model FLOPs of a run of this config."""
  return (
    flops.train_flops_per_token(config.model, config.data.seq_len) * run_plan.make(frozen(config), 'pretrain').tokens
  )


def test_paper_ratios_from_appendix_b():
  paper = regime.paper()
  assert paper.tokens_per_param == pytest.approx(170, rel=0.01)  # 200B tokens on 1.18B parameters.
  assert paper.domain_epochs[0.05] == pytest.approx(33.3, rel=0.01)  # §2: 5% of 200B over 300M ≈ 33 epochs.
  assert paper.domain_epochs[0.10] == pytest.approx(66.7, rel=0.01)
  # A 2T cosine cut at 200B: the LR is still ≈ 3.9e-4 of 4e-4 at the cut (Appendix B).
  assert paper.lr_at_budget[200e9] == pytest.approx(3.9e-4 / 4e-4, abs=0.01)
  assert min(paper.lr_at_budget.values()) > 0.97
  assert paper.finetune_lr_ratio == pytest.approx((1e-5 / 4e-4, 1e-4 / 4e-4))
  assert paper.finetune_batch_over_domain == pytest.approx(512 * 2048 / 300e6)


def test_a_cpu_config_beside_the_paper():
  config = config_lib.load(str(ROOT / 'configs/musicpile.py:small'))
  small = regime.of_config('small', frozen(config), domain_tokens=10_000, deltas=(0.1,))
  assert small.tokens_per_param == pytest.approx(config.tokens // (16 * 64) * 16 * 64 / 163_840)
  assert small.domain_epochs[0.1] == pytest.approx(0.1 * small.tokens / 10_000)
  assert max(small.lr_at_budget) == small.tokens and small.lr_at_budget[small.tokens] < 0.1  # Decayed by the end.
  table = regime.table([regime.paper(), small])
  assert '| tokens per parameter | 170 |' in table and 'domain epochs at δ = 10%' in table


def test_epochs_before_the_domain_loss_turns_up():
  assert regime.epochs_before_turn([10, 20, 30, 40], [3.0, 2.5, 2.6, 2.9], 100, 1000) == pytest.approx(2.0)
  assert regime.epochs_before_turn([10, 20, 30], [3.0, 2.5, 2.4], 100, 1000) is None  # Never turned up.
  assert regime.epochs_before_turn([10], [3.0], 100, 1000) is None


@pytest.mark.parametrize(
  'spec, preset', [('configs/musicpile.py:study', 'cpu-40k'), ('configs/proofpile.py:1b', 'olmo-300m')]
)
def test_a_scale_model_keeps_the_runs_ratios_at_a_tenth_of_its_compute(spec, preset):
  """Three pilots of the scale model cost at most 10% of the run (and nearly all of it), and keep its ratios."""
  config = config_lib.load(str(ROOT / spec))
  pilot, k = regime.scale_model(frozen(config), 0.05, preset, compute=0.1, count=3)
  assert pilot.model.preset == preset and pilot.model.vocab_size == config.model.vocab_size
  assert pilot.mixture.domain_fraction == 0.05 and pilot.data.test_tokens == config.data.test_tokens
  assert 0.095 <= 3 * _run_flops(pilot) / _run_flops(config) <= 0.1
  run = regime.of_config('run', frozen(config), config.data.domain_max_tokens)
  small = regime.of_config('pilot', frozen(pilot), pilot.data.domain_max_tokens)
  assert small.tokens < run.tokens / k * 1.001 and small.params < run.params
  for delta in regime.PAPER_DELTAS:  # Whole steps and whole tokens: equal to a step's rounding.
    assert small.domain_epochs[delta] == pytest.approx(run.domain_epochs[delta], rel=0.02)
  end = max(run.lr_at_budget)
  assert small.lr_at_budget[max(small.lr_at_budget)] == pytest.approx(run.lr_at_budget[end], rel=1e-3)
  assert small.finetune_batch_over_domain == pytest.approx(run.finetune_batch_over_domain, rel=0.2)  # Whole sequences.
  assert small.finetune_lr_ratio == run.finetune_lr_ratio


def test_a_scale_model_small_enough_keeps_the_runs_tokens_per_parameter_too():
  """Three pilots of cpu-25k at a cpu-160k run's tokens per parameter fit in a tenth of it: k is the parameter ratio."""
  config = config_lib.load(str(ROOT / 'configs/musicpile.py:study'))
  pilot, k = regime.scale_model(frozen(config), 0.05, 'cpu-25k', compute=0.1, count=3)
  assert k == pytest.approx(flops.count_params(config.model)[0] / flops.count_params(pilot.model)[0])
  run = regime.of_config('run', frozen(config), config.data.domain_max_tokens)
  small = regime.of_config('pilot', frozen(pilot), pilot.data.domain_max_tokens)
  assert small.tokens_per_param == pytest.approx(run.tokens_per_param, rel=0.01)  # Whole steps.
  assert small.domain_tokens_per_param == pytest.approx(run.domain_tokens_per_param, rel=0.01)
  assert 0.08 < 3 * _run_flops(pilot) / _run_flops(config) < 0.1


def test_a_scale_model_that_cannot_fit_is_one_line():
  config = config_lib.load(str(ROOT / 'configs/musicpile.py:study'))
  with pytest.raises(ValueError, match='choose a smaller preset'):
    regime.scale_model(frozen(config), 0.05, 'cpu-600k', compute=0.1, count=3)
  config.data.domain_max_tokens = 0
  with pytest.raises(ValueError, match='domain_max_tokens'):
    regime.scale_model(frozen(config), 0.05, 'cpu-40k', compute=0.1, count=3)
