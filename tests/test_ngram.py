"""labkit.ngram: counts, add-k probabilities, cross-entropy, table bytes, sampling, errors (tiny exact examples)."""
import math

import numpy as np
import pytest
import torch

from labkit import ngram
from labkit.ngram import (
    NGramModel,
    ngram_counts,
    ngram_ids,
    ngram_probabilities,
    ngram_table_bytes,
)

TOKENS = [0, 1, 1, 2, 0, 1]  # V = 3: bigrams 01 11 12 20 01; trigrams 011 112 120 201


def test_bigram_counts_by_hand():
    expected = torch.tensor([[0, 2, 0],
                             [0, 1, 1],
                             [1, 0, 0]])
    counts = ngram_counts(TOKENS, 2, 3)
    assert counts.dtype == torch.int64 and torch.equal(counts, expected)


def test_trigram_and_unigram_counts_by_hand():
    counts = ngram_counts(torch.tensor(TOKENS), 3, 3)
    assert counts.shape == (3, 3, 3) and counts.sum() == len(TOKENS) - 2
    for a, b, c in [(0, 1, 1), (1, 1, 2), (1, 2, 0), (2, 0, 1)]:
        assert counts[a, b, c] == 1
    assert torch.equal(ngram_counts(TOKENS, 1, 3), torch.tensor([2, 3, 1]))


def test_ids_and_counts_accept_numpy_uint8_and_short_sequences():
    arr = np.array(TOKENS, dtype=np.uint8)
    assert torch.equal(ngram_counts(arr, 2, 3), ngram_counts(TOKENS, 2, 3))
    assert ngram_ids(arr, 2, 3).tolist() == [0 * 3 + 1, 1 * 3 + 1, 1 * 3 + 2, 2 * 3 + 0, 0 * 3 + 1]
    assert ngram_counts([2], 2, 3).sum() == 0  # no complete bigram


def test_probabilities_by_hand_and_rows_sum_to_one():
    counts = torch.tensor([[2, 0], [1, 3]])
    assert torch.equal(ngram_probabilities(counts, 0), torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64))
    assert torch.equal(ngram_probabilities(counts, 1), torch.tensor([[0.75, 0.25], [2 / 6, 4 / 6]], dtype=torch.float64))
    trigram = torch.randint(0, 9, (4, 4, 4), generator=torch.Generator().manual_seed(0))
    for k in (0.0, 0.01, 1.0):
        p = ngram_probabilities(trigram, k)
        assert p.dtype == torch.float64 and p.shape == (4, 4, 4)
        torch.testing.assert_close(p.sum(-1), torch.ones(4, 4, dtype=torch.float64))


def test_unseen_context_is_uniform_also_for_k_zero():
    counts = torch.tensor([[0, 0, 0], [5, 0, 1]])
    for k in (0.0, 0.5):
        p = ngram_probabilities(counts, k)
        assert torch.equal(p[0], torch.full((3,), 1 / 3, dtype=torch.float64))
        assert not p.isnan().any()
    assert ngram_probabilities(counts, 0.0)[1, 1] == 0  # unseen n-gram of a seen context: 0 when k = 0


def test_cross_entropy_equals_brute_force():
    model = NGramModel.fit(TOKENS, 2, 3, k=0.5, dtype=torch.float64)
    val = [1, 2, 2, 0, 1]
    brute = -sum(math.log(model.probs[a, b].item()) for a, b in zip(val, val[1:])) / (len(val) - 1)
    assert model.cross_entropy(val) == pytest.approx(brute, rel=1e-12)
    counts = ngram_counts(TOKENS, 2, 3).double() + 0.5
    by_hand = counts / counts.sum(-1, keepdim=True)   # the first token is context only: 4 predictions
    assert brute == pytest.approx(-sum(math.log(by_hand[a, b]) for a, b in zip(val, val[1:])) / 4)


def test_trigram_cross_entropy_scores_tokens_after_the_first_two():
    model = NGramModel.fit(TOKENS, 3, 3, k=1.0)
    val = [0, 1, 1, 2]
    brute = -(math.log(model.probs[0, 1, 1].item()) + math.log(model.probs[1, 1, 2].item())) / 2
    assert model.cross_entropy(np.array(val)) == pytest.approx(brute, rel=1e-7)


def test_uniform_counts_give_ln_v():
    V = 5
    model = NGramModel.from_counts(torch.full((V, V), 7), k=0.1)
    assert model.cross_entropy(torch.randint(V, (50,), generator=torch.Generator().manual_seed(0))) == \
        pytest.approx(math.log(V), rel=1e-6)


def test_unseen_ngram_with_k_zero_gives_inf():
    model = NGramModel.fit(TOKENS, 2, 3, k=0.0)
    assert model.cross_entropy([0, 0]) == math.inf


def test_table_bytes():
    model = NGramModel.fit(TOKENS, 3, 3, k=1.0)
    assert model.n == 3 and model.vocab_size == 3
    assert model.table_bytes == 27 * 4 == model.probs.nbytes == ngram_table_bytes(3, 3)
    assert ngram_table_bytes(84, 6) == 84 ** 6 * 4
    assert ngram_table_bytes(84, 2, torch.float64) == 84 ** 2 * 8


