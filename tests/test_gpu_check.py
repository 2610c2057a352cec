"""The GPU check's path at CPU sizes: the step measured against a rate measured in the same run, a trained tiny
model's greedy continuation compared across devices (here the CPU with itself), attention's bfloat16 error."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_path_measures_and_compares(tmp_path):
  out = subprocess.run(
    [sys.executable, '-m', 'spt_jax.gpu_check', '--dry', f'--out={tmp_path}', '--rounds=1', '--steps=2'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads((tmp_path / 'gpu_check.json').read_text())
  assert result['batch_size'] == 8 and result['preset'] == 'cpu-160k'
  assert result['tokens_per_second'] > 0 and 0 < result['mfu'] < 1 and result['peak_matmul_flops_per_second'] > 0
  assert result['greedy_equal'] and len(result['greedy_cpu']) == 24
  # The model learnt its pattern (a 61-token cycle from token 8 on), so the comparison is of confident choices.
  pattern = (np.arange(8, 32) * 7 % 61 + 3).tolist()
  assert result['greedy_cpu'] == pattern
  # Attention in bfloat16 against float32: real rounding errors (bfloat16 has 8 bits), here XLA's against itself.
  assert result['attention_ok'] and result['attention_errors'] == result['attention_errors_xla']
  assert all(1e-4 < error < 3e-2 for error in result['attention_errors'])


def test_without_a_gpu_the_full_check_is_refused_in_one_line():
  out = subprocess.run(
    [sys.executable, '-m', 'spt_jax.gpu_check'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith('error: no GPU here')
