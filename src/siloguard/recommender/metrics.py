"""Full-ranking top-k metrics for next-basket recommendation.

Every user is ranked against the whole training catalogue (no sampled
negatives). Relevance is binary: an item is relevant for a user when it is
bought in the test period (``truth`` nonzero). Repeat purchases count, unless
``new_items_only`` asks for items the user did not buy in training.

Definitions, for a user with relevant set ``R`` and ranked list ``r_1, r_2, ...``:

* ``HR@k``     = 1 if any of ``r_1..r_k`` is in ``R`` else 0.
* ``NDCG@k``   = DCG / IDCG, ``DCG = sum_{i<=k} [r_i in R] / log2(i + 1)``,
  IDCG is the DCG of ``min(|R|, k)`` relevant items at the top.
* ``Recall@k`` = hits in the top k / ``min(|R|, k)``. Dividing by
  ``min(|R|, k)`` instead of ``|R|`` makes a perfect ranking score 1 even when
  the user bought more than k items.

Ties in scores are broken deterministically: the lower item index ranks first.
Users with no relevant item are skipped and not counted. Each metric is the
mean over evaluated users; ``"users"`` is their number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["ScoreFn", "Scores", "combine", "metric_keys", "overall_metrics", "ranking_metrics"]

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Takes row indices (int array of length m) and returns an (m, n_items) score array."""

Scores = np.ndarray | ScoreFn
"""A dense (n_users, n_items) score matrix or a :data:`ScoreFn`."""

DEFAULT_CHUNK = 1024


def metric_keys(k_hr: int = 10, k_ndcg: int = 10, k_recall: int = 20) -> tuple[str, str, str]:
    """Names of the metrics that :func:`ranking_metrics` returns for these cut-offs."""
    return f"hr@{k_hr}", f"ndcg@{k_ndcg}", f"recall@{k_recall}"


