"""Tests of siloguard.recommender.metrics: hand-computed values from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from siloguard.recommender.metrics import combine, metric_keys, ranking_metrics


def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary CSR with the given item indices per row."""
    m = np.zeros((len(rows), n_items))
    for r, items in enumerate(rows):
        m[r, items] = 1.0
    return sp.csr_matrix(m)


# scores -> ranking: item0 (rank 1), item2 (2), item3 (3), item4 (4), item1 (5)
SCORES_5 = np.array([[0.9, 0.1, 0.5, 0.3, 0.2]])


def test_keys_follow_cutoffs() -> None:
    res = ranking_metrics(SCORES_5, csr([[0]], 5), k_hr=3, k_ndcg=4, k_recall=5)
    assert set(res) == {"users", "hr@3", "ndcg@4", "recall@5"}
    assert metric_keys(3, 4, 5) == ("hr@3", "ndcg@4", "recall@5")


def test_relevant_at_ranks_1_and_3() -> None:
    res = ranking_metrics(SCORES_5, csr([[0, 3]], 5))
    assert res["users"] == 1
    assert res["hr@10"] == 1.0
    assert res["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert res["recall@20"] == 1.0  # 2 hits / min(2, 20)


def test_cutoff_truncates() -> None:
    # relevant at ranks 1 and 3; k=2 sees only rank 1
    res = ranking_metrics(SCORES_5, csr([[0, 3]], 5), k_hr=2, k_ndcg=2, k_recall=2)
    assert res["hr@2"] == 1.0
    assert res["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))  # IDCG over min(2, 2) items
    assert res["recall@2"] == pytest.approx(1 / 2)


def test_single_relevant_at_rank_2() -> None:
    res = ranking_metrics(SCORES_5, csr([[2]], 5), k_hr=1, k_ndcg=10, k_recall=1)
    assert res["hr@1"] == 0.0
    assert res["ndcg@10"] == pytest.approx(1 / math.log2(3))  # IDCG = 1
    assert res["recall@1"] == 0.0


def test_recall_denominator_is_min_rel_k() -> None:
    # 3 relevant items (ranks 1, 2, 3); with k=2 both slots are hits -> recall 2/min(3, 2) = 1
    res = ranking_metrics(SCORES_5, csr([[0, 2, 3]], 5), k_recall=2, k_ndcg=2)
    assert res["recall@2"] == 1.0
    assert res["ndcg@2"] == pytest.approx(1.0)
    # k=4: 3 hits / min(3, 4)
    res = ranking_metrics(SCORES_5, csr([[0, 2, 3]], 5), k_recall=4)
    assert res["recall@4"] == 1.0
    # relevant at ranks 1, 3, 5 with k=4: 2 / 3
    res = ranking_metrics(SCORES_5, csr([[0, 3, 1]], 5), k_recall=4)
    assert res["recall@4"] == pytest.approx(2 / 3)


def test_ties_lower_index_first() -> None:
    flat = np.ones((1, 5))
    # all tied -> ranking 0, 1, 2, 3, 4; item 4 at rank 5
    res = ranking_metrics(flat, csr([[4]], 5), k_hr=4)
    assert res["hr@4"] == 0.0
    assert res["ndcg@10"] == pytest.approx(1 / math.log2(6))
    # tie straddling the cut-off: items 1, 2, 3 tie at the top, k=2 keeps 1 and 2
    s = np.array([[0.5, 1.0, 1.0, 1.0, 0.0]])
    assert ranking_metrics(s, csr([[3]], 5), k_hr=2)["hr@2"] == 0.0
    res = ranking_metrics(s, csr([[2]], 5), k_hr=2, k_ndcg=2)
    assert res["hr@2"] == 1.0
    assert res["ndcg@2"] == pytest.approx(1 / math.log2(3))


def _reference_ndcg(scores: np.ndarray, rel: np.ndarray, k: int) -> float:
    """Slow reference: full lexicographic sort by (-score, index)."""
    vals = []
    for s, r in zip(scores, rel, strict=True):
        if not r.any():
            continue
        order = np.lexsort((np.arange(s.size), -s))[:k]
        dcg = sum(1 / math.log2(i + 2) for i, item in enumerate(order) if r[item])
        idcg = sum(1 / math.log2(i + 2) for i in range(min(int(r.sum()), k)))
        vals.append(dcg / idcg)
    return float(np.mean(vals))


def test_ties_match_lexicographic_reference() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(200, 40)).astype(float)  # heavy ties everywhere
    rel = rng.random((200, 40)) < 0.1
    res = ranking_metrics(scores, sp.csr_matrix(rel.astype(float)), chunk_size=17)
    assert res["ndcg@10"] == pytest.approx(_reference_ndcg(scores, rel, 10))


def test_new_items_only_masks_history() -> None:
    truth = csr([[0, 3]], 5)
    history = csr([[0]], 5)
    # item 0 (the top score) was bought before: relevant = {3}, ranking 2, 3, 4, 1
    res = ranking_metrics(SCORES_5, truth, history=history, new_items_only=True, k_hr=1)
    assert res["users"] == 1
    assert res["hr@1"] == 0.0
    assert res["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert res["recall@20"] == 1.0
    # history is ignored for the full variant
    assert ranking_metrics(SCORES_5, truth, history=history)["ndcg@10"] == pytest.approx(
        (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    )


def test_new_items_only_masks_even_unbought_in_test() -> None:
    # history item 1 outranks the relevant item 2 unless masked
    s = np.array([[0.0, 0.9, 0.5, 0.1]])
    res = ranking_metrics(s, csr([[2]], 4), history=csr([[1]], 4), new_items_only=True, k_hr=1)
    assert res["hr@1"] == 1.0


def test_new_items_only_skips_users_with_only_repeats() -> None:
    truth = csr([[0], [0, 3]], 5)
    history = csr([[0], [1]], 5)
    scores = np.vstack([SCORES_5, SCORES_5])
    res = ranking_metrics(scores, truth, history=history, new_items_only=True)
    assert res["users"] == 1  # user 0 only re-bought item 0


def test_new_items_only_requires_history() -> None:
    with pytest.raises(ValueError, match="history"):
        ranking_metrics(SCORES_5, csr([[0]], 5), new_items_only=True)


def test_users_without_relevant_items_are_skipped() -> None:
    scores = np.vstack([SCORES_5, SCORES_5, SCORES_5])
    truth = csr([[0], [], [2]], 5)
    res = ranking_metrics(scores, truth, k_hr=1)
    assert res["users"] == 2
    assert res["hr@1"] == pytest.approx(0.5)
    assert res["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_explicit_zeros_in_truth_are_not_relevant() -> None:
    truth = sp.csr_matrix((np.array([0.0]), np.array([0]), np.array([0, 1])), shape=(1, 5))
    res = ranking_metrics(SCORES_5, truth)
    assert res["users"] == 0
    assert math.isnan(res["ndcg@10"])


def test_callable_in_chunks_equals_dense() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((53, 30))
    truth = sp.csr_matrix((rng.random((53, 30)) < 0.15).astype(float))
    history = sp.csr_matrix((rng.random((53, 30)) < 0.2).astype(float))
    seen: list[int] = []

    def score_fn(rows: np.ndarray) -> np.ndarray:
        seen.append(len(rows))
        return scores[rows]

    for nio in (False, True):
        seen.clear()
        dense = ranking_metrics(scores, truth, history=history, new_items_only=nio)
        chunked = ranking_metrics(score_fn, truth, history=history, new_items_only=nio, chunk_size=7)
        assert chunked == pytest.approx(dense)
        assert max(seen) <= 7 and len(seen) >= 2


def test_callable_bad_shape_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(lambda rows: np.zeros((len(rows), 4)), csr([[0]], 5))


def test_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(np.array([[np.nan, 1, 2, 3, 4]]), csr([[0]], 5))


def test_k_larger_than_catalogue() -> None:
    res = ranking_metrics(SCORES_5, csr([[1]], 5), k_hr=50, k_ndcg=50, k_recall=50)
    assert res["hr@50"] == 1.0
    assert res["ndcg@50"] == pytest.approx(1 / math.log2(6))
    assert res["recall@50"] == 1.0


def test_combine_weights_by_users() -> None:
    groups = {
        "a": {"users": 3, "hr@10": 1.0, "ndcg@10": 0.5, "recall@20": 0.2},
        "b": {"users": 1, "hr@10": 0.0, "ndcg@10": 0.1, "recall@20": 0.6},
        "c": {"users": 0, "hr@10": math.nan, "ndcg@10": math.nan, "recall@20": math.nan},
    }
    out = combine(groups)
    assert out["users"] == 4
    assert out["hr@10"] == pytest.approx(0.75)
    assert out["ndcg@10"] == pytest.approx((3 * 0.5 + 0.1) / 4)
    assert out["recall@20"] == pytest.approx((3 * 0.2 + 0.6) / 4)


def test_combine_empty_and_zero() -> None:
    assert combine({}) == {"users": 0}
    out = combine({"a": {"users": 0, "ndcg@10": math.nan}})
    assert out["users"] == 0 and math.isnan(out["ndcg@10"])


def test_combine_mismatched_keys_raise() -> None:
    with pytest.raises(ValueError):
        combine({"a": {"users": 1, "ndcg@10": 0.1}, "b": {"users": 1, "ndcg@5": 0.1}})


def test_combine_of_groups_equals_pooled() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random((100, 25))
    truth = sp.csr_matrix((rng.random((100, 25)) < 0.1).astype(float))
    group = rng.integers(0, 3, size=100)
    per_group = {str(g): ranking_metrics(scores, truth, users=np.flatnonzero(group == g)) for g in range(3)}
    assert combine(per_group) == pytest.approx(ranking_metrics(scores, truth))
