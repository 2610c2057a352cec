"""Fits on a subset of the runs forecast the held-out ones (§5.3): errors, onsets and crossovers scored."""

import subprocess
import sys

import numpy as np
import pytest

from spt_jax.analysis import forecast_check, scaling, scaling_fit
from tests import test_scaling


@pytest.fixture(scope='module')
def checked():
  data = test_scaling.synthetic_data(points=30)
  post = np.array(
    [float(test_scaling.true_law().post_ft_loss(d, t)) for d, t in zip(data.ft_delta, data.ft_tokens, strict=True)]
  )
  data.ft_before = post + data.ft_drop
  fit = scaling_fit.fit_joint(data, bootstrap=0, max_delta=0.05, max_tokens=1.2e11)
  return data, fit, forecast_check.check(fit.law, data, crossover_pairs=[(0.05, 0.1)], objective='test')


def test_the_fit_sees_only_the_subset(checked):
  data, fit, _ = checked
  assert fit.law.fitted_on == {'max_delta': 0.05, 'max_tokens': 1.2e11}
  assert max(fit.law.fitted_deltas) == 0.05 and fit.law.token_range[1] <= 1.2e11
  assert fit.residuals.n_points == int(np.sum((data.delta <= 0.05) & (data.tokens <= 1.2e11)))
  assert scaling.law_from_fit(fit.to_json()).fitted_on['max_delta'] == 0.05


def test_held_out_curve_and_later_tokens_are_scored(checked):
  _, _, report = checked
  assert set(report.held_out_delta) == {'0.1'}
  assert set(report.later_tokens) == {'0', '0.001', '0.01', '0.02', '0.05'}
  ten = report.held_out_delta['0.1'].test
  assert ten.n == 30 and 0.005 < ten.mean_abs_relative_error < 0.03  # 1% noise plus extrapolation.
  assert all(e.test.max_abs_relative_error < 0.05 for e in report.later_tokens.values())
  assert set(report.post_ft) >= {'0.1'}


def test_onset_and_crossover_predicted_against_observed(checked):
  _, _, report = checked
  truth = test_scaling.true_law()
  onset = report.onset['0.1']
  assert not onset.fitted and onset.observed_tokens is not None
  assert onset.observed_tokens == pytest.approx(scaling.overfitting_onset(truth, 0.1), rel=0.2)
  assert abs(onset.relative_error) < 0.3
  assert report.to_json()['onset']['0.1']['relative_error'] == onset.relative_error
  assert all(report.onset[d].observed_tokens is None for d in ('0', '0.001', '0.05'))  # Still falling.
  assert all('relative_error' not in report.to_json()['onset'][d] for d in ('0', '0.001', '0.05'))
  cross = report.crossovers[0]
  true_cross = scaling.crossovers(truth, 0.05, 0.1, (1e9, 4e11), 'test')
  assert [c['better_after'] for c in cross.observed] == [0.05] == [c['better_after'] for c in cross.predicted]
  assert cross.observed[0]['tokens'] == pytest.approx(true_cross[0]['tokens'], rel=0.1)
  assert cross.predicted[0]['tokens'] == pytest.approx(true_cross[0]['tokens'], rel=0.5)  # Fitted on ≤ 5%.
  text = forecast_check.format_report(report)
  assert 'held out delta | 0.1' in text and 'Crossover δ=0.05 vs 0.1' in text


def test_observed_onset_ignores_curves_still_falling():
  tokens = np.geomspace(1e9, 1e11, 20)
  assert forecast_check.observed_onset(tokens, 3 - np.log(tokens) / 30) is None
  bowl = (np.log(tokens) - np.log(1e10)) ** 2
  assert forecast_check.observed_onset(tokens, bowl) == pytest.approx(1e10, rel=0.05)


def test_nothing_held_out_is_said():
  data = test_scaling.synthetic_data(points=15)
  report = forecast_check.check(scaling_fit.fit_joint(data, bootstrap=0).law, data)
  assert any('nothing is out of sample' in n for n in report.notes)


@pytest.mark.parametrize('module', ['scaling_fit', 'forecast_check', 'scaling', 'paper', 'runs'])
def test_analysis_modules_import_alone_without_model_code(module):

  code = (
    f'import sys; import spt_jax.analysis.{module}; '
    'assert "spt_jax.model.decoder" not in sys.modules and "spt_jax.train.step" not in sys.modules'
  )
  subprocess.run([sys.executable, '-c', code], check=True)
