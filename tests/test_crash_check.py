"""spt_jax.crash_check: the `:test` pipeline (its finetuning grid trained together) killed 9 times: the kills'
cycle of moments twice (the second turn lands in finetuning), then one while the report is written."""

import os
import subprocess
import sys

import pytest

from tests.test_main import ROOT, _write_documents, local_files_run


@pytest.mark.slow
def test_a_pipeline_killed_9_times_ends_as_an_uninterrupted_one(tmp_path):
  _write_documents(tmp_path / 'general', 'the a cat dog sat on mat and ran to house tree sun rain'.split(), 60, 0)
  _write_documents(tmp_path / 'domain', 'lemma proof qed intros apply rewrite induction nat'.split(), 30, 1)
  arguments = local_files_run(tmp_path, tmp_path / 'check')
  # 100 pretraining steps with 5 evaluations and saves; two finetuning points, trained as one stack of two.
  arguments += ['--config.tokens=25600', '--config.eval_every=20', '--config.checkpoint_every=20']
  arguments.append('--config.finetune.grid=((1e-3, 5), (3e-3, 5))')
  result = subprocess.run(
    [sys.executable, '-m', 'spt_jax.crash_check', *arguments, '--kills=9', '--seed=0'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    timeout=3000,
  )
  assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
  out = result.stdout
  assert '9 kills;' in out and 'all equal, bit for bit' in out, out
  kills = [line for line in out.splitlines() if line.startswith('kill ')]
  # Kills landed while evaluating, saving, starting each kind of stage and writing the report.
  for moment in ('at EVAL', 'at SAVE', 'at BEGIN pretrain', 'at BEGIN finetune', 'at a random time'):
    assert any(moment in line for line in kills), (moment, out)
  assert any('/finetune/' in line and 'at SAVE' in line for line in kills), out
  assert 'at REPORT' in kills[-1], out
