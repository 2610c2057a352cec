"""The paper's data from its public homes: the default sources of the paper-scale presets.

Each is a source spec string (spt_jax/data/sources.py), so that one override swaps it. Paper section 2.1 and
Appendix C: three domain sets of about 300M tokens each, against 200B pretraining tokens of Dolma. The domain sets
are `hub:` sources: their repositories, pinned revisions, files, fields and subsets are in hub_datasets.py, each
fact with where it was read; what could not be confirmed there is checked on first contact.
"""

# ProofPile (Hoskinson Center): "we subsample the data from the entire ProofPile set": its 21 train files.
PROOFPILE = 'hub:proof-pile'
# MusicPile (ChatMusician): only its music-specific sources, by the records' `src` (hub_datasets.MUSIC_SOURCES).
MUSICPILE = 'hub:musicpile'
# ChemPile: every config of its reasoning, instruction (chat `messages` as text) and education datasets.
CHEMPILE = 'hub:chempile'
# OLMo-1B's own training data: pre-tokenized Dolma v1.5 files, fetched in order only as far as the token budget
# needs (lists/olmo-1b-dolma-v1_5.txt; each file is ~1-2 GB of uint16 tokens; facts in hub_datasets.py).
DOLMA_OLMO_1B = 'tokens:@olmo-1b-dolma-v1_5.txt?dtype=uint16'
DOMAIN_TOKENS = 300_000_000  # Each domain set is subsampled by whole documents (fixed seed) to about this many tokens.
