"""The paper's datasets as their public homes hold them: repository, pinned revision, files, format, fields, subset.

Each fact says where it was read. None was read from the Hub itself: the sources are the datasets' cards as
stored web pages, their loading script and build code, the huggingface_hub client's source, and third-party code
that pins or reads them. UNVERIFIED marks a fact no primary source confirmed; the reader (hub_source.py) checks
each of those on first contact and stops with what it found instead of trusting it: a revision that does not
resolve (HTTP 404), a file layout that lists no files, a field the records lack, a subset filter that matches
nothing in the first `check_records` records.
How files are found (huggingface_hub hf_api.py `list_repo_tree`, file_download.py `hf_hub_url`):
  listing  GET <endpoint>/api/datasets/<repo>/tree/<revision>/<folder>  (JSON list of {type, path, size, oid,
           lfs: {oid: sha256, size}}, paginated by a `Link: <...>; rel="next"` header)
  commit   GET <endpoint>/api/datasets/<repo>/revision/<revision>  (JSON with `sha`, the commit)
  file     GET <endpoint>/datasets/<repo>/resolve/<revision>/<path>  (redirects to a CDN for LFS files)
with <endpoint> from HF_ENDPOINT (default the Hub), so any server in that layout stands in for it.
"""

import dataclasses

ENDPOINT = 'https://huggingface.co'  # huggingface_hub constants.py: ENDPOINT, overridden by $HF_ENDPOINT.
# Records read before a subset filter that has matched nothing stops the run. Only the filter's column is read
# until a match (parquet), so a large number costs little; MusicPile's rows may be grouped by source.
FILTER_CHECK_RECORDS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Part:
  """One Hub dataset repository and what is read from it."""

  repo: str
  revision: str  # A commit hash; a branch name is resolved to its commit on first contact and recorded.
  revision_source: str  # Where the revision was read.
  file_format: str  # 'jsonl.gz' (one JSON object per line) or 'parquet'.
  folder: str  # Folder listed for the files; '{config}' stands for each config's folder.
  file_pattern: str  # fnmatch pattern of the file names to read; '{split}' stands for the split.
  fields: tuple  # The record fields known to exist.
  text_field: str  # The field a document is made from.
  text_template: str = ''  # 'messages': the chat template messages_text() turns into a document.
  group_field: str = ''  # The field documents are counted by (the source within the dataset).
  has_configs: bool = False  # Configs are the repository's top-level folders (one per config).
  verified: tuple = ()  # Which of the facts above a primary source confirmed; the others are checked.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A paper dataset: its parts and the subset of them the paper trains on (Appendix C)."""

  name: str
  parts: tuple
  where: str = ''  # The subset filter: FIELD=V|V (equal to one) or FIELD~V|V (contains one, any case).
  why: str = ''


# ProofPile. Sources: a verbatim copy of the Hub's loading script `proof-pile.py` (one config `default`; train
# files `train/proofpile_train_{i}.jsonl.gz` for i in range(21); `dev/` and `test/` hold one file each); the
# build repository github zhangir-azerbayev/proof-pile (make_jsons.py writes the shards; its README says the
# .jsonl.gz archives "are identical to the files accessed by the Huggingface dataset"). Records are
# {"text": str, "meta": {...}} with the subset in meta.config (arxiv, wiki, ...), meta.set_name (stack_exchange,
# MATH) or meta.subset_name (curated books) (aggregator.py, fetch_*.py). The loading script is never run: the
# reader lists `train/` and reads the 21 files itself. Revision 490b9802...: pinned as PROOF_PILE_REV by
# third-party code that downloads exactly these 23 files, and `490b980` is a commit in the Hub's blame page of
# README.md (stored page); that it is the latest main is UNVERIFIED.
PROOF_PILE = Part(
  repo='hoskinson-center/proof-pile',
  revision='490b980249446f2f3bd2df3a8cf085d0f2de240a',
  revision_source='third-party pin PROOF_PILE_REV; commit 490b980 on the Hub blame page of README.md',
  file_format='jsonl.gz',
  folder='{split}',
  file_pattern='proofpile_{split}_*.jsonl.gz',
  fields=('text', 'meta'),
  text_field='text',
  group_field='meta',
  verified=('repo', 'file_format', 'folder', 'file_pattern', 'fields'),
)
PROOF_PILE_TRAIN_FILES = 21  # The loading script's range(21); a listing with another count stops the run.
PROOF_PILE_META_KEYS = ('config', 'set_name', 'subset_name')  # Where a record's meta names its subset.

