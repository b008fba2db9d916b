"""Customer lifetime value against the naive baseline, on a held-out window.

    .venv/bin/python bench/clv.py [--data FILE --end YYYY-MM-DD --days N] ...

For each data file (default: the two shared real data sets, each taken as one store): fits
BG/NBD + Gamma-Gamma (:mod:`siloguard.marketing.clv`) on purchases before ``--end`` and
predicts each customer's purchase days and spend in the ``--days`` after it; the naive
baseline predicts the same purchase rate as before (purchase days per day since the first
purchase) at the customer's own mean spend per purchase day. Both are compared with what each
customer (with a purchase before ``--end``) actually did in the window: mean absolute error and
Spearman rank correlation, for purchases and for spend. Prints a markdown table and writes
``bench/results/clv.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from siloguard.data.loader import load_clean
from siloguard.marketing.clv import fit_clv, naive_forecast

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULTS = [
    (SHARED / "online_retail" / "online_retail_2010-12_2011-10.csv.gz", "2011-08-01", 92),
    (SHARED / "complete_journey" / "complete_journey_2017-01_2017-08.csv.gz", "2017-06-01", 92),
]


def evaluate(path: Path, end: str, days: int) -> dict:
    frame, _ = load_clean(path)
    cut = pd.Timestamp(end)
    start = time.perf_counter()
    model, summary = fit_clv(frame, cut)
    fit_s = time.perf_counter() - start
    predicted = model.predict(summary, days)
    naive = naive_forecast(summary, days, frame, cut)
    window = frame[(frame["invoice_date"] >= cut) & (frame["invoice_date"] < cut + pd.Timedelta(days=days))]
    spend = (window["quantity"] * window["unit_price"]).groupby(window["customer_id"]).sum()
    visits = window.assign(day=window["invoice_date"].dt.normalize()).groupby("customer_id")["day"].nunique()
    actual = pd.DataFrame({"purchases": visits, "spend": spend}).reindex(summary.index).fillna(0.0)
    out = {"file": path.name, "calibration_end": end, "days": days, "customers": len(summary),
           "active_in_window": int((actual["purchases"] > 0).sum()), "fit_s": round(fit_s, 3),
           "params": {"bgnbd": vars(model.purchases), "gamma_gamma": vars(model.spend)}}
    for measure in ("purchases", "spend"):
        for name, pred in (("clv", predicted), ("naive", naive)):
            out[f"{measure}.{name}.mae"] = round(float(np.abs(pred[measure] - actual[measure]).mean()), 4)
            out[f"{measure}.{name}.spearman"] = round(float(stats.spearmanr(pred[measure], actual[measure]).statistic), 4)
        out[f"{measure}.actual_mean"] = round(float(actual[measure].mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, action="append", help="a data file (repeat with --end and --days)")
    parser.add_argument("--end", action="append")
    parser.add_argument("--days", type=int, action="append")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "clv.json")
    args = parser.parse_args()
    jobs = list(zip(args.data, args.end, args.days)) if args.data else DEFAULTS
    load_before = os.getloadavg()
    rows = [evaluate(Path(p), e, d) for p, e, d in jobs]
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| data | customers | window | measure | CLV MAE | naive MAE | CLV Spearman | naive Spearman |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        for measure in ("purchases", "spend"):
            print(f"| {r['file']} | {r['customers']:,} | {r['calibration_end']} + {r['days']} d | {measure} | "
                  f"{r[f'{measure}.clv.mae']} | {r[f'{measure}.naive.mae']} | {r[f'{measure}.clv.spearman']} | {r[f'{measure}.naive.spearman']} |")
    print(f"load average (1 min) before / after: {result['loadavg_1m_before']} / {result['loadavg_1m_after']}")


if __name__ == "__main__":
    main()
