"""Headline metrics against hand-computed values."""

import json

import pytest

from spt_jax.analysis import gains, runs


def test_relative_gain_and_gap_closed_by_hand():
  assert gains.relative_gain(2.0, 1.96) == pytest.approx(2.0)  # 100 · 0.04 / 2
  assert gains.gap_closed(2.0, 1.96, 1.97) == pytest.approx(100 * 0.04 / 0.03)  # > 100%: SPT beats the large NPT.
  assert gains.gap_closed(2.0, 1.96, 2.1) is None  # The larger model is worse: undefined.


def test_tokens_to_reach_interpolates_in_log_tokens():
  # Loss 2.0 at 1e10 and 1.8 at 1e11: 1.9 lies halfway in log tokens, at sqrt(1e10 · 1e11).
  reach = gains.tokens_to_reach([1e10, 1e11], [2.0, 1.8], 1.9)
  assert reach['status'] == 'interpolated'
  assert reach['tokens'] == pytest.approx(10**10.5)
  assert gains.tokens_to_reach([1e10, 1e11], [2.0, 1.8], 1.7)['status'] == 'not reached'
  assert gains.tokens_to_reach([1e10, 1e11], [2.0, 1.8], 2.1)['status'] == 'at or before the first checkpoint'


def test_compute_multiplier_by_hand_and_out_of_range():
  npt = ([5e10, 1e11, 2e11], [2.10, 2.05, 2.00])
  spt = ([5e10, 1e11, 2e11], [2.04, 1.98, 1.95])
  # NPT's final 2.00 is reached by SPT between 5e10 (2.04) and 1e11 (1.98): 2/3 of the way in log tokens.
  result = gains.compute_multiplier(*npt, *spt)
  expected_tokens = 5e10 * 2 ** (2 / 3)
  assert result.bound == '='
  assert result.value == pytest.approx(2e11 / expected_tokens)
  early = gains.compute_multiplier(*npt, [5e10, 2e11], [1.99, 1.9])
  assert early.bound == '>' and early.value == pytest.approx(4.0) and 'first finetuned' in early.note
  worse = gains.compute_multiplier(*npt, [5e10, 2e11], [2.2, 2.05])
  # SPT ends at 2.05, which NPT reaches at 1e11: multiplier 1e11 / 2e11.
  assert worse.value == pytest.approx(0.5)


def _pipeline(root, name, delta, finetunes, model='tiny', tokenizer='abc', seq_len=32):
  workdir = root / name
  (workdir / 'pretrain').mkdir(parents=True)
  summary = {
    'stage': 'pretrain',
    'steps': 20,
    'stop_reason': 'budget',
    'domain_fraction': delta,
    'model': model,
    'tokenizer': tokenizer,
    'seq_len': seq_len,
    'tokens': max(f[0] for f in finetunes),
  }
  (workdir / 'pretrain' / 'summary.json').write_text(json.dumps(summary))
  (workdir / 'pretrain' / 'metrics.jsonl').write_text('')
  entries = [
    {
      'name': f'lr{lr:g}_wu50_from{i}',
      'stop_reason': 'early_stopping',
      'steps': 20,
      'pretrain_step': i,
      'pretrain_tokens': t,
      'lr': lr,
      'warmup': 50,
      'best_domain_test_loss': loss,
      'best_step': 10,
      'epochs': 3.0,
      'general_test_loss_before': 3.0,
      'general_test_loss_after': after,
      'domain_test_loss_before': loss + 0.2,
    }
    for i, (t, loss, lr, after) in enumerate(finetunes)
  ]
  (workdir / 'summary.json').write_text(json.dumps({'pretrain': summary, 'finetunes': entries}))
  return str(workdir)


def test_gains_table_from_pipeline_workdirs(tmp_path):
  npt = _pipeline(tmp_path, 'npt', 0.0, [(1e6, 2.10, 1e-4, 3.1), (2e6, 2.00, 1e-4, 3.2), (2e6, 2.02, 1e-5, 3.0)])
  spt = _pipeline(tmp_path, 'spt', 0.02, [(1e6, 2.04, 1e-4, 3.05), (2e6, 1.96, 1e-4, 3.04)])
  large = _pipeline(tmp_path, 'large', 0.0, [(2e6, 1.97, 1e-4, 3.1)], model='bigger')
  result = gains.gains(runs.read(npt), [runs.read(spt)], runs.read(large))
  row = result.spt[0]
  assert row.relative_gain == pytest.approx(2.0)  # best over the grid at 2e6 is 2.00 (not 2.02)
  assert row.gap_closed == pytest.approx(100 * 0.04 / 0.03)
  assert row.forgetting == pytest.approx(0.04)
  assert result.npt.forgetting == pytest.approx(0.2)  # The lr=1e-4 finetune, the best one.
  # SPT reaches 2.00 halfway in log tokens between 1e6 (2.04) and 2e6 (1.96): at sqrt(2)·1e6.
  assert row.compute_multiplier.value == pytest.approx(2**0.5)
  table = gains.format_table(result)
  assert '2.00%' in table and '1.41x' in table and '133%' in table


def test_mixed_tokenizers_or_seq_lens_are_an_error(tmp_path):
  npt = _pipeline(tmp_path, 'npt', 0.0, [(1e6, 2.1, 1e-4, 3.1)])
  spt = _pipeline(tmp_path, 'spt', 0.02, [(1e6, 2.0, 1e-4, 3.1)], tokenizer='other')
  with pytest.raises(ValueError, match='different tokenizers'):
    gains.gains(runs.read(npt), [runs.read(spt)])
  spt2 = _pipeline(tmp_path, 'spt2', 0.02, [(1e6, 2.0, 1e-4, 3.1)], seq_len=64)
  with pytest.raises(ValueError, match='different sequence lengths'):
    gains.gains(runs.read(npt), [runs.read(spt2)])


def test_run_without_finetunes_is_an_error(tmp_path):
  npt = _pipeline(tmp_path, 'npt', 0.0, [(1e6, 2.1, 1e-4, 3.1)])
  (tmp_path / 'plain').mkdir()
  (tmp_path / 'plain' / 'summary.json').write_text(
    json.dumps(
      {
        'stage': 'pretrain',
        'steps': 10,
        'tokens': 1000,
        'stop_reason': 'budget',
        'domain_fraction': 0.02,
        'tokenizer': 'abc',
      }
    )
  )
  (tmp_path / 'plain' / 'metrics.jsonl').write_text('')
  with pytest.raises(ValueError, match='no finetunes'):
    gains.gains(runs.read(npt), [runs.read(str(tmp_path / 'plain'))])
  with pytest.raises(ValueError, match='does not exist'):
    runs.read(str(tmp_path / 'missing'))
