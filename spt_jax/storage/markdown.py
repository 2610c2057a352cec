"""Markdown tables as the reports write them."""

from collections.abc import Iterable, Sequence


def table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
  """The lines of a table: the header, its rule, then one line per row (each cell as str())."""
  return [row(header), '|' + '---|' * len(header), *(row(cells) for cells in rows)]


def row(cells: Sequence[object]) -> str:
  """One line of a table."""
  return '| ' + ' | '.join(str(cell) for cell in cells) + ' |'
