"""Turns the unpacked files of each built-in corpus's packages into plain-text documents, written as JSON lines."""

import csv
import gzip
import hashlib
import html
import json
import os
import pathlib
import random
import re
import struct
import zlib
from collections.abc import Iterator

from absl import logging

Document = tuple  # (document id, text)


def read_text(path: pathlib.Path) -> str:
  """A file's text with a BOM and CRLF removed; Latin-1 where it is not UTF-8 (old corpus files)."""
  data = path.read_bytes()
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError:
    text = data.decode('latin-1')
  return text.replace('\r\n', '\n').replace('\r', '\n')


def tidy(text: str) -> str:
  """Trailing spaces dropped and runs of blank lines shortened, so byte counts measure content."""
  lines = [line.rstrip() for line in text.split('\n')]
  return re.sub(r'\n{3,}', '\n\n', '\n'.join(lines)).strip('\n') + '\n'


def files(root: pathlib.Path, pattern: str, skip: str = '') -> list:
  """Regular files (not links) under root matching a glob, sorted so document order is stable."""
  return sorted(
    p for p in root.glob(pattern) if p.is_file() and not p.is_symlink() and not (skip and re.search(skip, p.name))
  )


def file_documents(root: pathlib.Path, pattern: str, skip: str = '') -> Iterator[Document]:
  """One document per file; the id is the path below root."""
  for path in files(root, pattern, skip):
    text = tidy(read_text(path))
    if text.strip():
      yield str(path.relative_to(root)), text


# Brown Corpus (form C): `word/tag` tokens, one sentence per line, a tab where a paragraph starts.
_NO_SPACE_BEFORE = {'.', ',', ';', ':', '?', '!', ')', ']', "''", "'"}
_NO_SPACE_AFTER = {'(', '[', '``'}


def brown_sentence(line: str) -> str:
  """A tagged Brown sentence as plain text: tags stripped, `` and '' as double quotes, punctuation attached."""
  out = []
  glue = True
  for token in line.split():
    word = token.rsplit('/', 1)[0] if '/' in token[1:] else token
    if not glue and word not in _NO_SPACE_BEFORE:
      out.append(' ')
    out.append('"' if word in ('``', "''") else word)
    glue = word in _NO_SPACE_AFTER
  return ''.join(out)


def brown_text(raw: str) -> str:
  """A Brown sample as paragraphs: a tab, two blank lines or a headline (tags ending -hl) end a paragraph."""
  paragraphs = []
  blank_run, after_headline = 2, False
  for line in raw.split('\n'):
    if not line.strip():
      blank_run += 1
      continue
    sentence = brown_sentence(line)
    if line.startswith('\t') or blank_run >= 2 or after_headline or not paragraphs:
      paragraphs.append(sentence)
    else:
      paragraphs[-1] += ' ' + sentence
    blank_run = 0
    after_headline = all(token.endswith('-hl') for token in line.split())
  return tidy('\n\n'.join(paragraphs))


def brown_documents(root: pathlib.Path) -> Iterator[Document]:
  """One document per Brown sample file (c<genre><number>)."""
  for path in files(root, '**/c[a-r][0-9][0-9]'):
    yield path.name, brown_text(read_text(path))


def r_object(data: bytes):
  """A serialized R object (XDR, decompressed) as the `rdata` package converts it: a character vector is a numpy
  array of str (None for NA), a named list a dict."""
  import warnings  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  import rdata  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "Unknown file type: assumed RDS": a lazy-load value is an RDS body.
    try:
      return rdata.conversion.convert(rdata.parser.parse_data(data, expand_altrep=True))
    except (ValueError, NotImplementedError, EOFError, struct.error) as error:
      raise ValueError(
        f'cannot read an R object ({error}); the package file is damaged, delete the cache and re-fetch'
      ) from error