def _binary_csr(m: Any, name: str) -> sp.csr_matrix:
    """A CSR copy of ``m`` holding 1.0 where ``m`` is nonzero (explicit zeros dropped)."""
    if not sp.issparse(m):
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"{name} must be a 2-D matrix")
    out = sp.csr_matrix(m, dtype=np.float64, copy=True)
    out.data = (out.data != 0).astype(np.float64)
    out.eliminate_zeros()
    return out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items per row, best first; ties -> lower index first.

    ``np.argpartition`` finds each row's k-th best score ``t``; all items above
    ``t`` are kept, and items equal to ``t`` are kept in index order until k are
    chosen, so the selected set does not depend on the partition algorithm.
    A stable sort of the selected items (already in index order) by descending
    score then yields the deterministic order.
    """
    m, n = scores.shape
    if k >= n:
        return np.argsort(-scores, axis=1, kind="stable")
    thr = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    above = scores > thr[:, None]
    equal = scores == thr[:, None]
    need = k - above.sum(axis=1)
    take = above | (equal & (np.cumsum(equal, axis=1) <= need[:, None]))
    idx = np.nonzero(take)[1].reshape(m, k)  # row-major -> ascending index per row
    order = np.argsort(-np.take_along_axis(scores, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def ranking_metrics(
    scores: Scores,
    truth: sp.spmatrix | np.ndarray,
    *,
    history: sp.spmatrix | np.ndarray | None = None,
    new_items_only: bool = False,
    k_hr: int = 10,
    k_ndcg: int = 10,
    k_recall: int = 20,
    users: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict[str, float]:
    """HR@k, NDCG@k and Recall@k with full ranking over the catalogue.

    Args:
        scores: dense (n_users, n_items) scores, higher is better, rows aligned
            with ``truth``; or a callable ``f(rows) -> (len(rows), n_items)``
            called once per chunk of row indices (so scores never need to be
            materialised for all users at once).
        truth: (n_users, n_items) sparse matrix, nonzero = bought in the test period.
        history: (n_users, n_items) training counts, nonzero = bought in training.
            Needed only with ``new_items_only``.
        new_items_only: relevant items are test items the user did not buy in
            training, and training items are removed from the ranking (-inf).
        k_hr, k_ndcg, k_recall: cut-offs.
        users: row indices to evaluate (default: all rows of ``truth``).
        chunk_size: rows scored and ranked at a time.

    Returns:
        ``{"users": n_evaluated, "hr@k": ..., "ndcg@k": ..., "recall@k": ...}``.
        Users with no relevant item are skipped; if none is left the metrics are NaN.
        Ties in scores rank the lower item index first. NaN scores raise ValueError.
    """
    for name, k in (("k_hr", k_hr), ("k_ndcg", k_ndcg), ("k_recall", k_recall)):
        if k < 1:
            raise ValueError(f"{name} must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rel_all = _binary_csr(truth, "truth")
    n_users, n_items = rel_all.shape
    hist: sp.csr_matrix | None = None
    if new_items_only:
        if history is None:
            raise ValueError("new_items_only=True needs history")
    if history is not None:
        hist = _binary_csr(history, "history")
        if hist.shape != rel_all.shape:
            raise ValueError(f"history shape {hist.shape} != truth shape {rel_all.shape}")
        if new_items_only:
            rel_all = (rel_all - rel_all.multiply(hist)).tocsr()
            rel_all.eliminate_zeros()
    dense: np.ndarray | None = None
    if callable(scores):
        score_fn: ScoreFn = scores
    else:
        dense = np.asarray(scores)
        if dense.shape != (n_users, n_items):
            raise ValueError(f"scores shape {dense.shape} != truth shape {(n_users, n_items)}")

    rows_all = np.arange(n_users) if users is None else np.asarray(users, dtype=np.int64)
    n_rel_all = np.diff(rel_all.indptr)[rows_all]
    rows_all = rows_all[n_rel_all > 0]  # skip users with nothing relevant: no scoring needed

    k_max = min(max(k_hr, k_ndcg, k_recall), n_items)
    disc = 1.0 / np.log2(np.arange(2, k_max + 2))
    idcg_table = np.cumsum(disc)
    sums = {"hr": 0.0, "ndcg": 0.0, "recall": 0.0}

    for start in range(0, len(rows_all), chunk_size):
        rows = rows_all[start : start + chunk_size]
        m = len(rows)
        if dense is not None:
            s = dense[rows].astype(np.float64, copy=True)
        else:
            s = np.array(score_fn(rows), dtype=np.float64, copy=True)
            if s.shape != (m, n_items):
                raise ValueError(f"score function returned shape {s.shape}, expected {(m, n_items)}")
        if np.isnan(s).any():
            raise ValueError("scores contain NaN")
        if new_items_only:
            assert hist is not None
            h = hist[rows].tocoo()
            s[h.row, h.col] = -np.inf
        rel_chunk = rel_all[rows]
        n_rel = np.diff(rel_chunk.indptr)
        rel = rel_chunk.toarray().astype(bool)
        top = _top_k(s, k_max)
        hits = np.take_along_axis(rel, top, axis=1)

        sums["hr"] += float(hits[:, :k_hr].any(axis=1).sum())
        dcg = hits[:, :k_ndcg] @ disc[: min(k_ndcg, k_max)]
        idcg = idcg_table[np.minimum(n_rel, min(k_ndcg, k_max)) - 1]
        sums["ndcg"] += float((dcg / idcg).sum())
        sums["recall"] += float((hits[:, :k_recall].sum(axis=1) / np.minimum(n_rel, k_recall)).sum())

    n_eval = len(rows_all)
    key_hr, key_ndcg, key_recall = metric_keys(k_hr, k_ndcg, k_recall)
    if n_eval == 0:
        return {"users": 0, key_hr: math.nan, key_ndcg: math.nan, key_recall: math.nan}
    return {
        "users": n_eval,
        key_hr: sums["hr"] / n_eval,
        key_ndcg: sums["ndcg"] / n_eval,
        key_recall: sums["recall"] / n_eval,
    }


def combine(per_group: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Overall metrics from per-group results, weighted by each group's ``"users"``.

    Groups with 0 users are ignored (their metrics may be NaN). ``"users"`` is
    summed. With no users at all the metrics are NaN; an empty mapping returns
    ``{"users": 0}`` since there are no metric names to report.
    Raises ValueError if the counted groups report different metric names.
    """
    counted = [res for res in per_group.values() if int(res.get("users", 0)) > 0]
    if not per_group:
        return {"users": 0}
    reference = counted[0] if counted else next(iter(per_group.values()))
    keys = [k for k in reference if k != "users"]
    for res in counted:
        names = [k for k in res if k != "users"]
        if set(names) != set(keys):
            raise ValueError(f"groups report different metrics: {sorted(keys)} vs {sorted(names)}")
    total = 0
    acc = dict.fromkeys(keys, 0.0)
    for res in counted:
        n = int(res["users"])
        total += n
        for k in keys:
            acc[k] += n * float(res[k])
    out: dict[str, float] = {"users": total}
    for k in keys:
        out[k] = acc[k] / total if total > 0 else math.nan
    return out


def overall_metrics(per_store: dict[str, dict[str, float]]) -> dict[str, float]:
    """Weighted by test customers, separately for the full and new-items variants (and the
    validation metrics, ``val.*``, weighted by validation customers, when the stores report them)."""
    per_store = {s: {k: v for k, v in m.items() if k != "num-examples"} for s, m in per_store.items()}
    prefixes = ("new.", "val.")
    full = combine({s: {k: v for k, v in m.items() if not k.startswith(prefixes)} for s, m in per_store.items()})
    out = dict(full)
    for prefix in prefixes:
        part = {s: {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)} for s, m in per_store.items()}
        if prefix == "new." or any(part.values()):
            out.update({f"{prefix}{k}": v for k, v in combine(part).items()})
    return out
