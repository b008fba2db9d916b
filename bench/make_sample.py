"""Cut the small Online Retail sample that ships inside siloguard.

Keeps all rows (cancellations included) of a seeded, per-country random subset of the
non-guest customers, over the whole date range of the source, and writes them unchanged
(same columns, same text) as a reproducible gzip CSV. The fraction of customers is found
by bisection so that the file is close to, and not above, --target-bytes. Countries in
--protect keep at least --min-customers customers (or all they have), so they stay
stores of their own with the default store settings.

    python bench/make_sample.py \
        --source ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz \
        --out src/siloguard/data/sample/online_retail_sample.csv.gz --seed 7
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from siloguard.data import assign_stores, customer_countries, load_clean

DEFAULT_SOURCE = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz"
)
DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "src/siloguard/data/sample/online_retail_sample.csv.gz"
)
HARD_LIMIT = 2_000_000


def gzip_csv(frame: pd.DataFrame) -> bytes:
    """CSV bytes, gzip level 9 with a zero timestamp so reruns give identical files."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    return buf.getvalue()


def customer_orders(countries: pd.Series, seed: int) -> dict[str, np.ndarray]:
    """A seeded random order of the customers of each country."""
    rng = np.random.default_rng(seed)
    orders = {}
    for country in sorted(countries.unique()):
        ids = np.sort(countries.index[countries == country].to_numpy())
        orders[country] = rng.permutation(ids)
    return orders


def choose(
    orders: dict[str, np.ndarray], fraction: float, protect: set[str], min_customers: int
) -> set[int]:
    """Prefix of each country's order: ceil(fraction * n), at least min_customers if protected."""
    chosen: set[int] = set()
    for country, ids in orders.items():
        k = math.ceil(fraction * len(ids))
        if country in protect:
            k = max(k, min(min_customers, len(ids)))
        chosen.update(int(i) for i in ids[:k])
    return chosen


def cover_date_range(chosen: set[int], clean: pd.DataFrame, seed: int) -> set[int]:
    """Add a customer active on the first and on the last day of the data if none is."""
    days = clean["invoice_date"].dt.normalize()
    rng = np.random.default_rng(seed + 1)
    out = set(chosen)
    for day in (days.min(), days.max()):
        active = np.sort(clean.loc[days == day, "customer_id"].unique())
        if not out.intersection(active.tolist()):
            out.add(int(rng.choice(active)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--target-bytes", type=int, default=1_500_000)
    parser.add_argument("--protect", nargs="*", default=["Germany", "France", "EIRE"])
    parser.add_argument("--min-customers", type=int, default=30)
    parser.add_argument(
        "--consent-only", action="store_true",
        help="only (re)write the simulated consent records next to --out, from the existing sample",
    )
    args = parser.parse_args(argv)
    if args.consent_only:
        write_consent(args.out)
        return

    raw = pd.read_csv(args.source, dtype=str, keep_default_na=False, na_filter=False)
    raw_ids = pd.to_numeric(raw["CustomerID"], errors="coerce")
    clean, _ = load_clean(args.source)
    countries = customer_countries(clean)  # customers left after cleaning
    orders = customer_orders(countries, args.seed)
    protect = set(args.protect)

    def build(fraction: float) -> tuple[bytes, set[int]]:
        chosen = choose(orders, fraction, protect, args.min_customers)
        chosen = cover_date_range(chosen, clean, args.seed)
        rows = raw[raw_ids.isin(sorted(chosen)).to_numpy()]
        return gzip_csv(rows), chosen

    lo, hi = 0.0, 1.0
    best: tuple[bytes, set[int], float] | None = None
    for _ in range(14):
        mid = (lo + hi) / 2
        data, chosen = build(mid)
        if len(data) <= args.target_bytes:
            best, lo = (data, chosen, mid), mid
        else:
            hi = mid
        if best is not None and len(best[0]) >= 0.98 * args.target_bytes:
            break
    if best is None:
        raise SystemExit("even the smallest sample exceeds --target-bytes; raise it")
    data, chosen, fraction = best
    if len(data) > HARD_LIMIT:
        raise SystemExit(f"sample is {len(data)} bytes, above {HARD_LIMIT}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)

    sample, report = load_clean(args.out)
    stores = assign_stores(sample).value_counts().sort_index()
    print(f"wrote {args.out} ({len(data):,} bytes, fraction {fraction:.4f}, seed {args.seed})")
    print(report.summary())
    print(
        f"dates {sample['invoice_date'].min()} .. {sample['invoice_date'].max()}; "
        f"{sample['country'].nunique()} countries"
    )
    print("customers per store: " + ", ".join(f"{k} {v}" for k, v in stores.items()))
    write_consent(args.out)


def write_consent(sample: Path) -> None:
    """The sample's simulated consent records (see the sample's README), seed 0."""
    from siloguard.data.consent import simulated_consent
    from siloguard.data.loader import SAMPLE_CONSENT_FILE

    frame, _ = load_clean(sample)
    consent = simulated_consent(frame, seed=0)
    out = sample.with_name(SAMPLE_CONSENT_FILE)
    consent.to_csv(out, index=False, compression={"method": "gzip", "mtime": 0})  # reproducible bytes
    print(f"wrote {out}: {len(consent):,} consent events for {frame['customer_id'].nunique():,} customers")


if __name__ == "__main__":
    main()
