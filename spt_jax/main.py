"""Entry point: flags -> config -> the stage(s) of a run (or a dry run). Nothing else lives here.

python -m spt_jax.main --config=configs/proofpile.py:tiny --workdir=/tmp/proofpile_tiny
python -m spt_jax.main --config=configs/proofpile.py --workdir=W --dry_run
python -m spt_jax.main --config=configs/proofpile.py --dry_run --topology=v5e-256
"""

import dataclasses
import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from spt_jax.storage import layout

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, optionally with :preset.')
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Where the run writes config, metrics, checkpoints, summary (default: runs/<config>_<preset>); a bucket URL '
  '(gs://BUCKET/run): checkpoints go there, the rest is mirrored there from a local copy; with several hosts, a '
  'bucket URL or an absolute path all of them see.',
)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Build the abstract state and print what the run would be.')
_DEVICES = flags.DEFINE_integer(
  'devices', 0, 'Dry run only: plan for this many devices (default: present).', lower_bound=0
)
_TOPOLOGY = flags.DEFINE_string(
  'topology',
  '',
  'Dry run only: compile for this Cloud TPU topology (v5e-256, v4-8, '
  '...) and print the per-chip plan (spt_jax/hardware/aot.py; needs libtpu).',
)
_MFU = flags.DEFINE_float('mfu', 0.4, "Dry run with --topology: the MFU the run's accelerator-hours assume.")
_VERBOSE = flags.DEFINE_bool(
  'verbose',
  False,
  "Show the libraries' log lines (orbax, JAX, asyncio) on the terminal too; they always go to W/log.txt.",
)
flags.mark_flag_as_required('config')
flags.register_validator(_MFU, lambda mfu: 0 < mfu <= 1, 'the MFU is a fraction in (0, 1], e.g. 0.4')
flags.register_multi_flags_validator(
  ['dry_run', 'devices', 'topology'],
  lambda values: values['dry_run'] or not (values['devices'] or values['topology']),
  '--devices and --topology plan a dry run; add --dry_run',
)


def _known_topology(name: str) -> bool:
  """Empty, or a Cloud TPU accelerator type that aot.parse_topology reads (imported only when one is given)."""
  if not name:
    return True
  from spt_jax.hardware import aot  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  try:
    aot.parse_topology(name)
  except ValueError as error:
    raise flags.ValidationError(str(error)) from None
  return True


flags.register_validator(_TOPOLOGY, _known_topology)