def test_seeded_sampling_is_deterministic_and_follows_the_table():
    model = NGramModel.fit(TOKENS * 20, 2, 3, k=0.1)
    a = model.sample([0], 50, generator=torch.Generator().manual_seed(3))
    b = model.sample([0], 50, generator=torch.Generator().manual_seed(3))
    assert a == b and len(a) == 51 and a[0] == 0 and all(0 <= i < 3 for i in a)
    certain = NGramModel(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), k=0.0)   # 0 -> 1 -> 0 -> ...
    assert certain.sample([0], 4, generator=torch.Generator().manual_seed(0)) == [0, 1, 0, 1, 0]
    unigram = NGramModel.fit(TOKENS, 1, 3, k=0.0)
    assert len(unigram.sample([], 5, generator=torch.Generator().manual_seed(0))) == 5


@pytest.mark.parametrize("n", [0, -1, 2.0, True, "2"])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n"):
        ngram_counts(TOKENS, n, 3)


@pytest.mark.parametrize("k", [-0.1, math.inf, math.nan])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k"):
        ngram_probabilities(torch.ones(2, 2), k)


@pytest.mark.parametrize("tokens", [[0, 3], [-1, 0], torch.tensor([0.0, 1.0]), np.array([[0, 1]])])
def test_bad_tokens(tokens):
    with pytest.raises(ValueError, match="tokens"):
        ngram_counts(tokens, 2, 3)


def test_other_errors():
    model = NGramModel.fit(TOKENS, 3, 3, k=1.0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.cross_entropy([0, 1, 5])
    with pytest.raises(ValueError, match="at least 3 tokens"):
        model.cross_entropy([0, 1])
    with pytest.raises(ValueError, match="prompt of at least 2"):
        model.sample([0], 3)
    with pytest.raises(ValueError, match="too large"):
        ngram_counts(TOKENS, 6, 84)
    with pytest.raises(ValueError, match="counts"):
        ngram_probabilities(torch.tensor([[1, -1]]), 1.0)
    assert ngram.MAX_TABLE_CELLS >= 84 ** 3


# ----------------------------------------------------------------------------- the sparse (COO) form

def test_index_dtype_is_the_narrowest_that_holds_every_index():
    assert ngram.index_dtype(256) == np.uint8 and ngram.index_dtype(257) == np.uint16
    assert ngram.index_dtype(84 ** 3) == np.uint32 and ngram.index_dtype(84 ** 5) == np.uint32  # 4.18e9 < 2**32
    assert ngram.index_dtype(84 ** 6) == np.uint64


def test_sparse_model_stores_exactly_the_seen_ngrams_and_contexts():
    sparse = ngram.SparseNGramModel.fit(TOKENS, 2, 3, k=0.5)      # bigrams 01 ×2, 11, 12, 20
    assert sparse.ngram_index.tolist() == [1, 4, 5, 6] and sparse.ngram_count.tolist() == [2, 1, 1, 1]
    assert sparse.context_index.tolist() == [0, 1, 2] and sparse.context_total.tolist() == [2, 2, 1]
    assert sparse.ngram_index.dtype == np.uint8 and sparse.ngram_count.dtype == np.int32
    assert sparse.nnz == 4 and sparse.nbytes == 4 * (1 + 4) + 3 * (1 + 4)
    assert "4 n-grams × (uint8 index + int32 count)" in sparse.format_description()
    from_counts = ngram.SparseNGramModel.from_counts(ngram_counts(TOKENS, 2, 3), k=0.5)
    for name in ("ngram_index", "ngram_count", "context_index", "context_total"):
        assert np.array_equal(getattr(from_counts, name), getattr(sparse, name))


def test_sparse_model_gives_the_dense_models_losses():
    train = torch.randint(0, 7, (5000,), generator=torch.Generator().manual_seed(0))
    val = torch.randint(0, 7, (800,), generator=torch.Generator().manual_seed(1))
    for n in (1, 2, 3, 4):
        for k in (0.01, 1.0):
            dense = NGramModel.fit(train, n, 7, k=k, dtype=torch.float64)
            sparse = ngram.SparseNGramModel.fit(train, n, 7, k=k)
            torch.testing.assert_close(sparse.token_losses(val), dense.token_losses(val), rtol=1e-12, atol=1e-12)
            assert sparse.nbytes < dense.table_bytes or n == 1


def test_sparse_model_unseen_context_is_uniform_and_k_zero_gives_inf():
    sparse = ngram.SparseNGramModel.fit([0, 1, 0, 1], 2, 3, k=0.0)    # context 2 never seen
    assert sparse.token_losses([2, 0]).item() == pytest.approx(math.log(3))
    assert sparse.token_losses([0, 0]).item() == math.inf           # seen context, unseen bigram, k = 0
    assert sparse.cross_entropy([0, 1, 0]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sparse.token_losses([0])
    with pytest.raises(ValueError, match="k"):
        ngram.SparseNGramModel.fit(TOKENS, 2, 3, k=-1)
