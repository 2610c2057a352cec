"""`hub:` sources: the paper's datasets read file by file from the Hub, by pinned revision and file list.

  hub:NAME[?revision=SHA&configs=A|B&skip_configs=C&split=train&field=F&where=FIELD=V|V&check_records=N]

NAME is a dataset of hub_datasets.py (proof-pile, musicpile, chempile, chempile-reasoning, ...), which holds its
repositories, revisions, layout, fields and the paper's subset. Files are fetched as
`<endpoint>/datasets/<repo>/resolve/<revision>/<path>` with the endpoint from $HF_ENDPOINT (default the Hub), so a
static server in that layout stands in for it. Only the files the subset needs are read, by ranged requests
(retried, resumed where they broke): jsonl.gz line by line, parquet row group by row group and only the columns
used (a filtered row group's text is read only when its filter column matches). No loading script is fetched, let
alone run, and `datasets` is not needed. Parsing the spec lists the files (each listing of a commit is cached) and
checks, before any download: the dataset name, the revision (HTTP 404), the configs, the fields. Reading checks on
first contact what the facts module could not confirm (fields of the records, the filter's values) and stops with
one line saying what it found. `where` keeps a record whose FIELD equals one of the values (`=`) or contains one
of them in any case (`~`); `check_records` records without a match stop the run. Every document is counted by its
source within the dataset (MusicPile's src, ProofPile's subset, ChemPile's config) for the preparation's report.
"""

import dataclasses
import fnmatch
import gzip
import hashlib
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from spt_jax.data import hub_datasets
from spt_jax.storage import files

_BLOCK = 8 << 20  # Bytes per ranged request: larger reads are fetched whole.
_RETRIES = 6
_COMMIT = re.compile(r'[0-9a-f]{40}')


def _unreachable(where: str, error: OSError) -> ValueError:
  """The one line for an endpoint that did not answer."""
  return ValueError(
    f'{where}: cannot reach {endpoint()} ({type(error).__name__}: {str(error)[:120]}); check the network or HF_ENDPOINT'
  )


def endpoint() -> str:
  """Where the Hub is: $HF_ENDPOINT, else huggingface.co."""
  return (os.environ.get('HF_ENDPOINT') or hub_datasets.ENDPOINT).rstrip('/')


@dataclasses.dataclass(frozen=True)
class HubFile:
  """One file a hub: source reads."""

  part: hub_datasets.Part
  config: str
  path: str
  size: int
  checksum: str  # The LFS sha256 when the file is in LFS, else its git blob id.
  url: str


def _open(url: str, headers: dict | None = None):
  """urlopen with retries on broken connections, 429 and 5xx; other HTTP errors are raised at once."""
  for attempt in range(_RETRIES):
    request = urllib.request.Request(url, headers=headers or {})
    token = os.environ.get('HF_TOKEN')
    if token and url.startswith(endpoint()):
      request.add_unredirected_header('Authorization', f'Bearer {token}')  # Never forwarded to the CDN.
    try:
      return urllib.request.urlopen(request, timeout=120)
    except urllib.error.HTTPError as error:
      if (error.code < 500 and error.code != 429) or attempt == _RETRIES - 1:
        raise
    except OSError:
      if attempt == _RETRIES - 1:
        raise
    time.sleep(min(2**attempt, 30))
  raise AssertionError('unreachable')


class _RemoteFile(io.RawIOBase):
  """A read-only, seekable file over HTTP ranged requests, read ahead in blocks; a broken request is retried."""

  def __init__(self, url: str, size: int, where: str):
    super().__init__()
    self.url, self.size, self.where = url, size, where
    self.position, self._start, self._block = 0, 0, b''

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self.position

  def seek(self, offset: int, whence: int = 0) -> int:
    self.position = {0: 0, 1: self.position, 2: self.size}[whence] + offset
    return self.position

  def readinto(self, buffer) -> int:
    data = self.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)

  def read(self, count: int = -1) -> bytes:
    count = self.size - self.position if count is None or count < 0 else min(count, self.size - self.position)
    pieces = []
    while count > 0:
      if not self._start <= self.position < self._start + len(self._block):
        self._fetch(self.position, max(count, _BLOCK))
      piece = self._block[self.position - self._start : self.position - self._start + count]
      pieces.append(piece)
      self.position += len(piece)
      count -= len(piece)
    return b''.join(pieces)

  def _fetch(self, start: int, length: int) -> None:
    end = min(start + length, self.size) - 1
    for attempt in range(_RETRIES):
      try:
        with _open(self.url, {'Range': f'bytes={start}-{end}', 'Accept-Encoding': 'identity'}) as response:
          data = response.read()
          if response.status == 200:  # A server that ignores Range sends the whole file.
            data = data[start : end + 1]
        if len(data) == end - start + 1:
          self._start, self._block = start, data
          return
        failure = f'{len(data)} of {end - start + 1} bytes'
      except (urllib.error.HTTPError, OSError) as error:
        failure = f'{type(error).__name__}: {str(error)[:120]}'
      time.sleep(min(2**attempt, 30))
    raise ValueError(
      f'{self.where}: reading {self.url} at byte {start} failed {_RETRIES} times ({failure}); rerun to try again'
    )