def r_lazy_load(rdb: pathlib.Path, rdx: pathlib.Path) -> dict:
  """Every object of an R lazy-load database (.rdb values, .rdx index) by name."""
  index = r_object(gzip.decompress(rdx.read_bytes()))
  data = rdb.read_bytes()
  objects = {}
  for name, (offset, size) in index['variables'].items():
    blob = data[offset : offset + size]
    kind = blob[4:5]
    if kind == b'2':
      import bz2  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

      raw = bz2.decompress(blob[5:])
    elif kind == b'3':
      import lzma  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

      raw = lzma.decompress(blob[5:])
    elif kind == b'0':
      raw = blob[5:]
    else:
      raw = zlib.decompress(blob[4:])
    value = r_object(raw)
    objects[str(name)] = value.tolist() if hasattr(value, 'tolist') else value
  return objects


_CHAPTER = re.compile(r'^\s*chapter\s+([0-9]+|[ivxlc]+)\b', re.IGNORECASE)


def chapters(lines: list) -> list:
  """A novel's lines split at CHAPTER headings; the title page goes with the first chapter."""
  parts, current = [], []
  for line in lines:
    line = line or ''
    if _CHAPTER.match(line) and any(_CHAPTER.match(x) for x in current):
      parts.append(current)
      current = []
    current.append(line)
  parts.append(current)
  return [tidy('\n'.join(part)) for part in parts if any(x.strip() for x in part)]


def austen_documents(root: pathlib.Path) -> Iterator[Document]:
  """One document per chapter of each novel in janeaustenr's data database."""
  data_dir = next(iter(sorted(root.glob('**/janeaustenr/data'))), None)
  if data_dir is None:
    raise ValueError(f'no janeaustenr/data folder under {root}; the package layout changed')
  for name, lines in sorted(r_lazy_load(data_dir / 'Rdata.rdb', data_dir / 'Rdata.rdx').items()):
    if isinstance(lines, list) and lines and all(isinstance(x, (str, type(None))) for x in lines):
      for number, text in enumerate(chapters(lines), 1):
        yield f'{name}/{number:03d}', text


# SWORD zText modules: per testament, .bzs (block offset, compressed and plain sizes), .bzv (per verse: block,
# offset inside the plain block, size) and .bzz (zlib blocks). The verse index is the reading order.
def ztext_verses(module_dir: pathlib.Path) -> Iterator[str]:
  """The raw OSIS markup of every verse entry in canonical order, linked (repeated) entries once."""
  for testament in ('ot', 'nt'):
    index = module_dir / f'{testament}.bzv'
    if not index.exists():
      continue
    blocks_raw = (module_dir / f'{testament}.bzs').read_bytes()
    blocks = [struct.unpack_from('<III', blocks_raw, i) for i in range(0, len(blocks_raw) - 11, 12)]
    compressed = (module_dir / f'{testament}.bzz').read_bytes()
    plain = {}
    seen = set()
    verses_raw = index.read_bytes()
    for i in range(0, len(verses_raw) - 9, 10):
      entry = struct.unpack_from('<IIH', verses_raw, i)
      block, start, size = entry
      if size == 0 or entry in seen or block >= len(blocks):
        continue
      seen.add(entry)
      if block not in plain:
        offset, length, _ = blocks[block]
        plain[block] = zlib.decompress(compressed[offset : offset + length])
      yield plain[block][start : start + size].decode('utf-8', errors='replace')


_BOOK = re.compile(r'<div\b[^>]*type="book"[^>]*>')
_NOTE = re.compile(r'<note\b.*?</note>(?=(.?))', re.DOTALL)
_BREAKS = [
  (re.compile(r'<title\b[^>]*>'), '\n\n'),
  (re.compile(r'</title>'), '\n\n'),
  (re.compile(r'<div\b[^>]*\bsID="[^"]*"[^>]*type="(?:x-p|paragraph|introduction)"[^>]*/>'), '\n\n'),
  (re.compile(r'<div\b[^>]*type="(?:x-p|paragraph)"[^>]*\bsID="[^"]*"[^>]*/>'), '\n\n'),
  (re.compile(r'<(?:l|lg|item)\b[^>]*\beID="[^"]*"[^>]*/>'), ''),
  (re.compile(r'<lg\b[^>]*>'), '\n\n'),
  (re.compile(r'<(?:l|lb|item)\b[^>]*/?>'), '\n'),
]
_DROPPED = re.compile(r'<(milestone|catchWord)\b[^>]*/>|<catchWord>.*?</catchWord>', re.DOTALL)


