"""The paper's values: every one sourced, internally consistent with the claims the text makes about them."""

import inspect
import re

import pytest

from spt_jax.analysis import paper


def test_every_value_names_its_figure_or_section():
  for key, item in paper.VALUES.items():
    assert re.search(r'(Fig\.|§|App\.)\s*\S', item.where), key
    assert item.value is not None or item.claim, key  # A number or a stated claim.


def test_headline_values_agree_with_the_text():
  gains = {d: paper.value('relative_gain_pct', d) for d in paper.DOMAINS}
  assert sorted(gains, key=gains.get, reverse=True) == ['musicpile', 'proofpile', 'chempile']  # §2.2 ranking.
  multipliers = [paper.value('compute_multiplier', d) for d in paper.DOMAINS]
  assert max(multipliers) == 1.75  # "up to 1.75×" (abstract).
  assert [d for d in paper.DOMAINS if paper.beats_larger_model(d)] == ['proofpile']
  assert paper.value('overlap/gain_at_0.1pct_japanese') > paper.value('overlap/gain_at_10pct_japanese')
  assert paper.value('forecast/crossover_2pct_over_5pct_tokens') > paper.value('forecast/post_ft_fit_max_tokens')


def test_lookup_and_report_cells():
  assert paper.entry('compute_multiplier', 'chempile').where.startswith('Fig. 4')
  assert paper.cell('relative_gain_pct', 'musicpile') == '2% (Fig. 4 (left), §2.2)'
  assert paper.cell('data_size/scpt') == (
    '0.01 δ of the late stage: SCPT beats SPT for the 30M subset; for 3M it still overfits (Fig. 8 (left), §3.2)'
  )
  assert paper.cell('overlap/gain_at_10pct_japanese') == '2 % G (about) (Fig. 7, §3.1.1)'
  assert 'widens' in paper.cell('model_size/direction')
  with pytest.raises(KeyError, match='relative_gain_pct/musicpile'):
    paper.entry('relative_gain_pct', 'jazzpile')


def test_values_are_held_not_read():
  source = inspect.getsource(paper)
  assert 'open(' not in source and 'shared' not in source and 'import os' not in source
