"""The throughput benchmark's figures, and the CPU host allocator it runs under.

Subprocesses: the benchmark on 2 simulated devices, and allocator settings that only apply before jax is imported.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from spt_jax.hardware import step_profile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, **env) -> str:
  result = subprocess.run(
    [sys.executable, '-c', textwrap.dedent(code)],
    capture_output=True,
    text=True,
    cwd=_ROOT,
    env={**os.environ, 'PYTHONPATH': _ROOT, 'JAX_PLATFORMS': 'cpu', **env},
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _bench(*arguments: str) -> tuple[str, dict]:
  """The benchmark of cpu-160k at 4 × 32 on 2 simulated devices, 2 rounds of 2 steps: its output and figures."""
  result = subprocess.run(
    [sys.executable, '-m', 'spt_jax.bench', '--preset=cpu-160k', '--batch_size=4', '--seq_len=32', '--steps=2']
    + ['--rounds=2', '--matmul_size=256', *arguments],
    capture_output=True,
    text=True,
    cwd=_ROOT,
    timeout=900,
    env={
      **os.environ,
      'PYTHONPATH': _ROOT,
      'JAX_PLATFORMS': 'cpu',
      'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
    },
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_of_runs_together_against_one_by_one_on_every_device():
  """--runs=R: both ways train R runs of R·batch tokens per step; the ratio is of their best rounds."""
  out, figures = _bench('--runs=3')
  assert figures['devices'] == 2 and figures['runs'] == 3
  assert figures['together_over_alone'] == pytest.approx(
    figures['together_tokens_per_second'] / figures['alone_tokens_per_second']
  )
  assert len(figures['round_together_over_alone']) == 2 and figures['alone_tokens_per_second'] > 0
  # Both MFUs share the FLOPs per token and the peak measured in the run.
  assert figures['together_mfu'] / figures['alone_mfu'] == pytest.approx(figures['together_over_alone'])
  assert 'together ÷ alone' in out


def test_bench_keeps_the_best_round_of_each_figure_on_every_device():
  _, figures = _bench()
  assert figures['devices'] == 2 and figures['rounds'] == 2
  assert figures['step_seconds'] == min(figures['round_step_seconds'])
  assert figures['peak_matmul_flops_per_second'] == max(figures['round_peak_flops_per_second'])
  assert figures['tokens_per_second'] == pytest.approx(4 * 32 / figures['step_seconds'])
  assert figures['mfu'] == pytest.approx(figures['model_flops_per_second'] / figures['peak_matmul_flops_per_second'])
  assert 0 < figures['mfu'] < 1 and all(0 < m < 1 for m in figures['round_mfu'])


def test_profile_splits_the_step_by_kind_and_finds_the_model_flops_in_its_dots(tmp_path):
  out, figures = _bench(f'--profile={tmp_path}')
  found = figures['profile']
  kinds = found['seconds_per_step_by_kind']
  assert sum(kinds.values()) == pytest.approx(found['op_seconds_per_step'])
  assert kinds['matmul'] > 0 and kinds['elementwise'] > 0 and found['matmul_flops_per_second'] > 0
  # The dots' FLOPs, read from the compiled program (both devices' shares, every layer of the scan), are the
  # model's count (6N + attention) give or take what the count leaves out.
  assert 0.8 < found['matmul_flops_per_step'] / (figures['flops_per_token'] * 4 * 32) < 1.25
  assert 'of the peak matmul' in out and found['top_ops'][0]['seconds_per_step'] > 0


def test_profile_into_a_folder_that_cannot_be_made_is_refused_in_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  out = subprocess.run(
    [sys.executable, '-m', 'spt_jax.bench', f'--profile={tmp_path}/file/trace'],
    capture_output=True,
    text=True,
    cwd=_ROOT,
    timeout=900,
    env={**os.environ, 'PYTHONPATH': _ROOT, 'JAX_PLATFORMS': 'cpu'},
  )
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(f'error: --profile={tmp_path}/file/trace: Not a directory')


def test_profile_reads_a_dot_and_what_a_fusion_computes_from_the_compiled_program():
  a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
  hlo = jax.jit(lambda a, b: (jnp.tanh(a @ b).sum(), a.T)).lower(a, b).compile().as_text()
  ops, computations = step_profile.parse_hlo(hlo)
  flops = {name: sum(leaf.dot_flops for leaf in step_profile.fused(op, computations)) for name, op in ops.items()}
  assert sorted(f for f in flops.values() if f) == [2 * 64 * 16 * 32]
  kinds = {step_profile.kind_of(op, computations) for op in ops.values()}
  assert {'matmul', 'data movement'} <= kinds


_FAULTS = """
    import resource, sys
    import spt_jax, jax, jax.numpy as jnp
    from spt_jax.hardware import host_memory
    f = jax.jit(lambda x: jnp.sin(x) * 2)
    x = jnp.ones((32 << 20,), jnp.float32)  # 128 MiB in and out: above every glibc mmap threshold.
    faults = []
    for _ in range(16):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(faults)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc allocator settings')
def test_cpu_host_memory_is_reused_instead_of_faulted_in_every_step():
  kept = json.loads(_python(_FAULTS))
  default = json.loads(_python(_FAULTS, SPT_JAX_KEEP_HOST_MEMORY='0'))
  pages = (128 << 20) // 4096
  assert min(default) > pages // 2  # glibc maps each large output afresh: a page fault per page touched.
  # A freed block is reused once the heap has grown to the working set; on a busy machine a late free makes
  # some calls grow it again, so only some calls are fault-free (all are on an idle one).
  assert min(kept) < pages // 100, kept


def test_host_memory_settings_are_skipped_once_jax_is_imported_or_off_cpu():
  out = _python(
    """
      import jax
      from spt_jax.hardware import host_memory
      print(host_memory.reuse_freed_memory())
  """,
    SPT_JAX_KEEP_HOST_MEMORY='1',
  )
  assert out.strip() == 'False'
  out = _python(
    """
      import os, sys
      sys.modules.pop('jax', None)
      from spt_jax.hardware import host_memory
      os.environ['JAX_PLATFORMS'] = 'tpu'
      print(host_memory._cpu_only())
  """,
    SPT_JAX_KEEP_HOST_MEMORY='0',
  )
  assert out.strip() == 'False'
