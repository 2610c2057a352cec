"""The entry point: dry run of the paper configs, and one-line errors for bad configs."""

import json
import os
import pathlib
import random
import subprocess
import sys

import pytest

from spt_jax.data import paper_data
from spt_jax.train import config as config_lib
from spt_jax.train import validate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args, env=None):
  return subprocess.run(
    [sys.executable, '-m', 'spt_jax.main', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})),
    timeout=900,
  )


@pytest.mark.parametrize('preset, params', [('1b', 1_176_764_416), ('3b', 2_250_506_240)])
def test_dry_run_of_paper_presets(preset, params, tmp_path):
  out = _main(f'--config=configs/proofpile.py:{preset}', f'--workdir={tmp_path}', '--dry_run', '--devices=64')
  assert out.returncode == 0, out.stderr
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary['params'] == params
  assert summary['tokens_per_step'] == 2048 * 2048
  assert summary['steps'] == 47_683  # 200B tokens in whole batches, as the loop runs them.
  assert summary['mesh'] == {'data': 1, 'fsdp': 64, 'tensor': 1}
  # Parameters and AdamW's two moments, float32, sharded 64 ways (to within the unsharded scalars).
  assert summary['state_bytes_per_device'] == pytest.approx(params * 12 / 64, rel=1e-3)
  # The data plan, from the facts kept in the code: Dolma read by range (tokens × 0.98 × 2 bytes × 2049 / 2048 on
  # one host), ProofPile at its pinned revision.
  assert 'hoskinson-center/proof-pile@490b98024944 train/proofpile_train_*.jsonl.gz' in out.stdout
  assert '249 file(s) listed' in out.stdout and 'read by range' in out.stdout
  assert f'{47_683 * 2048 * 2048 * 0.98 * 2 * 2049 / 2048 / 1e9:,.1f} GB per host (1 host(s))' in out.stdout
  assert 'memory knobs     left to the run' in out.stdout
  assert not list(tmp_path.iterdir())  # A dry run writes nothing.


def test_unknown_key_names_close_keys(tmp_path):
  out = _main('--config=configs/proofpile.py:tiny', f'--workdir={tmp_path}', '--config.batch_sze=3')
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith("error: unknown config key 'batch_sze'; close valid keys: batch_size")


def test_paper_preset_needs_data_paths_and_an_accelerator(tmp_path):
  config = config_lib.load(str(ROOT / 'configs/musicpile.py:1b'))

  assert (config.data.general, config.data.domain) == (paper_data.DOLMA_OLMO_1B, paper_data.MUSICPILE)
  config.data.general = config.data.domain = ''
  with pytest.raises(ValueError, match=r'config.data.general and config.data.domain not set.*:tiny'):
    validate.check(config, backend='cpu')
  config.data.general, config.data.domain = 'files:/a/*.txt', 'files:/b/*.txt'
  with pytest.raises(ValueError, match=r'paper scale and this host has only a CPU.*:tiny'):
    validate.check(config, backend='cpu')
  validate.check(config, backend='tpu', sources=False)


def test_every_config_file_and_preset_loads():
  for name in ('proofpile', 'musicpile', 'chempile'):
    for preset in ('1b', '3b', '600m', '300m', 'tiny', 'small', 'test'):
      config = config_lib.load(str(ROOT / f'configs/{name}.py:{preset}'))
      assert config.model.vocab_size > 0
      if preset in ('tiny', 'small', 'test'):
        assert config.data.tokenizer_vocab_size == config.model.vocab_size


def _write_documents(folder: pathlib.Path, words: list[str], n_documents: int, seed: int) -> None:

  rng = random.Random(seed)
  folder.mkdir()
  for i in range(n_documents):
    sentences = [' '.join(rng.choice(words) for _ in range(rng.randint(4, 12))) + '.' for _ in range(40)]
    (folder / f'doc{i:03d}.txt').write_text(' '.join(sentences))


def local_files_run(tmp_path, workdir) -> list[str]:
  """The `:test` pipeline on the documents _write_documents made under tmp_path (general/, domain/)."""
  return [
    '--config=configs/proofpile.py:test',
    f'--workdir={workdir}',
    f'--config.data.general=files:{tmp_path}/general/*.txt',
    f'--config.data.domain=files:{tmp_path}/domain/*.txt',
    f'--config.data.cache_dir={tmp_path}/cache',
    '--config.data.tokenizer_vocab_size=300',
    '--config.model.vocab_size=300',
  ]


@pytest.mark.slow
def test_whole_pipeline_from_the_command_line(tmp_path):
  """The main command end to end on local files (the built-in corpora need the network): pretrain, finetune, report."""
  _write_documents(tmp_path / 'general', 'the a cat dog sat on mat and ran to house tree sun rain'.split(), 60, 0)
  _write_documents(tmp_path / 'domain', 'lemma proof qed intros apply rewrite induction nat'.split(), 30, 1)
  workdir = tmp_path / 'run'
  out = _main(*local_files_run(tmp_path, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['pretrain']['stop_reason'] == 'budget'
  assert summary['pretrain']['data']['epochs']['domain'] > 0
  assert set(summary['pretrain']['sources']) == {'general', 'domain'}  # What text it trained on (a digest each).
  assert len(summary['finetunes']) == 1 and summary['best']['best_domain_test_loss'] is not None
  best = summary['best']
  assert best['best_domain_test_loss'] < best['domain_test_loss_before']
  assert (workdir / 'report.md').read_text().startswith('# ')
  records = [json.loads(line) for line in (workdir / 'pretrain' / 'metrics.jsonl').read_text().splitlines()]
  assert {'step', 'tokens', 'train/loss', 'lr', 'data/tokens/domain', 'data/epochs/general'} <= set(records[-1])
  # Running the same command again finds everything finished and changes nothing.
  again = _main(*local_files_run(tmp_path, workdir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / 'summary.json').read_text())['best'] == best
