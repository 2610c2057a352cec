"""The data's own shape against the law's: curves of the paper's form pass, each way of leaving it is named."""

import numpy as np

from spt_jax.analysis import law_shape, scaling, scaling_fit
from tests.test_scaling_synthetic import TRUE, curves


def _shape_notes(data) -> list:
  return law_shape.notes(law_shape.measure(data))


def test_curves_of_the_laws_form_have_its_shape():
  data = curves(seed=5)
  shapes = law_shape.measure(data)
  assert [s.delta for s in shapes] == [0.0, 0.001, 0.01, 0.02, 0.05, 0.1]
  assert all(s.train_per_efold.value < 0 for s in shapes)
  exponents = [s.gap_exponent.value for s in shapes if s.gap_exponent is not None]
  assert len(exponents) >= 3 and exponents == sorted(
    exponents
  )  # Where the gap is positive throughout: its exponent rises with δ (eq. 4).
  assert _shape_notes(data) == []
  assert '| 10% | 40 |' in law_shape.section(shapes)


def _with(data, delta, train=None, test=None) -> scaling_fit.ScalingData:
  rows = data.delta == delta
  train_loss, test_loss = data.train_loss.copy(), data.test_loss.copy()
  if train is not None:
    train_loss[rows] = train(data.tokens[rows])
  if test is not None:
    test_loss[rows] = test(data.tokens[rows], train_loss[rows])
  return scaling_fit.ScalingData(data.delta, data.tokens, train_loss, test_loss)


def test_each_departure_from_the_laws_shape_is_one_note():
  data = curves(seed=6)
  # At δ = 0 the domain loss rises with T (a domain the general data moves away from).
  rising = _with(data, 0.0, train=lambda t: 3.0 + 0.1 * np.log(t / t[0]), test=lambda t, train: train)
  [note] = _shape_notes(rising)
  assert 'at δ=0 the domain train loss rises with T' in note
  # At δ = 0 the test and train samples differ: a gap with no domain data trained on.
  offset = _with(data, 0.0, test=lambda t, train: train + 0.2)
  [note] = _shape_notes(offset)
  assert 'at δ=0, where no domain data is trained on, the gap is +0.2' in note
  # The gap grows more slowly at 10% than at 5% (the law's exponent rises with δ).
  law = scaling.ScalingLaw(dict(TRUE))
  slow = _with(data, 0.1, test=lambda t, train: train + law.gap(0.1, t[0]) * (t / t[0]) ** 0.05)
  [note] = _shape_notes(slow)
  assert 'the gap grows more slowly at δ=0.1' in note and 'than at δ=0.05' in note


def test_the_fit_reports_the_shape_it_was_given():
  fit = scaling_fit.fit_joint(curves(seed=7, points=12), bootstrap=0)
  assert [s.delta for s in fit.shape] == [0.0, 0.001, 0.01, 0.02, 0.05, 0.1]
  record = fit.to_json()['shape']
  assert record[-1]['delta'] == 0.1 and set(record[-1]['train_per_efold']) == {'value', 'stderr'}
  assert not any(w.startswith('data shape') for w in fit.warnings)