def main(argv):
  del argv
  import jax  # noqa: PLC0415  After flag parsing, so that --xla flags in the environment apply.

  from spt_jax.hardware import aot, dry_run  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  from spt_jax.model import sharding  # noqa: PLC0415  after absl parses the flags, so that --xla flags in the environment apply
  from spt_jax.storage import bucket, files  # noqa: PLC0415  after absl parses the flags, so that --xla flags in the environment apply
  from spt_jax.train import compile_cache, validate  # noqa: PLC0415  after absl parses the flags, so that --xla flags in the environment apply

  config = _CONFIG.value
  if _DRY_RUN.value and _TOPOLOGY.value:
    compile_cache.enable(config.compilation_cache, config.data.cache_dir)  # A rerun of the plan loads it.
    topology_plan = aot.plan(config, _TOPOLOGY.value, mfu=_MFU.value)
    print(topology_plan.format())
    print(json.dumps(topology_plan.to_json()))
    return
  if _DRY_RUN.value:
    config = validate.check(config, devices=_DEVICES.value or jax.device_count(), sources=False)
    summary = dry_run.describe(aot.with_knobs(config), _DEVICES.value or jax.device_count())
    print(summary.format())
    print(dry_run.data_plan(config, jax.process_count()).format())
    if aot.left_to_the_run(config):
      print(
        'memory knobs     left to the run (grad_accum_steps=0 / remat_policy=auto): chosen at its start to fit the '
        'chips; --topology=NAME shows the choice (one microbatch shown above)'
      )
    print(json.dumps(dataclasses.asdict(summary)))
    return
  held_logs = files.quiet_library_logs(_VERBOSE.value)
  workdir = _WORKDIR.value or sharding.default_workdir(config_flags.get_config_filename(flags.FLAGS['config']))
  sharding.initialize_distributed()
  if jax.process_count() > 1 and not (bucket.is_url(workdir) or os.path.isabs(os.path.expanduser(workdir))):
    raise ValueError(
      f'the workdir {workdir!r} is relative, so each of the {jax.process_count()} hosts would write its own; pass '
      '--workdir=gs://BUCKET/run (or an absolute path on a mount every host sees)'
    )
  if jax.process_count() == 1:  # Several hosts: JAX's preemption service owns SIGTERM.
    files.exit_quietly_on_sigterm()  # Before the first step a SIGTERM exits 0 with one line, not 143.
  # Before anything is written: a rejected config or folder leaves the workdir and the cache as they were. The one
  # validation of the run, into the frozen Experiment that the stages below take as valid.
  config = validate.check(config, backend=jax.default_backend())
  mirror = None
  if bucket.is_url(workdir):  # The run works in a local mirror; its checkpoints go to the bucket (storage/bucket.py).
    from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

    bucket.orbax_through_fsspec()
    bucket.check(workdir)
    local = bucket.mirror_folder(
      workdir, fetch.cache_root(config.data.cache_dir), jax.process_index(), jax.process_count()
    )
    mirror = bucket.Mirror(workdir, local)
    workdir = mirror.local
  validate.check_folders(config, workdir, checkpoints_here=mirror is None)
  if mirror is None:  # Several processes: one folder they all see, checked before anything is compiled.
    sharding.check_shared_folder(workdir, 'workdir')
  compile_cache.enable(config.compilation_cache, config.data.cache_dir)  # Before the first compile.
  # Microbatches and remat the config left to the run, chosen for these devices (an explicit setting that does not
  # fit their memory stops here); on a CPU nothing is compiled.
  config = aot.fit_to_devices(config, jax.devices(), log=print if jax.process_index() == 0 else lambda line: None)
  if not _WORKDIR.value and jax.process_index() == 0:
    print(f'--workdir not given: the run writes to {workdir}', flush=True)
  from spt_jax.train import loop, pipeline  # noqa: PLC0415  after absl parses the flags, so that --xla flags in the environment apply

  # One live run per workdir: a pipeline holds W and every stage folder, before any file in them is touched.
  folders = [workdir, *(pipeline.stage_folders(config, workdir) if config.stage == 'pipeline' else [])]
  with files.WorkdirLock(folders, enabled=jax.process_index() == 0):
    if mirror is not None:
      copied = mirror.pull()  # Before the log opens: a resumed run appends to the log it left in the bucket.
      if copied and jax.process_index() == 0:
        print(f'{copied} files of {mirror.url} copied to its local mirror {workdir}', flush=True)
    files.log_to(held_logs, os.path.join(workdir, layout.log_name(jax.process_index(), jax.process_count())))
    try:
      if config.stage == 'pipeline':
        result = pipeline.run_pipeline(config, workdir)
      else:
        result = loop.run(config, workdir, stage=config.stage)
    except BaseException:  # The run's own error is the one to report; its log still reaches the bucket if it can.
      bucket.push_all(jax.process_index(), jax.process_count())
      raise
    # What the run wrote since its last checkpoint (the summary, the report, the log) reaches the bucket.
    bucket.push_all(jax.process_index(), jax.process_count(), final=True)
  if result.stop_reason == 'nonfinite_loss':  # Preemption exits 0 so that the scheduler restarts the run.
    sys.exit(1)


def _run():
  from spt_jax import cli  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  cli.run(main)


if __name__ == '__main__':
  _run()