def osis_text(markup: str) -> str:
  """OSIS markup as reading text: footnotes dropped, headings and paragraphs on their own lines."""
  markup = _NOTE.sub(lambda m: ' ' if m.group(1) == '<' or m.group(1).isalnum() else '', markup)
  markup = _DROPPED.sub('', markup)
  for pattern, replacement in _BREAKS:
    markup = pattern.sub(replacement, markup)
  text = html.unescape(re.sub(r'<[^>]+>', '', markup))
  text = re.sub(r'[ \t]+', ' ', text)
  text = re.sub(r' ?\n ?', '\n', text)
  return tidy(text)


def ztext_documents(module_dir: pathlib.Path) -> Iterator[Document]:
  """One document per book: verses joined in order, a new book at each OSIS book division."""
  books, name, parts = [], 'front', []
  for verse in ztext_verses(module_dir):
    start = next((m for m in _BOOK.finditer(verse) if 'eID=' not in m.group(0)), None)
    if start is None:
      parts.append(verse)
      continue
    books.append((name, parts + [verse[: start.start()]]))
    found = re.search(r'osisID="([^"]+)"', start.group(0))
    name, parts = (found.group(1) if found else f'book-{len(books)}'), [verse[start.start() :]]
  for book_name, book_parts in books + [(name, parts)]:
    text = osis_text(''.join(book_parts))
    if text.strip():
      yield book_name, text


def web_bible_documents(root: pathlib.Path) -> Iterator[Document]:
  """The World English Bible module's books."""
  modules = sorted({p.parent for p in root.glob('**/ztext/*/*.bzv')})
  if not modules:
    raise ValueError(f'no SWORD zText module under {root}; the package layout changed')
  for module in modules:
    yield from ztext_documents(module)


_CHAPTER_MARK = re.compile(r'<chapter\b[^>]*>')


def ztext_chapters(module_dir: pathlib.Path) -> dict:
  """Each chapter's non-empty verses (one line each, titles and footnotes dropped) by OSIS id, e.g. 'Gen.1'."""
  chapters_found, current = {}, None
  for verse in ztext_verses(module_dir):
    pieces, start = [], 0
    for mark in _CHAPTER_MARK.finditer(verse):  # A verse entry may hold a chapter's start or end marker.
      pieces.append((current, verse[start : mark.start()]))
      found = re.search(r'osisID="([^"]+)"', mark.group(0)) if 'sID=' in mark.group(0) else None
      current, start = found and found.group(1), mark.end()
    for chapter, markup in pieces + [(current, verse[start:])]:
      text = ' '.join(osis_text(re.sub(r'<title\b.*?</title>', ' ', markup, flags=re.DOTALL)).split())
      if chapter and text:
        chapters_found.setdefault(chapter, []).append(text)
  return chapters_found


def aligned_bible_documents(root: pathlib.Path, first: str, second: str) -> Iterator[Document]:
  """One document per chapter in both zText modules (named by folder), in the first's order: verse pairs by
  position ("first\\nsecond", a blank line between pairs), for chapters with as many verses in both."""
  found = [next(iter(sorted(root.glob(f'**/ztext/{name}'))), None) for name in (first, second)]
  if None in found:
    raise ValueError(f'no SWORD zText module {first} and {second} under {root}; the package layout changed')
  left, right = (ztext_chapters(module) for module in found)
  shared = [chapter for chapter in left if chapter in right]
  aligned = [chapter for chapter in shared if len(left[chapter]) == len(right[chapter])]
  logging.info(
    '%s/%s: %d of %d shared chapters aligned, %d dropped (verse counts differ)',
    first,
    second,
    len(aligned),
    len(shared),
    len(shared) - len(aligned),
  )
  for chapter in aligned:
    yield chapter, '\n\n'.join(f'{a}\n{b}' for a, b in zip(left[chapter], right[chapter], strict=False)) + '\n'


