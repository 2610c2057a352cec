"""One compile per program: within a pipeline no program compiles twice, and a new process loads them all from
JAX's persistent compilation cache instead of compiling again."""

import re

import pytest

from tests import test_main


def _pipeline(tmp_path, workdir, *extra):
  out = test_main._main(*test_main.local_files_run(tmp_path, tmp_path / workdir), *extra, env={'JAX_LOG_COMPILES': '1'})
  assert out.returncode == 0, out.stderr[-3000:]
  log = (tmp_path / workdir / 'log.txt').read_text()  # JAX's lines go to the run's log, not the terminal.
  compiled = re.findall(r'Compiling (\S+) with global shapes', log)
  hits = re.findall(r"Persistent compilation cache hit for '(\S+)'", log)
  return compiled, hits


@pytest.mark.slow
def test_a_program_compiles_once_and_a_new_process_loads_it(tmp_path):
  test_main._write_documents(tmp_path / 'general', 'the a cat dog sat on mat ran to house'.split(), 40, 0)
  test_main._write_documents(tmp_path / 'domain', 'lemma proof qed intros apply rewrite'.split(), 20, 1)

  compiled, hits = _pipeline(tmp_path, 'first')
  assert 'jit(_train_step_with_table)' in compiled and 'jit(_eval_step)' in compiled
  # The cache starts empty, so a hit inside this process would be a program compiled a second time.
  assert hits == []
  assert len(list((tmp_path / 'cache' / 'jax_compilation').iterdir())) >= len(compiled)

  # Another process, another workdir, the same shapes: every program comes from the cache.
  compiled_again, hits_again = _pipeline(tmp_path, 'second')
  assert len(hits_again) == len(compiled_again) == len(compiled)
  assert {'jit__train_step_with_table', 'jit__eval_step'} <= set(hits_again)

  # Off with one flag: nothing is read from the cache.
  _, hits_off = _pipeline(tmp_path, 'third', '--config.compilation_cache=', '--config.stage=pretrain')
  assert hits_off == []
