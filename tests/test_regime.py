"""The regime table: the paper's ratios from its own settings, and a CPU config's beside them."""

import pathlib

import pytest

from spt_jax.train import config as config_lib
from spt_jax.train import regime

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
  small = regime.of_config('small', config, domain_tokens=10_000, deltas=(0.1,))
  assert small.tokens_per_param == pytest.approx(config.tokens // (16 * 64) * 16 * 64 / 163_840)
  assert small.domain_epochs[0.1] == pytest.approx(0.1 * small.tokens / 10_000)
  assert max(small.lr_at_budget) == small.tokens and small.lr_at_budget[small.tokens] < 0.1  # Decayed by the end.
  table = regime.table([regime.paper(), small])
  assert '| tokens per parameter | 170 |' in table and 'domain epochs at δ = 10%' in table


def test_epochs_before_the_domain_loss_turns_up():
  assert regime.epochs_before_turn([10, 20, 30, 40], [3.0, 2.5, 2.6, 2.9], 100, 1000) == pytest.approx(2.0)
  assert regime.epochs_before_turn([10, 20, 30], [3.0, 2.5, 2.4], 100, 1000) is None  # Never turned up.
  assert regime.epochs_before_turn([10], [3.0], 100, 1000) is None
