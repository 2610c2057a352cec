"""What the command-line entry points share: bad input ends in one line on stderr, not a traceback."""

import os
import sys
from typing import Callable

from absl import app


def run(main: Callable, before: Callable[[], None] | None = None) -> None:
  """before() (defining or checking flags), then app.run(main); a ValueError (bad input) becomes `error: ...`.

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
