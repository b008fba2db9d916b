"""Tests of siloguard.recommender.baselines on hand cases and a planted block structure."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from siloguard.recommender.baselines import (
    als_confidence,
    als_score_fn,
    als_scores,
    fit_als,
    item_vector_score_fn,
    personal_frequency_scores,
    popularity_scores,
    tune_als,
)
from siloguard.recommender.metrics import ranking_metrics


def ranking(scores: np.ndarray) -> list[int]:
    """Item order best first, ties -> lower index (the metrics' convention)."""
    return np.argsort(-scores, kind="stable").tolist()


def test_popularity_counts_distinct_customers() -> None:
    history = sp.csr_matrix(np.array([[2, 0, 1, 0], [1, 0, 0, 0], [5, 3, 0, 0]], dtype=float))
    np.testing.assert_array_equal(popularity_scores(history), [3, 1, 1, 0])  # not row sums [8, 3, 1, 0]


def test_popularity_ignores_explicit_zeros() -> None:
    history = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    np.testing.assert_array_equal(popularity_scores(history), [0, 1, 0])


def test_item_vector_score_fn_repeats_vector() -> None:
    fn = item_vector_score_fn(np.array([1.0, 3.0, 2.0]))
    out = fn(np.array([4, 0]))
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, [[1, 3, 2], [1, 3, 2]])
    out[0, 0] = 9  # callers may write into the result
    assert fn(np.array([0]))[0, 0] == 1.0


def test_personal_frequency_hand_case() -> None:
    history = sp.csr_matrix(np.array([[0, 2, 1, 2, 0, 0]], dtype=float))
    popularity = np.array([5, 1, 9, 3, 7, 0], dtype=float)
    s = personal_frequency_scores(history, popularity)(np.array([0]))[0]
    # count 2: items 3 (pop 3) then 1 (pop 1); count 1: item 2; unbought by popularity: 4, 0, 5
    assert ranking(s) == [3, 1, 2, 4, 0, 5]


def test_personal_frequency_bought_beats_popular() -> None:
    history = sp.csr_matrix(np.array([[0, 1], [1, 0]], dtype=float))
    popularity = np.array([1000.0, 0.0])
    s = personal_frequency_scores(history, popularity)(np.array([0, 1]))
    assert ranking(s[0]) == [1, 0]
    assert ranking(s[1]) == [0, 1]


def test_personal_frequency_fractional_counts() -> None:
    # counts differ by 0.25 only; popularity must still not overturn them
    history = sp.csr_matrix(np.array([[0.5, 0.75, 0.0]]))
    s = personal_frequency_scores(history, np.array([0.0, 0.0, 10.0]))(np.array([0]))[0]
    assert ranking(s) == [1, 0, 2]


def test_personal_frequency_default_popularity() -> None:
    history = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=float))
    s = personal_frequency_scores(history)(np.array([0]))[0]
    assert ranking(s) == [0, 2, 1]


def test_personal_frequency_works_with_metrics() -> None:
    history = sp.csr_matrix(np.array([[3, 1, 0, 0], [0, 0, 0, 2]], dtype=float))
    truth = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=float))
    res = ranking_metrics(personal_frequency_scores(history), truth, k_hr=1)
    assert res["hr@1"] == 1.0 and res["ndcg@10"] == 1.0


def test_als_confidence_is_alpha_times_count() -> None:
    c = als_confidence(sp.csr_matrix(np.array([[0, 2, 1]], dtype=float)), 5.0)
    np.testing.assert_allclose(c.toarray(), [[0, 10, 5]])
    assert c.dtype == np.float32
    with pytest.raises(ValueError):
        als_confidence(sp.csr_matrix(np.array([[1.0]])), 0.0)


def planted_blocks(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """60 users x 40 items, users 0-29 buy only items 0-19, users 30-59 only items 20-39."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 40
    user_block = np.repeat([0, 1], n_users // 2)
    item_block = np.repeat([0, 1], n_items // 2)
    in_block = user_block[:, None] == item_block[None, :]
    bought = in_block & (rng.random((n_users, n_items)) < 0.4)
    counts = bought * rng.integers(1, 4, size=(n_users, n_items))
    return sp.csr_matrix(counts.astype(float)), in_block, bought


def test_als_ranks_in_block_items_first() -> None:
    history, in_block, bought = planted_blocks()
    # two blocks = rank 2; more factors on 60 users just fit the sampling noise
    model = fit_als(history, factors=2, regularization=1.0, alpha=5.0, iterations=10)
    scores = als_scores(model, np.arange(history.shape[0]))
    assert scores.shape == history.shape
    for u in range(history.shape[0]):
        unbought_in = scores[u, in_block[u] & ~bought[u]]
        out = scores[u, ~in_block[u]]
        assert unbought_in.min() > out.max()


def test_als_is_reproducible() -> None:
    history, _, _ = planted_blocks()
    a = fit_als(history, factors=4, regularization=0.1, alpha=1.0, iterations=5, seed=3)
    b = fit_als(history, factors=4, regularization=0.1, alpha=1.0, iterations=5, seed=3)
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)


def test_tune_als_returns_best_and_table() -> None:
    history, in_block, bought = planted_blocks()
    truth = sp.csr_matrix((in_block & ~bought).astype(float))
    grid = {"factors": (2, 8), "regularization": (0.1,), "alpha": (1.0, 5.0)}
    best, table = tune_als(history, truth, grid=grid, iterations=5, new_items_only=True)
    assert len(table) == 4
    assert set(best) == {"factors", "regularization", "alpha"}
    assert table["ndcg@10"].is_monotonic_decreasing
    top = table.iloc[0]
    assert best == {"factors": int(top["factors"]), "regularization": top["regularization"], "alpha": top["alpha"]}
    model = fit_als(history, iterations=5, **best)
    res = ranking_metrics(als_score_fn(model), truth, history=history, new_items_only=True)
    assert res["ndcg@10"] == pytest.approx(top["ndcg@10"])
    assert res["hr@10"] == 1.0