def _get_json(url: str) -> tuple:
  """(parsed JSON, the `next` link or '') of a GET."""
  with _open(url, {'Accept': 'application/json'}) as response:
    link = re.search(r'<([^>]+)>\s*;\s*rel="next"', response.headers.get('Link', ''))
    return json.loads(response.read()), (urllib.parse.urljoin(url, link.group(1)) if link else '')


def _error_code(error: urllib.error.HTTPError) -> str:
  return error.headers.get('X-Error-Code', '') if error.headers else ''


def _resolve_revision(part: hub_datasets.Part, revision: str, where: str) -> str:
  """The commit a revision names (a commit names itself; a branch or tag is asked of the endpoint)."""
  if _COMMIT.fullmatch(revision):
    return revision
  url = f'{endpoint()}/api/datasets/{part.repo}/revision/{urllib.parse.quote(revision, safe="")}'
  try:
    sha = _get_json(url)[0].get('sha', '')
  except urllib.error.HTTPError as error:
    raise _not_found(part, revision, error, where) from None
  except OSError as error:
    raise _unreachable(where, error) from None
  if not _COMMIT.fullmatch(sha or ''):
    raise ValueError(f'{where}: {url} names no commit (sha: {sha!r}); pin one with ?revision=')
  logging.warning(
    '%s: %s at %r is commit %s (no pinned revision; pin it with ?revision=%s)', where, part.repo, revision, sha, sha
  )
  return sha


def _not_found(part, revision, error, where) -> ValueError:
  code = _error_code(error)
  what = 'the repository' if code == 'RepoNotFound' else f'revision {revision!r}'
  return ValueError(
    f'{where}: {what} of {part.repo} was not found at {endpoint()} (HTTP {error.code}'
    f'{", " + code if code else ""}); fix ?revision= (a commit of {part.repo}) or HF_ENDPOINT'
  )


def _list(part, commit: str, folder: str, cache_root, where: str) -> list | None:
  """Entries of a folder at a commit (the tree API, every page), cached on disk; None when there is no folder."""
  key = hashlib.sha256(endpoint().encode()).hexdigest()[:12]
  cached = cache_root / 'hub' / key / part.repo / commit / f'{folder.replace("/", "%2F") or "_root"}.json'
  if cached.is_file():
    return json.loads(cached.read_text())
  url = f'{endpoint()}/api/datasets/{part.repo}/tree/{commit}' + (
    f'/{urllib.parse.quote(folder, safe="")}' if folder else ''
  )
  entries = []
  try:
    while url:
      page, url = _get_json(url)
      entries += page
  except urllib.error.HTTPError as error:
    if error.code == 404 and folder and _error_code(error) not in ('RevisionNotFound', 'RepoNotFound'):
      return None
    raise _not_found(part, commit, error, where) from None
  except OSError as error:
    raise _unreachable(where, error) from None
  files.write_text(str(cached), json.dumps(entries))
  return entries


def _names(entries, kind: str) -> list:
  return sorted(e['path'].rsplit('/', 1)[-1] for e in entries if e.get('type') == kind)


def _options(source) -> dict:
  """The spec's options with the dataset's defaults, checked."""
  where = f'source {source.name!r}'
  dataset = hub_datasets.DATASETS.get(source.target)
  if dataset is None:
    raise ValueError(
      f'{where}: unknown hub dataset {source.target!r} in {source.spec!r}; use one of '
      f'{", ".join(hub_datasets.DATASETS)} (or hf: for any other Hugging Face dataset)'
    )
  options = source.options
  if options.get('revision') and len(dataset.parts) > 1:
    raise ValueError(
      f'{where}: ?revision= needs a single repository; {source.target} has '
      f'{len(dataset.parts)} ({", ".join(p.repo for p in dataset.parts)}): name one of them'
    )
  check_records = options.get('check_records', str(hub_datasets.FILTER_CHECK_RECORDS))
  if not check_records.isdigit() or int(check_records) < 1:
    raise ValueError(f'{where}: ?check_records= must be a positive number of records in {source.spec!r}')
  filter_spec = options.get('where', dataset.where)
  match = re.fullmatch(r'([\w.]+)([=~])(.+)', filter_spec) if filter_spec else None
  if filter_spec and not match:
    raise ValueError(
      f'{where}: ?where= must read FIELD=V1|V2 (equals one) or FIELD~V1|V2 (contains one) in {source.spec!r}'
    )
  result = dict(
    dataset=dataset,
    where=where,
    split=options.get('split', 'train'),
    field=options.get('field', ''),
    check_records=int(check_records),
    filter=None,
    configs=_set(options.get('configs')),
    skip_configs=_set(options.get('skip_configs')),
  )
  if match:
    values = tuple(v for v in match.group(3).split('|') if v)
    result['filter'] = (
      match.group(1),
      match.group(2),
      values if match.group(2) == '=' else tuple(v.lower() for v in values),
    )
  for part in dataset.parts:
    for name, label in ((result['field'], '?field='), (match.group(1) if match else '', '?where=')):
      if name and 'fields' in part.verified and name not in part.fields:
        raise ValueError(
          f'{where}: records of {part.repo} have no field {name!r} (fields: {list(part.fields)}); '
          f'fix {label} in {source.spec!r}'
        )
  return result


