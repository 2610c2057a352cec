"""Seeded NPT-vs-SPT comparisons (the headline), blended document sets (the overlap study) and rank correlations
(similarity against gain), on small hand-made inputs."""

import json

import numpy as np
import pytest

from spt_jax.analysis import runs, seeds, similarity
from spt_jax.data import blend


def _arm(root, name, delta, post_ft_loss, general_after, best_step=20, clean=None):
  """A pipeline workdir: pretraining metrics, one finetune (best at best_step) with its metrics, W/summary.json;
  clean: the finetune's step chosen on validation (a records.Selection as JSON)."""
  workdir = root / name
  (workdir / 'pretrain').mkdir(parents=True)
  (workdir / 'finetune' / 'lr0.001_wu5').mkdir(parents=True)
  summary = {
    'stage': 'pretrain',
    'domain_fraction': delta,
    'model': 'tiny',
    'tokenizer': 'abc',
    'seq_len': 32,
    'tokens': 1000,
    'steps': 10,
    'stop_reason': 'budget',
  }
  (workdir / 'pretrain' / 'summary.json').write_text(json.dumps(summary))

  def evals(step, tokens, d, g):
    return {'step': step, 'tokens': tokens, 'eval/domain_test/loss': d, 'eval/general_test/loss': g}

  (workdir / 'pretrain' / 'metrics.jsonl').write_text(
    '\n'.join(json.dumps(evals(s, 100 * s, 5.0 - 0.1 * s, 4.0 - 0.05 * s)) for s in (0, 5, 10))
  )
  (workdir / 'finetune' / 'lr0.001_wu5' / 'metrics.jsonl').write_text(
    '\n'.join(
      json.dumps(evals(s, 64 * s, post_ft_loss + 0.01 * abs(s - best_step), 3.5 + 0.01 * s)) for s in (0, 10, 20, 30)
    )
  )
  entry = {
    'name': 'lr0.001_wu5',
    'stop_reason': 'early_stopping',
    'pretrain_step': 10,
    'pretrain_tokens': 1000,
    'lr': 1e-3,
    'warmup': 5,
    'best_domain_test_loss': post_ft_loss,
    'best_step': best_step,
    'epochs': 4.0,
    'steps': 30,
    'domain_test_loss_before': 4.0,
    'general_test_loss_before': 3.5,
    'general_test_loss_after': general_after,
    'clean': clean,
  }
  pipeline_summary = {'pretrain': summary, 'stop_reason': 'budget', 'finetunes': [entry]}
  (workdir / 'summary.json').write_text(json.dumps(pipeline_summary))
  return runs.read(str(workdir))


def test_compare_over_seeds_by_hand(tmp_path):
  pairs = {
    0: (_arm(tmp_path, 'npt0', 0.0, 2.0, 4.0), _arm(tmp_path, 'spt0', 0.1, 1.9, 3.7)),
    1: (_arm(tmp_path, 'npt1', 0.0, 2.2, 4.1), _arm(tmp_path, 'spt1', 0.1, 2.2, 3.6)),
  }
  result = seeds.compare(pairs)
  assert [r.gain_pct for r in result.rows] == pytest.approx([5.0, 0.0])
  s = result
  assert s.gain_pct.mean == pytest.approx(2.5) and s.gain_pct.sd == pytest.approx(np.std([5, 0], ddof=1))
  assert s.npt_forgetting.mean == pytest.approx(0.55) and s.spt_forgetting.mean == pytest.approx(0.15)
  assert s.seeds_spt_better == 1 and result.seeds == 2
  table = seeds.format_tables(result)
  assert '| 0 | 4.0000 | 2.0000 | 4.0000 | 1.9000 | +5.00% |' in table
  assert '2.50 ± 3.54%' in table
  assert (
    seeds.spread([1.0]).plus_minus() == '1.0000' and seeds.spread([1.0]).interval() == '–'
  )  # One seed: no standard deviation.


