"""Sanity check of the centralised baselines on the real Online Retail data.

Run from the project root:  .venv/bin/python bench/_baselines_check.py [--grid small|full]

Train = InvoiceDate < 2011-10-03, test = 2011-10-03 .. end of file, restricted to
customers and stock codes seen in training. History = number of distinct
invoices per (customer, stock code) in training. ALS is tuned on a validation
split cut from the training period (last 4 weeks) and refit on the full training set.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from siloguard.recommender.baselines import (
    FULL_ALS_GRID,
    als_score_fn,
    fit_als,
    item_vector_score_fn,
    personal_frequency_scores,
    popularity_scores,
    tune_als,
)
from siloguard.recommender.metrics import ranking_metrics

DATA = Path(__file__).resolve().parents[2] / "shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz"
TEST_START = pd.Timestamp("2011-10-03")
VAL_START = TEST_START - pd.Timedelta(weeks=4)


def load(path: Path) -> pd.DataFrame:
    """Read and clean the CSV: registered customers, no cancellations, positive qty and price."""
    df = pd.read_csv(path, dtype={"InvoiceNo": str, "StockCode": str, "CustomerID": "float64"})
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"], format="ISO8601")
    df = df[df["CustomerID"].notna()]
    df = df[~df["InvoiceNo"].str.startswith("C")]
    df = df[(df["Quantity"] > 0) & (df["UnitPrice"] > 0)]
    return df.reset_index(drop=True)


@dataclass
class Split:
    history: sp.csr_matrix
    truth: sp.csr_matrix
    history_rows: sp.csr_matrix  # same pairs, value = number of rows instead of invoices


def make_split(df: pd.DataFrame, cutoff: pd.Timestamp) -> Split:
    """History before ``cutoff`` (distinct-invoice counts), truth from ``cutoff`` on."""
    train = df[df["InvoiceDate"] < cutoff]
    test = df[df["InvoiceDate"] >= cutoff]
    users = pd.Index(np.sort(train["CustomerID"].unique()))
    items = pd.Index(np.sort(train["StockCode"].unique()))
    test = test[test["CustomerID"].isin(users) & test["StockCode"].isin(items)]
    shape = (len(users), len(items))

    inv = train.groupby(["CustomerID", "StockCode"])["InvoiceNo"].nunique()
    nrows = train.groupby(["CustomerID", "StockCode"]).size()

    def mat(s: pd.Series) -> sp.csr_matrix:
        r = users.get_indexer(s.index.get_level_values(0))
        c = items.get_indexer(s.index.get_level_values(1))
        return sp.csr_matrix((s.to_numpy(dtype=np.float64), (r, c)), shape=shape)

    t = test.groupby(["CustomerID", "StockCode"]).size()
    truth = mat(t)
    truth.data[:] = 1.0
    return Split(history=mat(inv), truth=truth, history_rows=mat(nrows))


def fmt(res: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" if k != "users" else f"users={v}" for k, v in res.items())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", choices=["small", "full"], default="full")
    args = ap.parse_args()
    grid = FULL_ALS_GRID if args.grid == "full" else {"factors": (64,), "regularization": (0.1,), "alpha": (5.0, 20.0)}

    t0 = time.perf_counter()
    df = load(DATA)
    full = make_split(df, TEST_START)
    val = make_split(df[df["InvoiceDate"] < TEST_START], VAL_START)
    print(f"loaded in {time.perf_counter() - t0:.1f}s; rows={len(df)}")
    for name, s in (("full", full), ("val", val)):
        print(
            f"{name}: users={s.history.shape[0]} items={s.history.shape[1]} "
            f"train_nnz={s.history.nnz} test_users={int((np.diff(s.truth.indptr) > 0).sum())} test_nnz={s.truth.nnz}"
        )

    h = full.history
    pop = popularity_scores(h)
    pop_rows = np.asarray(full.history_rows.sum(axis=0)).ravel()  # alternative definition: row counts
    candidates = {
        "popularity (distinct customers)": item_vector_score_fn(pop),
        "popularity (rows)": item_vector_score_fn(pop_rows),
        "personal frequency (invoices)": personal_frequency_scores(h, pop),
        "personal frequency (rows)": personal_frequency_scores(full.history_rows, pop),
    }
    for name, fn in candidates.items():
        for nio in (False, True):
            res = ranking_metrics(fn, full.truth, history=h, new_items_only=nio)
            print(f"{name:34s} {'new-only' if nio else 'full    '} {fmt(res)}")

    t0 = time.perf_counter()
    best, table = tune_als(val.history, val.truth, grid=grid)
    tune_s = time.perf_counter() - t0
    print(f"ALS tuning: {len(table)} fits in {tune_s:.1f}s; best={best}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    t0 = time.perf_counter()
    model = fit_als(h, **best)
    print(f"refit on full train in {time.perf_counter() - t0:.1f}s")
    for nio in (False, True):
        res = ranking_metrics(als_score_fn(model), full.truth, history=h, new_items_only=nio)
        print(f"{'ALS (tuned)':34s} {'new-only' if nio else 'full    '} {fmt(res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