def _set(value) -> set:
  return {v for v in (value or '').split('|') if v}


def check(source, cache_root) -> None:
  """Checks a hub: spec and lists the files it reads (source.plan, source.paths), before any download."""
  options = _options(source)
  where, split = options['where'], options['split']
  plan, configs_seen = [], set()
  for part in options['dataset'].parts:
    commit = _resolve_revision(part, source.options.get('revision') or part.revision, where)
    root = _list(part, commit, '', cache_root, where)
    configs = ['']
    if part.has_configs:
      available = _names(root, 'directory')
      configs_seen.update(available)
      configs = [
        c for c in available if (not options['configs'] or c in options['configs']) and c not in options['skip_configs']
      ]
    for config in configs:
      folder = part.folder.format(config=config, split=split)
      entries = _list(part, commit, folder, cache_root, where)
      if entries is None:
        raise ValueError(
          f'{where}: {part.repo}@{commit[:8]} has no folder {folder!r} (top level: '
          f'{_names(root, "directory") + _names(root, "file")}); fix ?split= or the layout in '
          'hub_datasets.py'
        )
      pattern = part.file_pattern.format(split=split)
      chosen = sorted(
        (e for e in entries if e.get('type') == 'file' and fnmatch.fnmatch(e['path'].rsplit('/', 1)[-1], pattern)),
        key=lambda e: e['path'],
      )
      if not chosen:
        raise ValueError(
          f'{where}: no file of {part.repo}@{commit[:8]}/{folder} matches {pattern!r} (files: '
          f'{_names(entries, "file")[:8]}); fix ?split= or the layout in hub_datasets.py'
        )
      if part is hub_datasets.PROOF_PILE and split == 'train' and len(chosen) != hub_datasets.PROOF_PILE_TRAIN_FILES:
        raise ValueError(
          f'{where}: {part.repo}@{commit[:8]}/{folder} lists {len(chosen)} train files, not the '
          f'{hub_datasets.PROOF_PILE_TRAIN_FILES} its loading script names; check the revision'
        )
      for entry in chosen:
        plan.append(
          HubFile(
            part,
            config,
            entry['path'],
            int(entry.get('size') or 0),
            (entry.get('lfs') or {}).get('oid') or entry.get('oid', ''),
            f'{endpoint()}/datasets/{part.repo}/resolve/{commit}/{urllib.parse.quote(entry["path"])}',
          )
        )
  unknown = sorted((options['configs'] | options['skip_configs']) - configs_seen)
  if unknown:
    raise ValueError(
      f'{where}: config(s) {unknown} are not in {source.target} (configs: {sorted(configs_seen)}); '
      f'fix ?configs= or ?skip_configs= in {source.spec!r}'
    )
  if not plan:
    raise ValueError(f'{where}: ?configs= and ?skip_configs= leave no config of {source.target} to read')
  source.plan, source.paths = plan, [f.url for f in plan]


def fingerprint(source) -> dict:
  """What the source reads: every file's URL (with its commit), size and checksum."""
  return {f.url: [f.size, f.checksum] for f in source.plan}


def _group(hub_file: HubFile, value) -> str:
  """The source within the dataset a document is counted by."""
  if hub_file.config:
    return f'{hub_file.part.repo.rsplit("/", 1)[-1]}/{hub_file.config}'
  if isinstance(value, dict):
    return next((str(value[k]) for k in hub_datasets.PROOF_PILE_META_KEYS if value.get(k)), 'other')
  return str(value) if value is not None else 'none'


