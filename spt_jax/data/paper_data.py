"""The paper's data from its public homes: the default sources of the paper-scale presets.

Each is a source spec string (spt_jax/data/sources.py), so that one override swaps it. Paper section 2.1 and
Appendix C: three domain sets of about 300M tokens each, against 200B pretraining tokens of Dolma.
Not verified from the machines this was written on (no access to the Hub or olmo-data.org): the dataset
names and MusicPile's `src` values follow the paper and the datasets' cards; check them on first use.
"""

# ProofPile (Hoskinson Center): "we subsample the data from the entire ProofPile set".
PROOFPILE = 'hf:hoskinson-center/proof-pile?split=train&field=text'
# MusicPile (ChatMusician): only its music-specific sources (IrishMAN, KernScores, GPT-4-generated and
# OpenChat-derived music text), selected by the records' `src` field.
MUSICPILE = 'hf:m-a-p/MusicPile?split=train&field=text&where=src=irishman|kernscores|gpt4|openchat'
# ChemPile: its reasoning, instruction and education parts.
CHEMPILE = ('hf:jablonkagroup/chempile-reasoning,jablonkagroup/chempile-instruction,'
            'jablonkagroup/chempile-education?split=train&field=text')
# OLMo-1B's own training data: pre-tokenized Dolma v1.5 files, fetched in order only as far as the token budget
# needs (lists/olmo-1b-dolma-v1_5.txt; each file is ~1-2 GB of uint16 tokens).
DOLMA_OLMO_1B = 'tokens:@olmo-1b-dolma-v1_5.txt?dtype=uint16'
DOMAIN_TOKENS = 300_000_000  # Each domain set is subsampled by whole documents to about this many tokens.
