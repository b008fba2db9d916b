"""Recommendation quality: baselines, centralised, local-only and federated, one run.

    .venv/bin/python bench/quality.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz

Every method is scored the same way: full ranking over the training catalogue,
test = purchases of known customers on/after the split date (repeats count),
plus the "new items only" variant. Metrics are per store and overall (weighted
by test customers). Federated runs here are without differential privacy (see bench/dp.py).
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from siloguard.runs import RunManifest
from siloguard.clients.store import StoreData, evaluate_rows, evaluate_store, load_store, overall_metrics
from siloguard.config import Settings
from siloguard.data.loader import load_clean
from siloguard.data.silos import assign_stores
from siloguard.federation.runner import run_federation
from siloguard.runs import catalogue_item_text, run_settings
from siloguard.sites import lay_out

from _consent import everyone_consents  # bench/_consent.py (python puts bench/ on the path)
from siloguard.recommender.baselines import (
    als_score_fn,
    fit_als,
    item_vector_score_fn,
    personal_frequency_scores,
    popularity_scores,
    tune_als,
)
from siloguard.recommender.features import build_history
from siloguard.recommender.model import PrivateUsers, SharedModel, item_customers
from siloguard.recommender.train import train_local

METRICS = ("ndcg@10", "hr@10", "recall@20")


def _per_store_from_central(
    central: StoreData, store_of_row: np.ndarray, scores, stores: list[str]
) -> dict[str, dict[str, float]]:
    """Evaluate a centrally scored method on each store's test customers."""
    rows_with_truth = np.diff(central.truth.indptr) > 0
    return {
        store: evaluate_rows(central, np.flatnonzero(rows_with_truth & (store_of_row == store)), scores)
        for store in stores
    }