class _Filter:
  """A record filter that stops the run when it matches nothing in the first check_records records."""

  def __init__(self, options, source):
    self.field, self.operator, self.values = options['filter'] or ('', '', ())
    self.limit, self.source = options['check_records'], source
    self.examined, self.matched, self.seen = 0, 0, {}

  def keep(self, value) -> bool:
    if not self.field:
      return True
    value = '' if value is None else str(value)
    self.examined += 1
    kept = value in self.values if self.operator == '=' else any(v in value.lower() for v in self.values)
    self.matched += kept
    if not self.matched and len(self.seen) < 1000:
      self.seen[value] = self.seen.get(value, 0) + 1
    if not self.matched and self.examined >= self.limit:
      self.fail()
    return kept

  def fail(self) -> None:
    values = '; '.join(f'{v[:60]!r} ({n:,})' for v, n in sorted(self.seen.items(), key=lambda item: -item[1])[:12])
    raise ValueError(
      f'source {self.source.name!r}: ?where={self.field}{self.operator}{"|".join(self.values)} '
      f'matched none of the first {self.examined:,} records; the {self.field} values seen: '
      f'{values or "none"}; fix ?where= in {self.source.spec!r}'
    )


def documents(source) -> Iterator[str]:
  """The documents of a checked hub: source, counting each by its source within the dataset."""
  options = _options(source)
  record_filter = _Filter(options, source)
  source.group_names.clear()
  del source.document_groups[:]
  groups = {}
  for number, hub_file in enumerate(source.plan, 1):
    part = hub_file.part
    field = options['field'] or part.text_field
    template = part.text_template if field == part.text_field else ''
    logging.info(
      'source %r: reading %s (file %d of %d, %.1f MB)',
      source.name,
      hub_file.url,
      number,
      len(source.plan),
      hub_file.size / 1e6,
    )
    where = f'source {source.name!r}: {part.repo}/{hub_file.path}'
    source.checksums[hub_file.url] = hub_file.checksum
    reader = _parquet_records if part.file_format == 'parquet' else _jsonl_records
    for value, group_value in reader(hub_file, field, part.group_field, record_filter, where):
      text = hub_datasets.messages_text(value) if template == 'messages' else value
      if not isinstance(text, str):
        raise ValueError(
          f'{where}: field {field!r} holds {type(text).__name__}, not text; set ?field= in {source.spec!r}'
        )
      if text.strip():
        name = _group(hub_file, group_value)
        if name not in groups:
          groups[name] = len(source.group_names)
          source.group_names.append(name)
        source.document_groups.append(groups[name])
        yield text
  if record_filter.field and not record_filter.matched:
    record_filter.fail()


def _missing(where: str, names, have, what: str) -> None:
  absent = [n for n in names if n and n not in have]
  if absent:
    raise ValueError(
      f'{where}: the records have no field {absent[0]!r} ({what}: {sorted(have)}); fix ?field= or '
      '?where=, or leave this config out with ?skip_configs='
    )


def _parquet_records(hub_file: HubFile, field: str, group_field: str, record_filter: _Filter, where: str):
  """(text value, group value) of the kept records, row group by row group, reading only the columns used."""
  import pyarrow  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  import pyarrow.parquet as pq  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  with _RemoteFile(hub_file.url, hub_file.size, where) as remote:
    parquet = pq.ParquetFile(pyarrow.PythonFile(remote, mode='r'))
    columns = parquet.schema_arrow.names
    _missing(where, [field, record_filter.field], columns, 'columns')
    group_field = group_field if group_field in columns else ''
    wanted = list(dict.fromkeys(c for c in (field, group_field, record_filter.field) if c))
    for index in range(parquet.num_row_groups):
      mask = None
      if record_filter.field:
        mask = [
          record_filter.keep(v)
          for v in parquet.read_row_group(index, columns=[record_filter.field]).column(0).to_pylist()
        ]
        if not any(mask):
          continue  # The text of a row group without a match is never fetched.
      table = parquet.read_row_group(index, columns=wanted)
      values = table.column(field).to_pylist()
      group_values = table.column(group_field).to_pylist() if group_field else [None] * len(values)
      for row, (value, group_value) in enumerate(zip(values, group_values, strict=True)):
        if mask is None or mask[row]:
          yield value, group_value


def _jsonl_records(hub_file: HubFile, field: str, group_field: str, record_filter: _Filter, where: str):
  """(text value, group value) of the kept records of a jsonl.gz file, line by line."""
  with _RemoteFile(hub_file.url, hub_file.size, where) as remote:
    lines = io.TextIOWrapper(gzip.GzipFile(fileobj=io.BufferedReader(remote, 1 << 20)), 'utf-8', errors='replace')
    for number, line in enumerate(lines, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        raise ValueError(f'{where}:{number} is not a JSON object; the file is damaged or not JSON lines') from None
      if not isinstance(record, dict):
        raise ValueError(f'{where}:{number} is a JSON {type(record).__name__}, not an object')
      _missing(where, [field, record_filter.field], record, 'fields')
      if record_filter.keep(record.get(record_filter.field)) if record_filter.field else True:
        yield record[field], record.get(group_field)
