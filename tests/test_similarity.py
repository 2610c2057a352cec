"""N-gram Jensen-Shannon divergence by hand, and the optional embedding metrics (C2ST, MAUVE)."""

import importlib.util

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from spt_jax.analysis import similarity

HAS_SKLEARN = importlib.util.find_spec('sklearn') is not None
EXTRA_MISSING = similarity.embedding_extra_missing()


def test_jsd_by_hand():
  # P = (1/2, 1/2, 0), Q = (0, 1/2, 1/2): M = (1/4, 1/2, 1/4), each KL to M is 1/2 bit.
  assert similarity.jensen_shannon(np.array([1.0, 1, 0]), np.array([0.0, 1, 1])) == pytest.approx(0.5)


def test_jsd_of_a_corpus_with_itself_is_zero_and_of_disjoint_vocabularies_one_bit():
  rng = np.random.default_rng(0)
  a = [rng.integers(0, 100, 300) for _ in range(5)]
  b = [rng.integers(100, 200, 300) for _ in range(5)]
  same = similarity.ngram_jsd(a, a)
  assert all(value == pytest.approx(0.0, abs=1e-12) for value in same.values())
  disjoint = similarity.ngram_jsd(a, b)
  assert set(disjoint) == {'unigram_jsd', 'bigram_jsd', 'trigram_jsd'}
  assert disjoint['unigram_jsd'] == pytest.approx(1.0, abs=1e-12)
  # Hashed n-grams: ~1,500 trigrams a side into 2^20 bins collide about twice across the corpora.
  assert disjoint['bigram_jsd'] == pytest.approx(1.0, abs=5e-3)
  assert disjoint['trigram_jsd'] == pytest.approx(1.0, abs=5e-3)


def test_bigrams_see_order_that_unigrams_do_not():
  a = [np.array([1, 2] * 200)]
  b = [np.array([1] * 200 + [2] * 200)]
  result = similarity.ngram_jsd(a, b)
  assert result['unigram_jsd'] == pytest.approx(0.0, abs=1e-12)  # Same token counts...
  assert result['bigram_jsd'] > 0.3  # ...different pairs.


def test_ngrams_do_not_cross_segments():
  assert len(similarity.hashed_ngrams(np.array([1, 2]), 3)) == 0
  assert len(similarity.hashed_ngrams(np.array([1, 2, 3, 4]), 2)) == 3


def _word_tokenizer(path):

  words = ['[UNK]', 'the', 'cat', 'sat', 'on', 'mat', 'lemma', 'proof', 'qed', 'intros', 'apply']
  tokenizer = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(path))
  return str(path)


def test_text_files_through_a_tokenizer_and_npy_arrays(tmp_path):
  tokenizer = similarity.load_tokenizer(_word_tokenizer(tmp_path / 'tok.json'))
  (tmp_path / 'a.txt').write_text('the cat sat on the mat ' * 50)
  (tmp_path / 'b.txt').write_text('lemma proof intros apply qed ' * 50)
  a = similarity.load_corpus(f'files:{tmp_path}/a.txt', tokenizer)
  b = similarity.load_corpus(f'files:{tmp_path}/b.txt', tokenizer)
  assert a['tokens'] == 300 and a['texts']
  assert similarity.ngram_jsd(a['segments'], b['segments'])['unigram_jsd'] == pytest.approx(1.0)
  np.save(tmp_path / 'a.npy', np.array(a['segments'][0][:300]).reshape(10, 30).astype(np.uint16))
  packed = similarity.load_corpus(str(tmp_path / 'a.npy'))
  assert len(packed['segments']) == 10
  assert similarity.ngram_jsd(packed['segments'], a['segments'])['unigram_jsd'] == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(ValueError, match='tokenizer'):
    similarity.load_corpus(f'files:{tmp_path}/a.txt', None)


@pytest.mark.skipif(not HAS_SKLEARN, reason='MAUVE and C2ST need scikit-learn (the similarity extra)')
def test_mauve_and_c2st_on_synthetic_embeddings():
  rng = np.random.default_rng(0)
  p = rng.normal(size=(300, 16))
  q_same = rng.normal(size=(300, 16))
  q_far = rng.normal(size=(300, 16)) + 3.0
  assert similarity.mauve(p, p) == pytest.approx(1.0, abs=1e-6)
  assert similarity.mauve(p, q_same) > 0.8
  assert similarity.mauve(p, q_far) < 0.2
  assert similarity.c2st_auc(p, q_far) > 0.99
  assert 0.35 < similarity.c2st_auc(p, q_same) < 0.65


@pytest.mark.skipif(bool(EXTRA_MISSING), reason=EXTRA_MISSING or 'extra present')
def test_minilm_embeddings_load_offline_and_separate_domains(monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  english = [f'The weather today is {w} and people walk in the park.' for w in ('nice', 'cold', 'warm', 'wet')] * 3
  proofs = [f'Lemma l{i} : forall n, n + {i} = {i} + n. Proof. intros. lia. Qed.' for i in range(12)]
  embeddings = similarity.embed(english + proofs)
  assert embeddings.shape == (24, 384)
  assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
  assert similarity.c2st_auc(embeddings[:12], embeddings[12:]) > 0.9
