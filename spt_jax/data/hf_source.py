"""`hf:` sources: Hugging Face datasets read in streaming mode (the Hub, or a local folder laid out like one).

  hf:NAME[,NAME...]?split=train&field=text[&name=CONFIG][&where=FIELD=VALUE|VALUE...]

Records are read in the dataset's order without downloading it whole; `where` keeps only records whose FIELD
is one of the values. For users' own datasets: the paper's are `hub:` sources (hub_source.py), read by pinned
revision and file list (`datasets` 4 refuses ProofPile's loading script).
"""

import os
from collections.abc import Iterator

from spt_jax.data import hub_datasets


def _where(source) -> tuple:
  where = source.options.get('where', '')
  if not where:
    return None, None
  key, equals, values = where.partition('=')
  if not (key and equals and values):
    raise ValueError(f'source {source.name!r}: ?where= must read FIELD=VALUE[|VALUE...] in {source.spec!r}')
  return key, set(values.split('|'))


def check(source) -> None:
  """One-line errors for a malformed hf: spec, before any download."""
  _where(source)
  try:
    import datasets  # noqa: F401, PLC0415  availability check: `datasets` is imported only by hf: sources
  except ImportError:
    raise ValueError(f'source {source.name!r}: hf: sources need the `datasets` package; pip install datasets') from None


def local_files(source) -> list:
  """Files of the local dataset folders a spec names (for change detection); the Hub's are not listed."""
  found = []
  for name in source.target.split(','):
    folder = os.path.expanduser(name)
    if os.path.isdir(folder):
      found += sorted(
        os.path.join(root, f) for root, _, files in os.walk(folder) for f in files if not f.startswith('.')
      )
  return found


def documents(source) -> Iterator[str]:
  import datasets  # noqa: PLC0415  heavy; only the sources that need it import it

  field = source.options.get('field', 'text')
  key, values = _where(source)
  for name in source.target.split(','):
    name = name.strip()
    path = os.path.expanduser(name)
    try:
      dataset = datasets.load_dataset(
        path if os.path.isdir(path) else name,
        source.options.get('name') or None,
        split=source.options.get('split', 'train'),
        streaming=True,
      )
    except Exception as error:
      message = str(error).splitlines()[0] if str(error) else type(error).__name__
      paper = next(
        (
          dataset.name
          for dataset in hub_datasets.DATASETS.values()
          if len(dataset.parts) == 1 and dataset.parts[0].repo == name
        ),
        '',
      )
      hint = f"; the paper's {name} reads as hub:{paper}" if paper else ''
      raise ValueError(
        f'source {source.name!r}: datasets.load_dataset({name!r}) failed: {message[:200]}; '
        f'check the name, ?name= and ?split={hint}'
      ) from None
    for number, record in enumerate(dataset):
      if key is not None and str(record.get(key)) not in values:
        continue
      if field not in record:
        raise ValueError(
          f'source {source.name!r}: records of {name!r} have no field {field!r} (fields: '
          f'{sorted(record)}); set ?field= in {source.spec!r}'
        )
      text = source._as_text(record[field], f'{name}[{number}]')
      if isinstance(text, str) and text.strip():
        yield text
