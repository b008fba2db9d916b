"""Recommendation latency per customer over the whole catalogue, on store sites.

    .venv/bin/python bench/recommend.py [--run runs/demo] [--stores S ...] [--limit N]

For each store site under ``RUN/stores`` (made by ``siloguard demo``/``train``): builds the
store's :class:`~siloguard.clients.recommend.Recommender` once (model, catalogue, private
embeddings, score calibration; the build time is reported), then asks it for the top 10 of
each consenting customer in turn, timing every call end to end as staff would see it: the
customer's rows through the store's gate (policy, suppression list, consent, pseudonyms, a
decision event appended to the store's audit log), scoring every catalogue product
(collaborative part + repeat head), calibration and reasons. ``score only`` times the same
scoring without the gate, for the split. Prints a markdown table and writes
``bench/results/recommend.json``; the goal is p99 < 20 ms per customer on 2 cores. One torch
thread, as ``store serve`` and ``store recommend`` run (:func:`serving_threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from siloguard.clients.recommend import _COLUMNS, Recommender, serving_threads, staff
from siloguard.clients.site import StoreSite, sites_under


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--stores", nargs="*", default=None)
    parser.add_argument("--limit", type=int, default=0, help="customers per store (0: all consenting)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "recommend.json")
    args = parser.parse_args()
    sites = sites_under(args.run)
    if not sites:
        raise SystemExit(f"no store sites under {args.run}: run siloguard demo --out {args.run} first")
    serving_threads()  # as siloguard store serve / store recommend run
    load_before = os.getloadavg()
    rows = []
    for name, directory in sites.items():
        if args.stores and name not in args.stores:
            continue
        site = StoreSite.open(directory)
        start = time.perf_counter()
        recommender = Recommender(site.settings, name)
        build = time.perf_counter() - start
        customers = [c for c in recommender._rows_of]  # every customer of the store's file
        if args.limit:
            customers = customers[: args.limit]
        timings, scoring, gate, refused = [], [], [], 0
        for customer in customers:
            t0 = time.perf_counter()
            try:
                answer = recommender.recommend(customer, k=10)
            except Exception:  # noqa: BLE001  no consent: refused (timed separately, not in the figures)
                refused += 1
                continue
            timings.append(time.perf_counter() - t0)
            assert len(answer.items) == 10
            part = recommender._raw.iloc[recommender._rows_of[customer]]
            t2 = time.perf_counter()
            gated = recommender._admit(staff(name), part[list(_COLUMNS)])
            gate.append(time.perf_counter() - t2)
            t1 = time.perf_counter()
            recommender._rank(gated.frame, 10)
            scoring.append(time.perf_counter() - t1)
        rows.append(
            {
                "store": name,
                "catalogue": recommender.loaded.catalogue.size,
                "customers": len(timings),
                "refused": refused,
                "build_s": round(build, 2),
                "p50_ms": _pct(timings, 50),
                "p95_ms": _pct(timings, 95),
                "p99_ms": _pct(timings, 99),
                "max_ms": _pct(timings, 100),
                "score_only_p50_ms": _pct(scoring, 50),
                "score_only_p99_ms": _pct(scoring, 99),
                "gate_only_p50_ms": _pct(gate, 50),
                "gate_only_p99_ms": _pct(gate, 99),
            }
        )
    result = {
        "run": str(args.run),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "stores": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| store | catalogue | customers | build (s) | p50 ms | p95 ms | p99 ms | max ms | scoring p50 / p99 ms | gate p50 / p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['store']} | {r['catalogue']:,} | {r['customers']:,} | {r['build_s']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['p99_ms']} | {r['max_ms']} | {r['score_only_p50_ms']} / {r['score_only_p99_ms']} | "
              f"{r['gate_only_p50_ms']} / {r['gate_only_p99_ms']} |")
    print(f"load average (1 min) before / after: {result['loadavg_1m_before']} / {result['loadavg_1m_after']}")


if __name__ == "__main__":
    main()
