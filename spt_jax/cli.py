"""What the command-line entry points share: bad input ends in one line on stderr, not a traceback.

Every entry point parses absl flags; those that read a config take it with ml_collections.config_flags
(`--config=configs/<domain>.py:<size> --config.KEY=VALUE`).
"""

import os
import sys
from typing import Callable

from absl import app


def check_config_overrides(argv: list[str] | None = None) -> None:
  """Unknown `--config.KEY`s are one-line errors naming the close keys, before absl parses (and rejects) them."""
  from spt_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  argv = sys.argv if argv is None else argv
  config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if config_arg:
    config_lib.check_override_keys(config_lib.load(config_arg), argv)


def run(main: Callable, before: Callable[[], None] | None = check_config_overrides) -> None:
  """before() (checking flags), then app.run(main); a ValueError (bad input) becomes `error: ...`.

  Set SPT_JAX_TRACEBACK=1 to see the traceback instead.
  """
  try:
    if before is not None:
      before()
    app.run(main)
  except ValueError as error:
    if os.environ.get('SPT_JAX_TRACEBACK'):
      raise
    sys.exit(f'error: {error}')
