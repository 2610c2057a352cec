"""Markdown tables as the reports write them."""

from collections.abc import Iterable, Sequence


def table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
  """The lines of a table: the header, its rule, then one line per row (each cell as str())."""
  return [row(header), '|' + '---|' * len(header), *(row(cells) for cells in rows)]


def row(cells: Sequence[object]) -> str:
  """One line of a table."""
  return '| ' + ' | '.join(str(cell) for cell in cells) + ' |'


def number(value: float, fixed: str) -> str:
  """value in the `fixed` format (e.g. '.4f'), or in 4 significant digits where that would print 7 or more digits
  before the point (a forecast that diverged)."""
  return f'{value:{fixed}}' if abs(value) < 1e6 else f'{value:.4g}'
