"""Differential privacy: cost, utility and memory, in one run.

    .venv/bin/python bench/dp.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz

* cost: seconds per training epoch of the largest store, plain vs customer-level DP-SGD
  (Opacus ghost clipping), same data and model, median of --repeats runs, each in a fresh
  process (which also gives its peak memory, VmHWM);
* utility: federated NDCG@10 (full ranking) through the Flower simulation engine at target
  epsilon 1, 3 and 8 per store (customer level, delta = 1e-5 with these store sizes) vs the
  same run without DP, with personal frequency in the same table, plus a PNG plot.
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
    from siloguard.recommender.model import PrivateUsers, SharedModel
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
    model, users = SharedModel(st.n_items, m.dim, m.hidden, seed=seed), PrivateUsers(st.n_users, m.dim)
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
    """NDCG@10 vs epsilon, with the non-DP run and personal frequency as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows, pf = results["utility"]["rows"], results["utility"]["personal_frequency"]
    non_dp = rows[0]["ndcg@10"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["target_epsilon"] for r in rows[1:]]
    ax.plot(xs, [r["ndcg@10"] for r in rows[1:]], "o-", label="federated, customer-level DP")
    ax.axhline(non_dp, color="tab:green", ls="--", label="federated, no DP")
    if pf is not None:
        ax.axhline(pf, color="tab:gray", ls=":", label="personal frequency")
    ax.set_xlabel("epsilon per store (customer level, delta 1e-5)")
    ax.set_ylabel("NDCG@10 (full ranking)")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend()
    ax.set_title("Online Retail, 7 stores")
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
    print(f"| DP (ghost clipping) | {dp:.2f} | {max(r['peak_rss_mib'] for r in runs['dp']):.0f} |")
    print(f"\nDP / plain = {dp / plain:.2f}x")

    if a.skip_utility:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
        return 0

    # ---- utility ------------------------------------------------------------
    from opacus.accountants.utils import get_noise_multiplier

    from siloguard.config import Settings
    from siloguard.federation.runner import run_federation
    from siloguard.privacy.dp import steps_per_round
    from siloguard.runs import run_settings
    from siloguard.sites import lay_out

    from _consent import everyone_consents  # bench/_consent.py

    consent_dir = Path(tempfile.mkdtemp(prefix="siloguard-consent-"))
    base = Settings.build(
        work_dir=consent_dir, data={"path": Path(data), "consent": everyone_consents(Path(data), consent_dir)}
    )
    rounds = base.federation.rounds
    rows = []
    for target in (None, *TARGETS):
        work = Path(tempfile.mkdtemp(prefix="siloguard-dputil-"))
        overrides = {"enabled": target is not None}
        if target is not None:
            # Noise for the target over all rounds at the largest rate any store uses
            # (rates are rounded down per store, so no store ends above the target).
            q = base.privacy.sample_rate
            steps = rounds * steps_per_round(base.privacy, base.model.local_epochs, 10**6)
            sigma = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps,
                                         accountant=base.privacy.accountant, epsilon_tolerance=0.01)
            overrides.update({"noise_multiplier": float(sigma), "epsilon_cap": target * 1.001})
        settings = base.with_overrides(work_dir=work, privacy=overrides)
        # Each store on a site of its own, the coordinator on its own (as `siloguard train` lays them out).
        coordinator = run_settings(work / "coordinator", settings)
        prepared = lay_out(work, settings, coordinator).prepared
        started = time.perf_counter()
        outcome = run_federation(coordinator, prepared)
        final = outcome.reports[max(outcome.reports)]
        overall = final.overall
        spent = {}
        for rep in outcome.reports.values():
            spent.update({s: m["epsilon"] for s, m in rep.train.items() if "epsilon" in m})
        rows.append({
            "target_epsilon": target,
            "noise_multiplier": overrides.get("noise_multiplier"),
            "ndcg@10": overall["ndcg@10"],
            "new.ndcg@10": overall["new.ndcg@10"],
            "max_epsilon_spent": max(spent.values()) if spent else None,
            "seconds": time.perf_counter() - started,
        })
        print(f"target {target}: NDCG@10 {overall['ndcg@10']:.4f}", flush=True)

    quality = json.loads(Path("bench/results/quality.json").read_text()) if Path("bench/results/quality.json").exists() else None
    pf = quality["overall"]["personal frequency"]["ndcg@10"] if quality else None
    non_dp = rows[0]["ndcg@10"]
    print("\n## Utility: federated NDCG@10 vs customer-level epsilon per store\n")
    print("| setting | noise multiplier | max epsilon spent | NDCG@10 | vs non-DP | NDCG@10 new items |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "no DP" if r["target_epsilon"] is None else f"epsilon {r['target_epsilon']:g}"
        noise = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        spent = "-" if r["max_epsilon_spent"] is None else f"{r['max_epsilon_spent']:.2f}"
        print(f"| {name} | {noise} | {spent} | {r['ndcg@10']:.4f} | {r['ndcg@10'] / non_dp:.3f}x | {r['new.ndcg@10']:.4f} |")
    if pf is not None:
        print(f"| personal frequency (no sharing) | - | 0 | {pf:.4f} | {pf / non_dp:.3f}x | - |")
    results["utility"] = {"rows": rows, "personal_frequency": pf, "rounds": rounds}

    png = a.json.with_name("dp_utility.png")
    plot(results, png)
    a.json.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nJSON: {a.json}  plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