def fortune_documents(root: pathlib.Path) -> Iterator[Document]:
  """One document per fortune file (its .u8 twin and .dat index skipped): fortunes split at `%` lines."""
  for path in files(root, '**/fortunes/*/*', r'\.dat$'):
    if path.suffix == '.u8' and path.with_suffix('').exists():
      continue
    fortunes = re.split(r'^%[ \t]*$', read_text(path), flags=re.MULTILINE)
    text = '\n\n'.join(tidy(x).strip('\n') for x in fortunes if x.strip())
    if text:
      yield path.name, tidy(re.sub(r'[\x00-\x08\x0b-\x1f\x7f]', '', text))


# Manual pages: troff requests and escapes reduced to reading text (no filling, so source lines stay lines).
_TROFF_CHARACTERS = {
  'em': '—',
  'en': '–',
  'aq': "'",
  'dq': '"',
  'bu': '•',
  'co': '©',
  'lq': '“',
  'rq': '”',
  'hy': '-',
  'ti': '~',
  'ha': '^',
  'rs': '\\',
  'de': '°',
  'if': '∞',
  'is': '∫',
  'pd': '∂',
  '*W': 'Ω',
  '*p': 'π',
  '>=': '≥',
  'at': '@',
  'sl': '/',
  'cq': "'",
  '-': '-',
  'e': '\\',
  '\\': '\\',
  ' ': ' ',
  '~': ' ',
  '0': ' ',
  't': '\t',
  "'": "'",
  '`': '`',
  '.': '.',
}
_TROFF_ESCAPE = re.compile(
  r"\\(?:f(?:\(..|\[[^]]*\]|.)|s[-+]?\d+|[hvwoxlLDbNZ]'[^']*'|n(?:\(..|\[[^]]*\]|.)|"
  r'\*?\((..)|\*?\[([^]]*)\]|\*(.)|(.)|$)'
)
_TROFF_FONTS = {'B', 'I', 'SM', 'SB', 'BR', 'IR', 'RB', 'BI', 'IB', 'RI'}


def troff_inline(text: str) -> str:
  """A line of troff with its escapes replaced: font and size changes dropped, named characters spelled out."""
  return _TROFF_ESCAPE.sub(
    lambda m: _TROFF_CHARACTERS.get(next((g for g in m.groups() if g), ''), ''), re.sub(r'\\".*', '', text)
  )


def troff_text(source: str) -> str:
  """A man page's troff as plain text: headings for .TH/.SH/.SS, a blank line at each paragraph macro, font
  macros' text kept, other requests, comments, macro definitions and table formats dropped."""
  lines, skip = [], ''
  for line in source.split('\n'):
    if skip:  # Inside a macro definition (up to `..`) or a table's format lines (up to one ending in '.').
      skip = '' if (line.strip() == '..' if skip == 'de' else line.rstrip().endswith('.')) else skip
      continue
    if not line.startswith(('.', "'")):
      lines.append(troff_inline(re.sub(r'^T\}|T\{$', '', line)))  # Without a table's text-block marks.
      continue
    request, _, rest = line[1:].strip().partition(' ')
    words = [a or b for a, b in re.findall(r'"([^"]*)"?|(\S+)', rest)]
    if request in ('de', 'ig', 'am', 'TS'):
      skip = 'TS' if request == 'TS' else 'de'
    elif request in ('TH', 'SH', 'SS'):
      lines += ['', troff_inline(rest.replace('"', '')).strip(), '']
    elif request in ('PP', 'P', 'LP', 'TP', 'IP', 'HP', 'sp'):  # (.br needs nothing: source lines stay lines.)
      lines += [''] + ([troff_inline(words[0])] if request == 'IP' and words else [])  # An .IP tag: a bullet.
    elif request in _TROFF_FONTS:  # Two-letter ones alternate fonts between arguments, written without spaces.
      lines.append(troff_inline((' ' if len(request) == 1 or request[0] == 'S' else '').join(words)))
  return tidy('\n'.join(lines))