def _train_model(store: StoreData, settings: Settings, epochs: int, text: np.ndarray) -> tuple[SharedModel, PrivateUsers]:
    m = settings.model
    model = SharedModel(store.n_items, m.dim, m.hidden, seed=m.seed, item_text=text)
    model.set_store_popularity(item_customers(store.history))
    users = PrivateUsers(store.n_users, m.dim, seed=m.seed)
    for epoch in range(epochs):
        rng = np.random.default_rng([m.seed, epoch + 1, store.n_users])
        train_local(
            model, users, store.examples(m, rng), epochs=1, lr=m.learning_rate, repeat_lr=m.repeat_learning_rate, user_lr=m.user_learning_rate,
            batch_size=m.batch_size, weight_decay=m.weight_decay, seed=m.seed + epoch + 1,
        )
    return model, users


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Online Retail CSV/CSV.gz")
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (default: settings)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/quality.json"))
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    torch.set_num_threads(2)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="siloguard-bench-"))
    # Quality without differential privacy (bench/dp.py measures the DP runs against this).
    settings = Settings.build(
        work_dir=work,
        data={"path": args.data, "consent": everyone_consents(args.data, work)},
        privacy={"enabled": False},
    )
    if args.rounds:
        settings = settings.with_overrides(federation={"rounds": args.rounds})
    epochs = settings.federation.rounds * settings.model.local_epochs
    timings: dict[str, float] = {}

    t = time.perf_counter()
    # Each store on a site of its own, the coordinator on its own (as `siloguard train` lays them out).
    coordinator = run_settings(work / "coordinator", settings)
    laid = lay_out(work, settings, coordinator)
    prepared = laid.prepared
    stores = sorted(prepared.stores)
    silos = {name: work / "stores" / name / "data" / "transactions.csv" for name in stores}
    run = RunManifest.read(work / "coordinator")
    text = catalogue_item_text(run.require_catalogue())  # the public item features every party computes
    # The same file seen as one central silo (what pooling all stores would give).
    central = load_store("central", args.data.resolve(), run.require_catalogue(), str(run.split_date), str(run.end_date))
    frame, _ = load_clean(args.data)
    store_of = assign_stores(frame, uk_stores=settings.data.uk_stores, min_customers=settings.data.min_store_customers)
    train_customers = np.sort(frame.loc[frame["invoice_date"] < pd.Timestamp(str(run.split_date)), "customer_id"].unique())
    store_of_row = store_of.reindex(train_customers).to_numpy()
    timings["prepare"] = time.perf_counter() - t

    results: dict[str, dict[str, dict[str, float]]] = {}
    counts = central.history.counts
    binary_customers = counts.copy()
    binary_customers.data[:] = 1.0
    popularity = popularity_scores(counts)

    t = time.perf_counter()
    results["popularity"] = _per_store_from_central(central, store_of_row, item_vector_score_fn(popularity), stores)
    results["personal frequency"] = _per_store_from_central(
        central, store_of_row, personal_frequency_scores(counts, popularity), stores
    )
    timings["simple baselines"] = time.perf_counter() - t

    # ALS tuned on a validation split cut from the training period (last horizon before the split).
    t = time.perf_counter()
    val_cut = central.split_day - central.horizon
    val_history = build_history(central.events, central.n_users, central.n_items, val_cut).counts
    window = central.events[(central.events["day"] >= val_cut)]
    val_truth = sp.csr_matrix(
        (np.ones(len(window)), (window["user"], window["item"])), shape=counts.shape
    )
    val_truth.sum_duplicates()
    val_truth.data[:] = 1.0
    best, grid = tune_als(val_history, val_truth)
    als = fit_als(counts, **best)
    results["ALS (implicit, tuned)"] = _per_store_from_central(central, store_of_row, als_score_fn(als), stores)
    timings["ALS tuning + fit"] = time.perf_counter() - t

    t = time.perf_counter()
    model, users = _train_model(central, settings, epochs, text)
    results["siloguard centralised"] = _per_store_from_central(
        central, store_of_row,
        lambda rows: __import__("siloguard.recommender.model", fromlist=["score_users"]).score_users(model, users, central.history, rows),
        stores,
    )
    timings["centralised"] = time.perf_counter() - t

    t = time.perf_counter()
    local: dict[str, dict[str, float]] = {}
    for name in stores:
        store = load_store(name, silos[name], run.require_catalogue(), str(run.split_date), str(run.end_date))
        m, u = _train_model(store, settings, epochs, text)
        local[name] = evaluate_store(m, u, store)
    results["siloguard local-only"] = local
    timings["local-only"] = time.perf_counter() - t

    t = time.perf_counter()
    outcome = run_federation(coordinator, prepared)
    # The round the run registered (the best on the stores' validation window, inside the
    # training period) and, for comparison, the last round.
    final = outcome.reports[outcome.chosen_round or max(outcome.reports)]
    last = outcome.reports[max(outcome.reports)]
    results["siloguard federated (last round)"] = {
        k: {kk: vv for kk, vv in v.items() if kk != "num-examples"} for k, v in last.evaluate.items()
    }
    results["siloguard federated"] = {k: {kk: vv for kk, vv in v.items() if kk != "num-examples"} for k, v in final.evaluate.items()}
    timings["federated"] = time.perf_counter() - t

    results["siloguard federated"] = results.pop("siloguard federated")  # the registered round last in the table
    overall = {method: overall_metrics(per) for method, per in results.items()}
    small = [s for s in stores if laid.customers[s] < 300]

    print(f"\nData: {args.data.name}, split {run.split_date}, {central.n_items} items, "
          f"{len(stores)} stores, {settings.federation.rounds} rounds x {settings.model.local_epochs} local epochs\n")
    print("| method | NDCG@10 | HR@10 | Recall@20 | NDCG@10 new items | " + " | ".join(f"NDCG@10 {s}" for s in small) + " |")
    print("|---|---|---|---|---|" + "---|" * len(small))
    for method, o in overall.items():
        cells = [f"{o[k]:.4f}" for k in METRICS] + [f"{o['new.ndcg@10']:.4f}"]
        cells += [f"{results[method][s].get('ndcg@10', float('nan')):.4f}" for s in small]
        print(f"| {method} | " + " | ".join(cells) + " |")
    best_baseline = max(overall["ALS (implicit, tuned)"]["ndcg@10"], overall["personal frequency"]["ndcg@10"])
    ratio = overall["siloguard federated"]["ndcg@10"] / best_baseline
    new_ratio = overall["siloguard federated"]["new.ndcg@10"] / overall["ALS (implicit, tuned)"]["new.ndcg@10"]
    print(f"\nfederated / best(ALS, personal frequency) NDCG@10 = {ratio:.3f}x; "
          f"new items: federated / ALS = {new_ratio:.3f}x")
    print(f"federated: registered round {final.server_round} of {max(outcome.reports)} "
          f"(validation NDCG@10 per round: "
          + ", ".join(f"{r} {rep.overall.get('val.ndcg@10', float('nan')):.4f}" for r, rep in sorted(outcome.reports.items()))
          + ")")
    print(f"ALS best params: {best}")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": " ".join(sys.argv),
        "data": args.data.name,
        "split_date": str(run.split_date),
        "settings": settings.to_run_config(),
        "overall": overall,
        "per_store": results,
        "store_customers": prepared.customers,
        "federated_vs_best_baseline": ratio,
        "federated_vs_als_new_items": new_ratio,
        "als_best": best,
        "als_grid": grid.to_dict(orient="records"),
        "timings_s": timings,
        "federated_round": final.server_round,
        "validation_per_round": {r: rep.overall.get("val.ndcg@10") for r, rep in sorted(outcome.reports.items())},
    }, indent=2, default=float))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