# MusicPile. Sources: the Hub card's YAML (stored pages of several revisions): config `default`, data_files
# `data/train-*`, features id (int64), text (string), src (string); at 5930bd7 5,855,871 rows, 8,602,326,475
# bytes to download. Earlier revisions hold other rows (5,885,516; 3,673,794), so the pin matters. Revision
# 5930bd71...: the card commit `5930bd7` is main in the stored card page; the full hash is from two third-party
# notes that resolved it with HfApi.repo_info (one says it holds 29 parquet shards: UNVERIFIED, listed).
MUSIC_PILE = Part(
  repo='m-a-p/MusicPile',
  revision='5930bd7199ddead76ab540901e2187ea4e5fc6a7',
  revision_source='card commit 5930bd7 (stored card page); full hash from third-party notes',
  file_format='parquet',
  folder='data',
  file_pattern='{split}-*',
  fields=('id', 'text', 'src'),
  text_field='text',
  group_field='src',
  verified=('repo', 'file_format', 'folder', 'file_pattern', 'fields'),
)
# The music-specific sources (Appendix C: "sander-wood/irishman, Generated with GPT-4, and constructed from
# OpenChat, IrishMAN and KernScores"; the card's music-score rows IrishMAN, KernScores, JSB Chorales and the music
# chat and knowledge built from them). The column's real values are UNVERIFIED: third-party code filters the
# sibling MusicPile-sft by `'irishman' in src` and src == 'https://github.com/sander-wood/deepchoir' (the JSB
# Chorales source), and a third-party note queries src = 'https://huggingface.co/data_file/sander-wood/irishman';
# the paper's list reads like the values themselves. So the filter keeps a record whose src contains one of
# these, in any case; general sources (pile, Falcon-RefinedWeb, Wikipedia, OpenChat, LinkSoul, GPT4-Alpaca, Dolly)
# contain none of them. Not trusted: the run stops listing the values it saw when none matches in the first
# check_records records, and prints the documents kept per src value.
MUSIC_SOURCES = ('irishman', 'kernscores', 'deepchoir', 'jsb', 'generated with gpt-4')

# ChemPile (arXiv 2505.12534): datasets jablonkagroup/chempile-{reasoning,education,instruction,...}, each with
# several configs (code enumerates them with get_dataset_config_names; github lamalab-org/chempile). The Hub cards
# were not readable: configs are listed from the repository's top-level folders, files from each config's folder
# as `datasets` push_to_hub writes them (`<config>/<split>-NNNNN-of-NNNNN.parquet`: UNVERIFIED, listed).
# chempile-reasoning: configs seen chemistry_stackexchange-raw_data, mattermodeling_stackexchange-raw_data,
# physics_stackexchange-raw_data with columns title, q, a, split, text (a third-party spec); lamalab-org/chempile
# rephrase_chempile/rephrase.py keeps configs with a `text` column. Revision ef18e5d9...: a third-party pin.
CHEMPILE_REASONING = Part(
  repo='jablonkagroup/chempile-reasoning',
  revision='ef18e5d93c259b572a485475422d5dc0b9b544d2',
  revision_source='third-party pin',
  file_format='parquet',
  folder='{config}',
  file_pattern='{split}-*.parquet',
  fields=('text',),
  text_field='text',
  has_configs=True,
  verified=('repo',),
)
# chempile-education: config LibreText_Chemistry-default with a `text` column (lamalab-org/chempile
# embedding_dataset/create_dataset.py); a third-party note counts 4 configs. Revision c653c3c7...: resolved by a
# third party with HfApi.repo_info.
CHEMPILE_EDUCATION = Part(
  repo='jablonkagroup/chempile-education',
  revision='c653c3c7bbf599030b80f117b6748ebae406043b',
  revision_source='third-party note (HfApi.repo_info)',
  file_format='parquet',
  folder='{config}',
  file_pattern='{split}-*.parquet',
  fields=('text',),
  text_field='text',
  has_configs=True,
  verified=('repo',),
)
# chempile-instruction: lamalab-org/chempile rephrase_chempile/rephrase.py (commit 5264ed6) pushes it with
# push_to_hub(config_name=<source dataset>, e.g. chempile-reasoning); columns first_tag, second_tag, origin and
# `messages`, a list of {"role", "content"}, no `text` (an earlier variant pushed `text`: which is on the Hub is
# UNVERIFIED, checked on first contact). No pinned revision was found: main, resolved to its commit on first
# contact and recorded with the prepared data (pin it with ?revision=).
CHEMPILE_INSTRUCTION = Part(
  repo='jablonkagroup/chempile-instruction',
  revision='main',
  revision_source='none found (UNVERIFIED)',
  file_format='parquet',
  folder='{config}',
  file_pattern='{split}-*.parquet',
  fields=('messages',),
  text_field='messages',
  text_template='messages',
  has_configs=True,
  verified=('repo',),
)