def manpage_documents(root: pathlib.Path) -> Iterator[Document]:
  """One document per gzipped manual page under man*/ folders; `.so` pages (redirects to another page) skipped."""
  for path in files(root, '**/man[1-9]*/*.gz'):
    source = gzip.decompress(path.read_bytes()).decode('utf-8', errors='replace').replace('\r\n', '\n')
    if re.search(r'^\.so\s', source, re.MULTILINE) and not re.search(r'^\.(SH|TH)\b', source, re.MULTILINE):
      continue
    text = troff_text(source)
    if text.strip():
      yield f'{path.parent.name}/{path.name.removesuffix(".gz")}', text


def metamath_sections(text: str) -> list:
  """A Metamath database split before each comment that opens with a part or section banner."""
  lines = text.split('\n')
  starts = [0]
  for i, line in enumerate(lines):
    if line.strip() == '$(' and i > 0:
      following = next((x.strip() for x in lines[i + 1 : i + 4] if x.strip()), '')
      if following.startswith(('#*#*#', '=-=-=')):
        starts.append(i)
  starts.append(len(lines))
  return [
    tidy('\n'.join(lines[a:b])) for a, b in zip(starts, starts[1:], strict=False) if '\n'.join(lines[a:b]).strip()
  ]


def metamath_documents(root: pathlib.Path) -> Iterator[Document]:
  """Each .mm database, split at its part and section banners where it has them."""
  for path in files(root, '**/*.mm'):
    for number, text in enumerate(metamath_sections(read_text(path)), 1):
      yield f'{path.name}/{number:04d}', text


def abc_tunes(text: str) -> list:
  """An ABC file's tunes, each from its `X:` line up to the next one; text before the first tune is dropped."""
  starts = [m.start() for m in re.finditer(r'^X:', text, re.MULTILINE)]
  return [tidy(text[a:b]) for a, b in zip(starts, starts[1:] + [len(text)], strict=True)]


def abc_documents(root: pathlib.Path) -> Iterator[Document]:
  """One document per tune in music21's corpus of ABC files."""
  for path in files(root, '**/corpus/**/*.abc'):
    for number, tune in enumerate(abc_tunes(read_text(path)), 1):
      yield f'{path.relative_to(root)}#{number}', tune


def smiles_documents(path: pathlib.Path, per_document: int = 100, seed: int = 0) -> Iterator[Document]:
  """SMILES strings from a gzipped CSV, shuffled with a fixed seed (the file is sorted by scaffold), in groups."""
  with gzip.open(path, 'rt', encoding='utf-8', newline='') as file:
    rows = csv.reader(file)
    header = next(rows)
    column = next((i for i, name in enumerate(header) if name.strip().upper() == 'SMILES'), 0)
    molecules = [row[column] for row in rows if row and row[column]]
  random.Random(seed).shuffle(molecules)
  for start in range(0, len(molecules), per_document):
    yield f'{start // per_document:05d}', '\n'.join(molecules[start : start + per_document]) + '\n'


def write_jsonl(pairs: Iterator[Document], path: pathlib.Path) -> dict:
  """Writes {"id", "text"} lines atomically, exact duplicate texts dropped; returns counts and the file's sha256."""
  temporary = path.with_name(f'{path.name}.tmp{os.getpid()}-{id(pairs)}')
  seen, digest = set(), hashlib.sha256()
  counts = {'documents': 0, 'bytes': 0, 'duplicates_dropped': 0}
  with open(temporary, 'w', encoding='utf-8') as out:
    for document_id, text in pairs:
      data = text.encode('utf-8')
      key = hashlib.sha256(data).digest()
      counts['duplicates_dropped'] += key in seen
      if key not in seen:
        seen.add(key)
        line = json.dumps({'id': document_id, 'text': text}, ensure_ascii=False) + '\n'
        out.write(line)
        digest.update(line.encode('utf-8'))
        counts['documents'] += 1
        counts['bytes'] += len(data)
  os.replace(temporary, path)
  return dict(counts, file=path.name, sha256=digest.hexdigest())
