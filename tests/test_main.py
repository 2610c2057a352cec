"""The entry point: dry run of the paper configs, and one-line errors for bad configs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from spt_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'spt_jax.main', *args], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})), timeout=120)


@pytest.mark.parametrize('preset, params', [('1b', 1_176_764_416), ('3b', 2_250_506_240)])
def test_dry_run_of_paper_presets(preset, params, tmp_path):
  out = _main(f'--config=configs/proofpile.py:{preset}', f'--workdir={tmp_path}', '--dry_run', '--devices=64')
  assert out.returncode == 0, out.stderr
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary['params'] == params
  assert summary['tokens_per_step'] == 2048 * 2048
  assert summary['steps'] == 47_684  # 200B tokens.
  assert summary['mesh'] == {'data': 1, 'fsdp': 64, 'tensor': 1}
  # Parameters and AdamW's two moments, float32, sharded 64 ways (to within the unsharded scalars).
  assert summary['state_bytes_per_device'] == pytest.approx(params * 12 / 64, rel=1e-3)
  assert not list(tmp_path.iterdir())  # A dry run writes nothing.


def test_unknown_key_names_close_keys(tmp_path):
  out = _main('--config=configs/proofpile.py:tiny', f'--workdir={tmp_path}', '--config.batch_sze=3')
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith("error: unknown config key 'batch_sze'; close valid keys: batch_size")


def test_paper_preset_needs_data_paths_and_an_accelerator(tmp_path):
  config = config_lib.load(str(ROOT / 'configs/musicpile.py:1b'))
  with pytest.raises(ValueError, match=r'config.data.general and config.data.domain not set.*:tiny'):
    config_lib.check_runnable(config, 'cpu')
  config.data.general, config.data.domain = 'files:/a/*.txt', 'files:/b/*.txt'
  with pytest.raises(ValueError, match=r'paper scale and this host has only a CPU.*:tiny'):
    config_lib.check_runnable(config, 'cpu')
  config_lib.check_runnable(config, 'tpu')


def test_every_config_file_and_preset_loads():
  for name in ('proofpile', 'musicpile', 'chempile'):
    for preset in ('1b', '3b', '600m', '300m', 'tiny', 'test'):
      config = config_lib.load(str(ROOT / f'configs/{name}.py:{preset}'))
      assert config.model.vocab_size > 0
      if preset in ('tiny', 'test'):
        assert config.data.tokenizer_vocab_size == config.model.vocab_size