DATASETS = {
  'proof-pile': Dataset('proof-pile', (PROOF_PILE,), why='Appendix C: "the entire ProofPile set"'),
  'musicpile': Dataset(
    'musicpile', (MUSIC_PILE,), where='src~' + '|'.join(MUSIC_SOURCES), why='Appendix C: its music-specific sources'
  ),
  'chempile': Dataset(
    'chempile',
    (CHEMPILE_REASONING, CHEMPILE_INSTRUCTION, CHEMPILE_EDUCATION),
    why='Appendix C: the reasoning, instruction and education parts, every config',
  ),
  'chempile-reasoning': Dataset('chempile-reasoning', (CHEMPILE_REASONING,)),
  'chempile-instruction': Dataset('chempile-instruction', (CHEMPILE_INSTRUCTION,)),
  'chempile-education': Dataset('chempile-education', (CHEMPILE_EDUCATION,)),
}

# OLMo-1B's general set (read as `tokens:@olmo-1b-dolma-v1_5.txt`, not through the Hub). Source: github
# allenai/OLMo configs/official-0724/OLMo-1B.yaml (configs/official/OLMo-1B.yaml before commit e4786afc,
# identical to d6170769): data.paths lists 249 URLs
# https://olmo-data.org/preprocessed/olmo-mix/v1_5/gpt-neox-20b-pii-special/part-{NNN}-{0000K}.npy, NNN 000..187,
# all with -00000 and 61 also with -00001; no sizes or checksums are published. The files are raw headerless
# arrays despite the .npy name (olmo/data/memmap_dataset.py reads from byte 0) of dtype uint16 (DataConfig
# memmap_dtype default, olmo/config.py); EOS 50279 (the config's eos_token_id; checking it against a real file
# is UNVERIFIED). Range reads: olmo/util.py HEADs for content-length and GETs byte ranges.
DOLMA_OLMO_1B_CONFIG = 'allenai/OLMo configs/official-0724/OLMo-1B.yaml'
DOLMA_OLMO_1B_FILES = 249
DOLMA_OLMO_1B_DTYPE = 'uint16'
DOLMA_OLMO_1B_EOS = 50279


def messages_text(messages) -> str:
  """A chat record as one document: each turn as `Role: content`, turns separated by a blank line."""
  if not isinstance(messages, (list, tuple)):
    raise ValueError(f'messages is a {type(messages).__name__}, not a list of {{role, content}} turns')
  turns = []
  for turn in messages:
    if not isinstance(turn, dict) or 'role' not in turn or 'content' not in turn:
      raise ValueError(f'a turn of messages is {str(turn)[:80]!r}, not a {{role, content}} mapping')
    content = turn['content'] if isinstance(turn['content'], str) else str(turn['content'] or '')
    if content.strip():
      turns.append(f'{str(turn["role"]).strip().capitalize()}: {content.strip()}')
  return '\n\n'.join(turns)
