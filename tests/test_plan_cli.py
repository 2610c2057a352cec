"""The plan CLI end to end over fake run workdirs written in the formats the training loop writes."""

import json

import numpy as np
import pytest

from spt_jax import plan
from spt_jax.analysis import runs, scaling
from spt_jax.model import flops
from tests import test_scaling


def _write_pipeline(root, delta, seed, nan_row=False, tokenizer='bpe-1234', with_train_eval=True):
  """A pipeline workdir: W/pretrain/{config.json, metrics.jsonl, summary.json} and W/summary.json."""
  law, rng = test_scaling.true_law(), np.random.default_rng(seed)
  workdir = root / f'delta{delta:g}'
  (workdir / 'pretrain').mkdir(parents=True)
  config = {
    'stage': 'pretrain',
    'mixture': {'domain_fraction': delta, 'stages': []},
    'data': {'seq_len': 128, 'tokenizer': 'bpe'},
    'model': dict(flops.PRESETS['cpu-2m'], preset='cpu-2m'),
  }
  (workdir / 'pretrain' / 'config.json').write_text(json.dumps(config))
  records = [{'step': 0, 'tokens': 0, 'eval/domain_test/loss': 9.0, 'eval/domain_train/loss': 9.0}]
  for step, tokens in enumerate(np.geomspace(2e9, 2e11, 15), 1):
    record = {'step': step * 100, 'tokens': float(tokens), 'train/loss': 2.0, 'lr': 1e-3}
    record['eval/domain_test/loss'] = float(law.test_loss(delta, tokens) * (1 + 0.01 * rng.standard_normal()))
    if with_train_eval:
      record['eval/domain_train/loss'] = float(law.train_loss(delta, tokens) * (1 + 0.01 * rng.standard_normal()))
    record['eval/gap'] = record['eval/domain_test/loss'] - record.get('eval/domain_train/loss', 0)
    records.append(record)
    records.append({'step': step * 100 + 10, 'tokens': float(tokens) + 1, 'train/loss': 2.0})  # no eval
  if nan_row:
    records[3]['eval/domain_test/loss'] = float('nan')
  (workdir / 'pretrain' / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in records) + '\n')
  summary = {
    'stage': 'pretrain',
    'steps': 1500,
    'tokens': 2e11,
    'stop_reason': 'budget',
    'domain_fraction': delta,
    'model': 'cpu-2m',
    'params': 1572864,
    'seq_len': 128,
    'tokenizer': tokenizer,
    'final': {'domain_test': 2.0},
    'best': {'step': 1500, 'tokens': 2e11, 'eval': {'domain_test': 2.0}},
  }
  (workdir / 'pretrain' / 'summary.json').write_text(json.dumps(summary))
  finetunes = []
  for step, tokens in enumerate(np.geomspace(5e9, 2e11, 6)):
    before = float(law.test_loss(delta, tokens))
    for lr, extra in ((1e-4, 0.0), (1e-5, 0.01)):
      finetunes.append(
        {
          'name': f'lr{lr:g}_wu50_from{step}',
          'stop_reason': 'early_stopping',
          'steps': 40,
          'pretrain_step': step,
          'pretrain_tokens': float(tokens),
          'lr': lr,
          'warmup': 50,
          'best_domain_test_loss': float(law.post_ft_loss(delta, tokens)) + extra,
          'best_step': 20,
          'epochs': 4.0,
          'general_test_loss_before': 3.0,
          'general_test_loss_after': 3.0 + 0.1 - delta,
          'domain_test_loss_before': before,
        }
      )
  best = min(finetunes, key=lambda f: f['best_domain_test_loss'])
  (workdir / 'summary.json').write_text(json.dumps({'pretrain': summary, 'finetunes': finetunes, 'best': best}))
  return str(workdir)


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  return [_write_pipeline(root, d, seed) for seed, d in enumerate(test_scaling.DELTAS)]


