"""Schedule values at the boundaries of each phase, and one-line errors for bad settings."""

import math

import jax
import jax.numpy as jnp
import pytest

from spt_jax.train import config as config_lib
from spt_jax.train import schedules


def _config(kind='cosine', lr=4e-4, **schedule):
  c = config_lib.defaults()
  defaults = dict(kind=kind, warmup_steps=10, horizon_tokens=0)
  return config_lib.replace(
    c, **{'optimizer.lr': lr, **{f'schedule.{key}': value for key, value in {**defaults, **schedule}.items()}}
  )


def _at(schedule, step):
  return float(schedule(step))


def test_cosine_olmo_cut_off_at_200b_of_2t_tokens():
  tokens_per_step = 2048 * 2048
  config = _config(horizon_tokens=int(2e12), warmup_steps=2000)
  total = int(200e9) // tokens_per_step
  schedule = schedules.make_schedule(config, total, tokens_per_step)
  assert _at(schedule, 0) == 0.0
  assert _at(schedule, 1000) == pytest.approx(2e-4, rel=1e-6)
  assert _at(schedule, 2000) == pytest.approx(4e-4, rel=1e-6)
  # The cosine spans 2T tokens, so at the 200B cut the LR has barely moved.
  assert _at(schedule, total) == pytest.approx(3.9e-4, rel=0.01)
  horizon = int(round(2e12 / tokens_per_step))
  progress = (total - 2000) / (horizon - 2000)
  expected = 4e-5 + (4e-4 - 4e-5) * 0.5 * (1 + math.cos(math.pi * progress))
  assert _at(schedule, total) == pytest.approx(expected, rel=1e-5)
  assert _at(schedule, horizon) == pytest.approx(4e-5, rel=1e-5)
  assert _at(schedule, horizon + 100) == pytest.approx(4e-5, rel=1e-5)


def test_cosine_without_horizon_ends_at_final_lr():
  schedule = schedules.make_schedule(_config(), 110, 64)
  assert _at(schedule, 10) == pytest.approx(4e-4)
  assert _at(schedule, 60) == pytest.approx((4e-4 + 4e-5) / 2, rel=1e-5)
  assert _at(schedule, 110) == pytest.approx(4e-5, rel=1e-5)


@pytest.mark.parametrize('shape,middle', [('linear', 0.5), ('cosine', 0.5), ('1-sqrt', 1 - math.sqrt(0.5))])
def test_wsd_boundaries(shape, middle):
  # 10 warmup steps, then 100 steps: 80 stable, 20 decaying.
  schedule = schedules.make_schedule(_config('wsd', decay_shape=shape, final_lr=0.0), 110, 64)
  assert _at(schedule, 0) == 0.0
  assert _at(schedule, 5) == pytest.approx(2e-4)
  assert _at(schedule, 10) == pytest.approx(4e-4)
  assert _at(schedule, 90) == pytest.approx(4e-4)
  assert _at(schedule, 100) == pytest.approx(4e-4 * middle, rel=1e-5)
  assert _at(schedule, 110) == pytest.approx(0.0, abs=1e-12)


def test_wsd_shorter_decay_stays_at_final_lr():
  schedule = schedules.make_schedule(_config('wsd', stable_fraction=0.5, decay_fraction=0.25), 110, 64)
  assert _at(schedule, 60) == pytest.approx(4e-4)
  assert _at(schedule, 85) == pytest.approx(4e-5, rel=1e-5)
  assert _at(schedule, 110) == pytest.approx(4e-5, rel=1e-5)


def test_constant_and_warmup_in_tokens():
  schedule = schedules.make_schedule(_config('constant', lr=1e-4, warmup_tokens=640), 100, 64)
  assert schedules.warmup_steps(_config(warmup_tokens=640), 64) == 10
  assert _at(schedule, 0) == 0.0
  assert _at(schedule, 5) == pytest.approx(5e-5)
  assert _at(schedule, 10) == pytest.approx(1e-4)
  assert _at(schedule, 100) == pytest.approx(1e-4)
  no_warmup = schedules.make_schedule(_config('constant', lr=1e-4, warmup_steps=0), 100, 64)
  assert _at(no_warmup, 0) == pytest.approx(1e-4)


def test_schedule_is_jittable():

  schedule = schedules.make_schedule(_config('wsd'), 110, 64)
  assert float(jax.jit(schedule)(jnp.int32(10))) == pytest.approx(4e-4)


@pytest.mark.parametrize(
  'kind,schedule,match',
  [
    ('linear', {}, 'schedule.kind'),
    ('wsd', dict(stable_fraction=0.9, decay_fraction=0.2), 'exceeds 1'),
    ('wsd', dict(decay_shape='exp'), 'decay_shape'),
    ('cosine', dict(warmup_steps=-1), 'negative'),
    ('cosine', dict(horizon_tokens=-5), 'negative'),
    ('constant', dict(warmup_steps=1000), 'longer than the run'),
  ],
)
def test_bad_values_are_one_line_errors(kind, schedule, match):
  with pytest.raises(ValueError, match=match) as error:
    schedules.make_schedule(_config(kind, **schedule), 100, 64)
  assert '\n' not in str(error.value)
