"""RFM segments of a store's customers: recency, frequency, monetary value.

Each customer gets three scores from 1 to 5: quintiles of days since their last purchase
(recent = 5), of their number of distinct invoices, and of what they spent (quantity times
unit price). Quintiles are taken on ranks, so ties and very skewed spend still split into
five groups of equal size. Segments follow the usual RFM grid on recency and frequency:

============== ============ ==============
segment        recency      frequency
============== ============ ==============
champions      4-5          4-5
loyal          3-5          3-5 (not champions)
new            4-5          1
promising      4-5          2
needs_attention 3           1-2
at_risk        1-2          3-5
hibernating    1-2          1-2
============== ============ ==============

Computed inside the store on the gate's output (pseudonymous ids); only counts per segment
are shown to anyone outside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from siloguard.errors import DataError

__all__ = ["SEGMENTS", "rfm_table", "segment_counts"]

SEGMENTS: tuple[str, ...] = (
    "champions",
    "loyal",
    "new",
    "promising",
    "needs_attention",
    "at_risk",
    "hibernating",
)
_NEEDED = ("customer_id", "invoice", "invoice_date", "quantity", "unit_price")


def _quintile(values: pd.Series, *, higher_is_better: bool = True) -> np.ndarray:
    """Scores 1..5 by rank (ties broken by order); 5 = best."""
    ranks = values.rank(method="first", ascending=higher_is_better).to_numpy()
    n = len(values)
    return np.minimum(5, 1 + ((ranks - 1) * 5 // max(n, 1))).astype(np.int8)


def _segment(r: np.ndarray, f: np.ndarray) -> np.ndarray:
    out = np.full(len(r), "needs_attention", dtype=object)
    out[(r <= 2) & (f <= 2)] = "hibernating"
    out[(r <= 2) & (f >= 3)] = "at_risk"
    out[(r >= 4) & (f == 2)] = "promising"
    out[(r >= 4) & (f == 1)] = "new"
    out[(r >= 3) & (f >= 3)] = "loyal"
    out[(r >= 4) & (f >= 4)] = "champions"
    return out


def rfm_table(frame: pd.DataFrame, *, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per customer: recency_days, frequency, monetary, r, f, m scores and segment.

    ``as_of`` defaults to the day after the last purchase in ``frame`` (the data's own clock).
    """
    missing = [c for c in _NEEDED if c not in frame.columns]
    if missing:
        raise DataError(f"RFM needs the column(s) {', '.join(missing)}")
    if frame.empty:
        return pd.DataFrame(
            columns=["customer_id", "recency_days", "frequency", "monetary", "r", "f", "m", "segment"]
        )
    when = (as_of if as_of is not None else frame["invoice_date"].max().normalize() + pd.Timedelta(days=1))
    spend = frame["quantity"].astype(float) * frame["unit_price"].astype(float)
    grouped = frame.assign(spend=spend).groupby("customer_id", sort=True)
    table = pd.DataFrame(
        {
            "recency_days": (when - grouped["invoice_date"].max()).dt.days.astype(int),
            "frequency": grouped["invoice"].nunique().astype(int),
            "monetary": grouped["spend"].sum().round(2),
        }
    )
    table["r"] = _quintile(table["recency_days"], higher_is_better=False)
    table["f"] = _quintile(table["frequency"])
    table["m"] = _quintile(table["monetary"])
    table["segment"] = _segment(table["r"].to_numpy(), table["f"].to_numpy())
    return table.reset_index()


def segment_counts(table: pd.DataFrame) -> dict[str, int]:
    """Customers per segment, every segment listed (zeros included)."""
    counts = table["segment"].value_counts()
    return {s: int(counts.get(s, 0)) for s in SEGMENTS}