@pytest.fixture(scope='module')
def fit_dir(workdirs, tmp_path_factory):
  out = tmp_path_factory.mktemp('fit')
  assert plan.main(['fit', '--runs', ','.join(workdirs), '--bootstrap', '10', '--out', str(out)]) == 0
  return out


def _lines(capsys):
  return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]


def test_fit_writes_parameters_plot_and_report(fit_dir):
  fit = json.loads((fit_dir / 'fit.json').read_text())
  assert fit['residuals']['n_points'] == 90
  assert fit['fitted_deltas'] == list(test_scaling.DELTAS)
  assert len(fit['finetune_delta']) == 6
  assert (fit_dir / 'fit.png').stat().st_size > 10_000
  assert '![data vs fit](fit.png)' in (fit_dir / 'report.md').read_text()


def test_forecast_and_recommend(fit_dir, capsys, tmp_path):
  capsys.readouterr()
  fit = str(fit_dir / 'fit.json')
  assert plan.main(['forecast', '--fit', fit, '--delta', '0.03', '--tokens', '1e11,400B', '--out', str(tmp_path)]) == 0
  lines = _lines(capsys)
  truth = test_scaling.true_law()
  assert lines[0]['test_loss'] == pytest.approx(float(truth.test_loss(0.03, 1e11)), rel=0.02)
  assert lines[1]['tokens'] == 4e11 and lines[2]['delta'] == 0.03 and 'overfitting_onset_tokens' in lines[2]
  assert (
    plan.main(
      [
        'recommend',
        '--fit',
        fit,
        '--tokens',
        '3e10,2e11',
        '--candidates',
        '0,0.02,0.05,0.1',
        '--crossover',
        '0.05,0.1',
        '--out',
        str(tmp_path),
      ]
    )
    == 0
  )
  lines = _lines(capsys)
  assert lines[0]['best_candidate'] == 0.1 and lines[1]['best_candidate'] == 0.05
  crossing = [line for line in lines if 'crossover' in line]
  assert crossing and crossing[0]['better_after'] == 0.05
  written = [json.loads(line) for line in (tmp_path / 'recommend.jsonl').read_text().splitlines()]
  result = scaling.Recommendation.from_lines(written)  # The file read back as the typed record it was written from.
  assert written == lines and result.lines() == written
  assert [p.best_candidate for p in result.picks] == [0.1, 0.05] and result.crossovers[0].better_after == 0.05
  assert (tmp_path / 'optimal_delta.png').exists() and (tmp_path / 'forecast.png').exists()


