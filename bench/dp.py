"""Differential privacy: cost, utility and memory, in one run.

    .venv/bin/python bench/dp.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz

* cost: seconds per training epoch of the largest store, plain vs customer-level DP-SGD
  (the default path: the text map's per-customer gradients in one backward pass, plus the
  store's own repeat ranker trained without noise), same data and model, median of --repeats runs, each in a fresh
  process (which also gives its peak memory, VmHWM);
* utility: NDCG@10 (full ranking), overall, on new items and per small store, at epsilon 1, 3
  and 8 per store (customer level, RDP, delta 1 / (10 x customers) capped at 1e-5, Poisson
  sampling; the noise planned per store and round so the run spends the target) and without
  DP, for the federation (the Flower simulation engine, stores on sites of their own), each
  store alone (local-only, the same recipe and the same DP) and one pooled silo (centralised,
  the same DP), with popularity and personal frequency in the same table; plus a PNG plot.
  Under DP the prior on new items is a DP release of item popularity (privacy/popularity.py):
  federated, the sum of the stores' releases (the coordinator sends it from round 2 on);
  local-only and centralised, each silo's own, charged to its history before its rounds.
Prints markdown tables and writes bench/results/dp.json and bench/results/dp_utility.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGETS = (1.0, 3.0, 8.0)


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _epoch_worker(data: str, store: str, mode: str, seed: int, out: mp.Queue) -> None:
    import numpy as np
    import torch

    from siloguard.clients.store import load_store
    from siloguard.config import Settings
    from siloguard.federation.runner import prepare_run
    from siloguard.privacy.dp import group_by_customer, store_delta, train_local_dp
    from siloguard.recommender.model import PrivateUsers, SharedModel, item_customers
    from siloguard.runs import RunManifest
    from siloguard.recommender.train import train_local

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="siloguard-dpbench-"))
    s = Settings.build(work_dir=work, data={"path": data})
    prepared = prepare_run(s)
    run = RunManifest.read(work)
    st = load_store(store, prepared.stores[store], run.require_catalogue(), str(run.split_date), str(run.end_date))
    m = s.model
    examples = st.examples(m, np.random.default_rng(seed))
    from siloguard.runs import catalogue_item_text

    text = catalogue_item_text(run.require_catalogue())
    model = SharedModel(st.n_items, m.dim, m.hidden, seed=seed, item_text=text)
    if mode == "plain":  # the store's raw prior without DP only (clients/app.py, docs/PRIVACY.md)
        model.set_store_popularity(item_customers(st.history))
    else:  # under DP a release of it (privacy/popularity.py); its cost is not in the epoch's time
        from siloguard.privacy.popularity import popularity_prior, release_noise, release_popularity

        sigma = release_noise(s.privacy, store_delta(s.privacy, st.n_users))
        model.set_store_popularity(popularity_prior(release_popularity(st.history.counts, sigma), sigma),
                                   released=s.privacy.own_repeat != "all")
    users = PrivateUsers(st.n_users, m.dim)
    base_rss = _peak_rss_mib()
    started = time.perf_counter()
    if mode == "plain":
        train_local(model, users, examples, epochs=1, lr=m.learning_rate, repeat_lr=m.repeat_learning_rate,
                    user_lr=m.user_learning_rate, batch_size=m.batch_size, weight_decay=m.weight_decay, seed=seed)
        customers = int(np.count_nonzero(np.bincount(examples.bags.user)))
    else:
        data_c = group_by_customer(examples, st.n_users)
        train_local_dp(model, users.weight.detach(), data_c, privacy=s.privacy, local_epochs=1,
                       lr=m.learning_rate, repeat_lr=m.repeat_learning_rate, history=[],
                       delta=store_delta(s.privacy, st.n_users), noise_multiplier=1.0)
        if s.privacy.own_repeat:  # a DP epoch also trains what the store keeps of its repeat ranker (no noise)
            from siloguard.recommender.train import train_own_repeat

            model = model.fresh_copy()  # without Opacus' hooks
            train_own_repeat(model, users, examples, m.model_copy(update={"local_epochs": 1}), seed=seed,
                             part=s.privacy.own_repeat)
        customers = st.n_users
    seconds = time.perf_counter() - started
    out.put({"seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": base_rss,
             "examples": len(examples), "customers": customers})


def _measure(data: str, store: str, mode: str, seed: int) -> dict:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_epoch_worker, args=(data, store, mode, seed, q))
    proc.start()
    result = q.get()
    proc.join()
    return result


def plot(results: dict, png: Path) -> None:
    """NDCG@10 (overall and new items) vs epsilon: federated, local-only, centralised, with the
    non-DP runs and the baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows = results["utility"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, base_name in ((axes[0], "ndcg@10", "personal frequency"), (axes[1], "new.ndcg@10", "popularity")):
        for i, method in enumerate(("federated", "local-only", "centralised")):
            dp = sorted((r["target_epsilon"], r["overall"][key]) for r in rows
                        if r["method"] == method and r["target_epsilon"] is not None)
            ax.plot([x for x, _ in dp], [y for _, y in dp], "o-", color=f"C{i}", label=f"{method}, DP")
            plain = [r["overall"][key] for r in rows if r["method"] == method and r["setting"] == "no DP"]
            if plain:
                ax.axhline(plain[0], color=f"C{i}", ls="--", lw=0.8, label=f"{method}, no DP")
        ref = next(r["overall"][key] for r in rows if r["method"] == base_name)
        ax.axhline(ref, color="tab:gray", ls=":", label=base_name)
        xs = sorted({r["target_epsilon"] for r in rows if r["target_epsilon"] is not None})
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("epsilon per store (customer level)")
        ax.set_ylabel(f"NDCG@10{' new items' if key.startswith('new') else ''} (full ranking)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Online Retail, 7 stores")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--store", default="united-kingdom-4", help="store for the cost figure (default: the largest)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-utility", action="store_true")
    p.add_argument("--json", type=Path, default=Path("bench/results/dp.json"))
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing --json")
    a = p.parse_args()
    if a.plot_only:
        plot(json.loads(a.json.read_text()), a.json.with_name("dp_utility.png"))
        return 0
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    data = str(a.data.resolve())
    results: dict = {"command": " ".join(sys.argv)}

    # ---- cost -------------------------------------------------------------
    runs = {mode: [_measure(data, a.store, mode, seed) for seed in range(a.repeats)] for mode in ("plain", "dp")}
    plain = statistics.median(r["seconds"] for r in runs["plain"])
    dp = statistics.median(r["seconds"] for r in runs["dp"])
    results["cost"] = {"store": a.store, "plain_s": plain, "dp_s": dp, "ratio": dp / plain, "runs": runs}
    print(f"\n## Cost: one training epoch of store {a.store} ({runs['dp'][0]['customers']} customers)\n")
    print("| mode | seconds/epoch (median) | peak RSS MiB |")
    print("|---|---|---|")
    print(f"| plain | {plain:.2f} | {max(r['peak_rss_mib'] for r in runs['plain']):.0f} |")
    print(f"| DP (text map, one backward pass; + the store's own repeat ranker) | {dp:.2f} | "
          f"{max(r['peak_rss_mib'] for r in runs['dp']):.0f} |")
    print(f"\nDP / plain = {dp / plain:.2f}x")

    if a.skip_utility:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
        return 0

    # ---- utility ------------------------------------------------------------
    utility(data, results)
    png = a.json.with_name("dp_utility.png")
    plot(results, png)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nJSON: {a.json}  plot: {png}")
    return 0


SMALL = ("france", "germany", "international")


def _per_store_central(central, store_of_row, score_rows, stores) -> dict:
    import numpy as np

    from siloguard.clients.store import evaluate_rows

    with_truth = np.diff(central.truth.indptr) > 0
    return {s: evaluate_rows(central, np.flatnonzero(with_truth & (store_of_row == s)), score_rows) for s in stores}


def _train_alone(store, settings, text, target: float | None) -> tuple[object, object, float | None]:
    """One silo trained on its own with the federation's recipe (rounds x local epochs), at the
    same planned DP (``target`` per silo, customer level) or without; a fresh model per round,
    as a store builds one from each message."""
    import numpy as np

    from siloguard.privacy.dp import epsilon_of, group_by_customer, plan_noise, rounds_left, store_delta, train_local_dp
    from siloguard.recommender.model import PrivateUsers, SharedModel, item_customers
    from siloguard.recommender.train import scoring_state, train_kept_repeat, train_local

    from siloguard.privacy.popularity import popularity_prior, release_noise, release_popularity, release_step

    m, pv, rounds = settings.model, settings.privacy, settings.federation.rounds
    state = SharedModel(store.n_items, m.dim, m.hidden, seed=m.seed).state_dict()
    users = PrivateUsers(store.n_users, m.dim, seed=m.seed)
    history: list = []
    delta = store_delta(pv, store.n_users)
    if target is None:  # the store's raw prior without DP only
        prior = item_customers(store.history)
    else:  # under DP its own release, charged before the rounds are planned (as a store does)
        sigma = release_noise(pv, delta)
        prior = None if sigma is None else popularity_prior(release_popularity(store.history.counts, sigma), sigma)
        history = [] if sigma is None else [release_step(sigma)]
    own: dict = {}  # what a DP store keeps of its repeat ranker (clients/app.py)
    for r in range(1, rounds + 1):
        model = SharedModel(store.n_items, m.dim, m.hidden, item_text=text)
        model.load_state_dict(state)
        if prior is not None:
            model.set_store_popularity(prior, released=target is not None and pv.own_repeat != "all")
        examples = store.examples(m, np.random.default_rng([m.seed, r, store.n_users]))
        if target is None:
            train_local(model, users, examples, epochs=m.local_epochs, lr=m.learning_rate,
                        repeat_lr=m.repeat_learning_rate, user_lr=m.user_learning_rate, batch_size=m.batch_size,
                        weight_decay=m.weight_decay, seed=m.seed + r)
        else:
            noise = plan_noise(pv, history, rounds=rounds_left(rounds, r), local_epochs=m.local_epochs, delta=delta,
                               customers=store.n_users)
            if noise is None:
                break
            if pv.own_repeat == "items":  # its own item biases on the head it holds, before the DP step
                own = train_kept_repeat(model, users, examples, m, seed=m.seed + r, part="items", kept=own,
                                        average=pv.own_repeat_average)
            history = train_local_dp(model, users.weight.detach(), group_by_customer(examples, store.n_users),
                                     privacy=pv, local_epochs=m.local_epochs, lr=m.learning_rate,
                                     repeat_lr=m.repeat_learning_rate, history=history, delta=delta,
                                     noise_multiplier=noise).history
            if pv.own_repeat == "all":  # as a store does (clients/app.py): its repeat ranker without noise
                own = train_kept_repeat(model, users, examples, m, seed=m.seed + r, part="all", kept=own,
                                        average=pv.own_repeat_average)
        state = model.state_dict()
    model = SharedModel(store.n_items, m.dim, m.hidden, item_text=text)
    model.load_state_dict({**state, **scoring_state(own)})
    if prior is not None:
        model.set_store_popularity(prior, released=target is not None and pv.own_repeat != "all")
    return model, users, (epsilon_of(pv.accountant, history, delta) if target is not None else None)


def utility(data: str, results: dict) -> None:
    """Federated, local-only and centralised at each epsilon (and without DP), with the baselines."""
    import numpy as np
    import pandas as pd

    from siloguard.clients.store import evaluate_store, load_store
    from siloguard.config import Settings
    from siloguard.data.loader import load_clean
    from siloguard.data.silos import assign_stores
    from siloguard.federation.runner import run_federation
    from siloguard.recommender.baselines import item_vector_score_fn, personal_frequency_scores, popularity_scores
    from siloguard.recommender.metrics import overall_metrics
    from siloguard.recommender.model import score_users
    from siloguard.runs import RunManifest, catalogue_item_text, run_settings
    from siloguard.sites import lay_out

    from _consent import everyone_consents  # bench/_consent.py

    consent_dir = Path(tempfile.mkdtemp(prefix="siloguard-consent-"))
    base = Settings.build(
        work_dir=consent_dir, data={"path": Path(data), "consent": everyone_consents(Path(data), consent_dir)}
    )
    rounds = base.federation.rounds
    rows: list[dict] = []
    per_store: dict[str, dict] = {}
    baselines_done = False
    for target in (None, *TARGETS):
        work = Path(tempfile.mkdtemp(prefix="siloguard-dputil-"))
        privacy = {"enabled": False} if target is None else {"enabled": True, "epsilon": target, "epsilon_cap": target}
        settings = base.with_overrides(work_dir=work, privacy=privacy)
        # Each store on a site of its own, the coordinator on its own (as `siloguard train` lays them out).
        coordinator = run_settings(work / "coordinator", settings)
        laid = lay_out(work, settings, coordinator)
        prepared = laid.prepared
        stores = sorted(prepared.stores)
        run = RunManifest.read(work / "coordinator")
        catalogue = run.require_catalogue()
        text = catalogue_item_text(catalogue)
        split, end = str(run.split_date), str(run.end_date)
        name = "no DP" if target is None else f"epsilon {target:g}"

        if not baselines_done:  # the same data, split and catalogue in every setting
            central = load_store("central", Path(data), catalogue, split, end)
            frame, _ = load_clean(Path(data))
            store_of = assign_stores(frame, uk_stores=settings.data.uk_stores, min_customers=settings.data.min_store_customers)
            train_customers = np.sort(frame.loc[frame["invoice_date"] < pd.Timestamp(split), "customer_id"].unique())
            store_of_row = store_of.reindex(train_customers).to_numpy()
            popularity = popularity_scores(central.history.counts)
            per_store["popularity"] = _per_store_central(central, store_of_row, item_vector_score_fn(popularity), stores)
            per_store["personal frequency"] = _per_store_central(
                central, store_of_row, personal_frequency_scores(central.history.counts, popularity), stores
            )
            for method in ("popularity", "personal frequency"):
                rows.append({"setting": "-", "method": method, "target_epsilon": None,
                             "overall": overall_metrics(per_store[method]), "per_store": per_store[method]})
            baselines_done = True

        started = time.perf_counter()
        outcome = run_federation(coordinator, prepared)
        chosen = outcome.reports[outcome.chosen_round] if getattr(outcome, "chosen_round", None) else outcome.reports[max(outcome.reports)]
        fed = {k: {kk: vv for kk, vv in v.items() if kk != "num-examples"} for k, v in chosen.evaluate.items()}
        spent: dict[str, float] = {}
        for rep in outcome.reports.values():
            spent.update({s: m["epsilon"] for s, m in rep.train.items() if "epsilon" in m})
        fed_seconds = time.perf_counter() - started

        started = time.perf_counter()
        local, local_spent = {}, {}
        for store_name in stores:
            silo = work / "stores" / store_name / "data" / "transactions.csv"
            st = load_store(store_name, silo, catalogue, split, end)
            model, users, eps = _train_alone(st, settings, text, target)
            local[store_name] = evaluate_store(model, users, st)
            local_spent[store_name] = eps
        local_seconds = time.perf_counter() - started

        started = time.perf_counter()
        model, users, central_eps = _train_alone(central, settings, text, target)
        cen = _per_store_central(central, store_of_row, lambda r: score_users(model, users, central.history, r), stores)
        central_seconds = time.perf_counter() - started

        for method, per, eps, secs in (
            ("federated", fed, max(spent.values()) if spent else None, fed_seconds),
            ("local-only", local, max((e for e in local_spent.values() if e is not None), default=None), local_seconds),
            ("centralised", cen, central_eps, central_seconds),
        ):
            rows.append({
                "setting": name, "method": method, "target_epsilon": target, "max_epsilon_spent": eps,
                "overall": overall_metrics(per), "per_store": per, "seconds": secs,
                **({"round": chosen.server_round, "rounds_trained": sum(1 for r in outcome.reports.values() if r.train)}
                   if method == "federated" else {}),
                **({"noise_per_round": {s: [m.get("noise-multiplier") for _r, rep in sorted(outcome.reports.items())
                                             for st, m in rep.train.items() if st == s] for s in stores}}
                   if method == "federated" and target is not None else {}),
            })
            o = rows[-1]["overall"]
            print(f"{name} {method}: NDCG@10 {o['ndcg@10']:.4f} new {o['new.ndcg@10']:.4f} ({secs:.0f} s)", flush=True)

    pf = next(r for r in rows if r["method"] == "personal frequency")["overall"]
    pop = next(r for r in rows if r["method"] == "popularity")["overall"]
    print("\n## Utility: customer-level DP per store vs no DP, federated vs alone vs pooled\n")
    print("| setting | method | max epsilon spent | NDCG@10 | vs personal frequency | NDCG@10 new items | "
          "new vs popularity | " + " | ".join(f"NDCG@10 {s}" for s in SMALL) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(SMALL))
    for r in rows:
        o = r["overall"]
        eps = r.get("max_epsilon_spent")
        cells = [r["setting"], r["method"], "-" if eps is None else f"{eps:.3f}", f"{o['ndcg@10']:.4f}",
                 f"{o['ndcg@10'] / pf['ndcg@10']:.3f}x", f"{o['new.ndcg@10']:.4f}",
                 f"{o['new.ndcg@10'] / pop['new.ndcg@10']:.2f}x"]
        cells += [f"{r['per_store'][s]['ndcg@10']:.4f}" for s in SMALL]
        print("| " + " | ".join(cells) + " |")
    results["utility"] = {"rows": rows, "personal_frequency": pf["ndcg@10"], "popularity_new": pop["new.ndcg@10"],
                          "rounds": rounds, "local_epochs": base.model.local_epochs}


if __name__ == "__main__":
    raise SystemExit(main())