def test_the_clean_protocol_and_forgetting_at_equal_steps_by_hand(tmp_path):
  def clean(step, test_loss, general_after):
    return dict(step=step, domain_valid_loss=2.5, domain_test_loss=test_loss, general_test_loss_after=general_after)

  pairs = {
    0: (
      _arm(tmp_path, 'npt0', 0.0, 2.0, 3.7, best_step=20, clean=clean(30, 2.1, 3.8)),
      _arm(tmp_path, 'spt0', 0.1, 1.9, 3.6, best_step=10, clean=clean(10, 2.0, 3.6)),
    ),
    1: (_arm(tmp_path, 'npt1', 0.0, 2.2, 4.1), _arm(tmp_path, 'spt1', 0.1, 2.2, 3.6)),  # No validation split.
  }
  result = seeds.compare(pairs)
  first, second = result.rows
  # Equal steps: the earlier selected step (10), read from both finetunes' metrics (general 3.5 + 0.01 * step).
  assert first.equal_steps.step == 10 and (first.equal_steps.npt, first.equal_steps.spt) == pytest.approx((0.1, 0.1))
  assert second.equal_steps.step == 20
  assert first.gain_pct_clean == pytest.approx(100 * (2.1 - 2.0) / 2.1) and second.gain_pct_clean is None
  assert first.npt.clean.forgetting == pytest.approx(0.3) and second.npt.clean is None
  s = result
  assert s.gain_pct_clean.n == 1 and s.seeds_spt_better_clean == 1
  assert s.npt_forgetting_equal_steps.mean == pytest.approx(0.15)
  table = seeds.format_tables(result)
  assert '| 0 | 10 | +0.1000 | +0.1000 |' in table and '| 0 | 2.1000 | 2.0000 | +4.76% | +0.3000 | +0.1000 |' in table


def test_trajectory_joins_pretraining_and_the_best_finetune(tmp_path):
  t = seeds.trajectory(_arm(tmp_path, 'spt', 0.1, 1.9, 3.7, best_step=20))
  assert t['pretrain_tokens'] == [0, 500, 1000] and t['finetune_tokens'] == [1000, 1640, 2280, 2920]
  assert t['finetune_domain_test'][2] == pytest.approx(1.9) and t['best_step'] == 20
  assert t['pretrain_general_test'] == pytest.approx([4.0, 3.75, 3.5])


def test_an_arm_without_finetunes_is_a_one_line_error(tmp_path):
  run = _arm(tmp_path, 'npt', 0.0, 2.0, 4.0)
  run.finetunes = []
  with pytest.raises(ValueError, match='no finetune with a finite best_domain_test_loss'):
    seeds.arm(run)


def test_blend_takes_each_share_of_the_bytes(tmp_path):
  for name, word, count in (('es', 'hola', 60), ('en', 'hello', 200)):
    (tmp_path / name).mkdir()
    for i in range(count):
      (tmp_path / name / f'{i:03d}.txt').write_text(f'{word} {i} ' * 20)
  shares = {f'files:{tmp_path}/es/*.txt': 0.25, f'files:{tmp_path}/en/*.txt': 0.75}
  path = str(tmp_path / 'blend.jsonl')
  taken = blend.write(shares, 0.02, path)
  texts = [json.loads(line)['text'] for line in open(path)]
  spanish = sum(len(t) for t in texts if t.startswith('hola'))
  assert spanish == taken[f'files:{tmp_path}/es/*.txt'] and abs(spanish - 5000) <= 50
  assert abs(sum(len(t) for t in texts) - spanish - 15000) <= 150
  assert blend.write(shares, 0.02, path) == taken  # Written once; its counts are kept beside it.
  (tmp_path / 'es' / 'big.txt').write_text('hola ' * 3000)  # 15 kB: would overshoot a 5 kB share alone.
  assert abs(sum(blend.write(shares, 0.02, str(tmp_path / 'again.jsonl')).values()) - 20000) <= 200
  with pytest.raises(ValueError, match='short of the'):
    blend.write({f'files:{tmp_path}/es/*.txt': 1.0}, 1.0, str(tmp_path / 'big.jsonl'))
  with pytest.raises(ValueError, match='sum to 1'):
    blend.write({f'files:{tmp_path}/es/*.txt': 0.5}, 0.01, str(tmp_path / 'half.jsonl'))


def test_rank_correlations():
  result = similarity.rank_correlations({'same': [1, 2, 3, 4], 'reversed': [9, 7, 5, 1]}, [0.1, 0.5, 0.7, 2.0])
  assert result['same']['rho'] == pytest.approx(1.0) and result['reversed']['rho'] == pytest.approx(-1.0)