def test_gains_cost_and_similarity_subcommands(workdirs, capsys, tmp_path):
  capsys.readouterr()
  spt = f'{workdirs[3]},{workdirs[4]}'
  assert plan.main(['gains', '--npt', workdirs[0], '--spt', spt, '--out', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert 'relative gain' in out and 'delta0.02 (SPT)' in out
  result = json.loads((tmp_path / 'gains.json').read_text())
  truth = test_scaling.true_law()
  npt, spt = float(truth.post_ft_loss(0.0, 2e11)), float(truth.post_ft_loss(0.02, 2e11))
  assert result['spt'][0]['relative_gain'] == pytest.approx(100 * (npt - spt) / npt, rel=1e-6)
  assert (
    plan.main(['cost', '--small', 'olmo-1b', '--large', 'olmo-3b', '--format', 'json', '--out', str(tmp_path)]) == 0
  )
  costs = json.loads(capsys.readouterr().out)
  assert costs['break_even_inference_tokens'] > 0 and (tmp_path / 'cost.png').exists()
  rng = np.random.default_rng(0)
  np.save(tmp_path / 'a.npy', rng.integers(0, 50, (20, 33)).astype(np.uint16))
  np.save(tmp_path / 'b.npy', rng.integers(50, 100, (20, 33)).astype(np.uint16))
  assert (
    plan.main(
      [
        'similarity',
        str(tmp_path / 'a.npy'),
        str(tmp_path / 'a.npy'),
        str(tmp_path / 'b.npy'),
        '--format',
        'json',
        '--out',
        str(tmp_path),
      ]
    )
    == 0
  )
  rows = json.loads(capsys.readouterr().out)
  assert rows[0]['unigram_jsd'] == pytest.approx(0.0) and rows[1]['unigram_jsd'] == pytest.approx(1.0)
  assert (tmp_path / 'similarity.png').exists() and (tmp_path / 'report.md').exists()


def test_bad_inputs_give_one_line_errors(tmp_path, capsys, workdirs):
  """A wrong command line exits 2 (spt_jax/cli.py's usage errors); inputs that cannot be analysed exit 1."""
  capsys.readouterr()
  assert plan.main(['forecast', '--fit', 'x.json', '--delta', '2', '--tokens', '1e9']) == 2
  assert 'fraction' in capsys.readouterr().err
  assert plan.main(['fit', '--spt', 'W1', '--csv', 'x.csv']) == 2
  err = capsys.readouterr().err
  assert '--spt is not a flag of `plan fit`' in err and len(err.strip().splitlines()) == 1
  assert plan.main(['gains', '--npt', 'W0']) == 2
  assert 'needs --spt' in capsys.readouterr().err
  assert plan.main(['--bogus=1', 'fit']) == 2 and 'bogus' in capsys.readouterr().err
  assert plan.main(['forecast', '--fit', str(tmp_path / 'x.json'), '--delta', '0.02', '--tokens', '1e9']) == 2
  assert 'x.json does not exist' in capsys.readouterr().err
  assert plan.main(['recommend', '--fit', 'x.json', '--tokens', '1e9', '--crossover', '0.02']) == 2
  assert '--crossover' in capsys.readouterr().err
  csv = tmp_path / 'percent.csv'
  csv.write_text('delta,tokens,domain_train_loss,domain_test_loss\n2,1e9,2.0,2.1\n')
  assert plan.main(['fit', '--csv', str(csv), '--out', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert 'percent' in err and len(err.strip().splitlines()) == 1
  missing = _write_pipeline(tmp_path, 0.02, 0, with_train_eval=False)
  assert plan.main(['fit', '--runs', f'{workdirs[0]},{missing}', '--out', str(tmp_path)]) == 1
  assert 'eval/domain_train/loss' in capsys.readouterr().err
  mixed = _write_pipeline(tmp_path / 'mixed', 0.05, 0, tokenizer='olmo')
  assert plan.main(['fit', '--runs', f'{workdirs[0]},{mixed}', '--out', str(tmp_path)]) == 1
  assert 'different tokenizers' in capsys.readouterr().err
  few = tmp_path / 'few.csv'
  few.write_text('delta,tokens,domain_train_loss,domain_test_loss\n0.01,1e9,2.0,2.1\n0.02,2e9,1.9,2.0\n')
  assert plan.main(['fit', '--csv', str(few), '--out', str(tmp_path)]) == 1
  assert 'cannot fit 12 parameters' in capsys.readouterr().err


def test_nan_evaluations_are_dropped_with_a_warning(tmp_path, capsys):

  workdir = _write_pipeline(tmp_path, 0.02, 0, nan_row=True)
  with pytest.warns(UserWarning, match='NaN'):
    curve = runs.eval_curve(runs.read(workdir))
  assert len(curve['tokens']) == 14 and np.all(np.isfinite(curve['domain_test']))


def test_csv_input(tmp_path, capsys):
  data = test_scaling.synthetic_data(points=15)
  post = {(d, t): drop for d, t, drop in zip(data.ft_delta, data.ft_tokens, data.ft_drop, strict=True)}
  lines = ['delta,tokens,domain_train_loss,domain_test_loss,post_ft_domain_test_loss']
  for d, t, train, test in zip(data.delta, data.tokens, data.train_loss, data.test_loss, strict=True):
    lines.append(f'{d},{t},{train},{test},')
  law = test_scaling.true_law()
  for (d, t), drop in post.items():
    test = float(law.test_loss(d, t))
    lines.append(f'{d},{t},{float(law.train_loss(d, t))},{test},{test - drop}')
  (tmp_path / 'points.csv').write_text('\n'.join(lines) + '\n')
  assert plan.main(['fit', '--csv', str(tmp_path / 'points.csv'), '--bootstrap', '5', '--out', str(tmp_path)]) == 0
  fit = json.loads((tmp_path / 'fit.json').read_text())
  assert fit['residuals']['n_points'] == 90 + len(post) and len(fit['finetune_delta']) == 6


def test_fit_on_a_subset_with_the_huber_loss(workdirs, tmp_path):
  assert (
    plan.main(
      [
        'fit',
        '--runs',
        ','.join(workdirs),
        '--bootstrap',
        '0',
        '--loss',
        'huber',
        '--max_delta',
        '5%',
        '--max_tokens',
        '100B',
        '--out',
        str(tmp_path),
      ]
    )
    == 0
  )
  fit = json.loads((tmp_path / 'fit.json').read_text())
  assert fit['objective'] == 'huber' and fit['fitted_on'] == {'max_delta': 0.05, 'max_tokens': 1e11}
  assert max(fit['fitted_deltas']) == 0.05 and fit['token_range'][1] <= 1e11
  assert '0.1' not in fit['finetune_delta']


def test_outputs_are_strict_json(tmp_path):
  """An undefined value (a NaN from a diverged fit) is written as null, never as a bare NaN."""
  path = plan._write(str(tmp_path), 'x.json', {'gap': float('nan'), 'values': np.array([1.0, np.inf])})
  assert json.loads(open(path).read(), parse_constant=pytest.fail) == {'gap': None, 'values': [1.0, None]}


def test_recommend_from_pilots_picks_the_lowest_post_finetuning_loss(workdirs, tmp_path, capsys):
  """`plan recommend --pilots`: the δ of the pilot whose finetunes from its last checkpoint reach the lowest loss."""
  law, chosen = test_scaling.true_law(), workdirs[2:5]  # δ = 1, 2, 5%.
  out = tmp_path / 'pilots'
  assert plan.main(['recommend', '--pilots', ','.join(chosen), '--out', str(out)]) == 0
  assert 'Pick: δ =' in capsys.readouterr().out
  result = json.loads((out / 'pilots.json').read_text())
  deltas = [0.01, 0.02, 0.05]
  # The fixture's best finetune from the last checkpoint (2e11 tokens) is the law's post-FT loss there; the
  # earlier checkpoints' finetunes (other budgets) are not the pilot's result.
  expected = {d: float(law.post_ft_loss(d, 2e11)) for d in deltas}
  assert [p['post_ft'] for p in result['pilots']] == pytest.approx([expected[d] for d in deltas])
  assert result['best_delta'] == min(deltas, key=expected.get)
  assert result['best_delta_clean'] is None  # The fixture has no validation split.
  assert result['train_flops'] == pytest.approx(3 * flops.train_flops_per_token(flops.PRESETS['cpu-2m'], 128) * 2e11)
  assert (out / 'report.md').exists()

  # A command line mixing the two ways is one line (exit 2); pilots that cannot be compared are one line (exit 1).
  assert plan.main(['recommend', '--pilots', chosen[0], '--tokens', '1e9']) == 2
  assert 'drop --tokens' in capsys.readouterr().err
  assert plan.main(['recommend']) == 2
  assert 'needs --fit' in capsys.readouterr().err
  assert plan.main(['recommend', '--pilots', f'{chosen[0]},{chosen[0]}']) == 1
  assert 'repeat a δ' in capsys.readouterr().err
  assert plan.main(['recommend', '--pilots', chosen[0]]) == 1
  assert 'at least two pilots' in capsys.readouterr().err
