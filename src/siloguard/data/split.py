"""Temporal train/test split of cleaned transactions.

Training uses everything before the split date; the test period runs from the split
date to the end of the data, restricted to customers and items seen in training
(a recommender cannot score what it has never seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd

from siloguard.errors import ConfigError, DataError

__all__ = ["TemporalSplit", "temporal_split"]

_COLUMNS = ("invoice_date", "customer_id", "stock_code")


@dataclass(frozen=True, eq=False)
class TemporalSplit:
    """Train and test rows plus the test period ``[split_date, end_date)``."""

    train: pd.DataFrame
    test: pd.DataFrame
    split_date: pd.Timestamp
    end_date: pd.Timestamp
    dropped_test_rows: int


def _as_timestamp(value: str | date | pd.Timestamp) -> pd.Timestamp:
    if isinstance(value, str):
        try:
            ts = pd.Timestamp(value.strip())
        except (ValueError, TypeError):
            raise ConfigError(
                f"split date {value!r} is not a date; use the form YYYY-MM-DD, e.g. 2011-10-03"
            ) from None
    elif isinstance(value, date):  # includes datetime and pd.Timestamp
        ts = pd.Timestamp(value)
    else:
        raise ConfigError(
            f"split date must be a string, date or Timestamp, got {type(value).__name__}"
        )
    if pd.isna(ts):
        raise ConfigError("split date is empty; use the form YYYY-MM-DD, e.g. 2011-10-03")
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return ts


def temporal_split(
    df: pd.DataFrame,
    split_date: str | date | pd.Timestamp | None = None,
    test_weeks: int = 4,
) -> TemporalSplit:
    """Split ``df`` (from ``clean``) into rows before and from ``split_date``.

    By default the split date is the (midnight of the) day of the last transaction minus
    ``test_weeks`` weeks, so the test period is the last ``test_weeks`` weeks of the data
    up to and including the last day, and starts on the same weekday as the last day
    (data ending Monday 2011-10-31 -> split Monday 2011-10-03).
    ``end_date`` is the day after the last transaction (exclusive end of the test period).
    Test rows whose customer or item never occurs in training are dropped and counted.
    """
    missing = [c for c in _COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"transactions lack column(s) {', '.join(missing)}; pass a frame from "
            "siloguard.data.clean"
        )
    if isinstance(test_weeks, bool) or not isinstance(test_weeks, int) or test_weeks < 1:
        raise ConfigError(f"test_weeks must be a whole number >= 1, got {test_weeks!r}")
    dates = df["invoice_date"]
    if df.empty or dates.isna().all():
        raise DataError("no transactions to split; check the input file and the cleaning report")

    first, last = dates.min(), dates.max()
    end_date = last.normalize() + pd.Timedelta(days=1)
    if split_date is None:
        split = last.normalize() - pd.Timedelta(weeks=test_weeks)
    else:
        split = _as_timestamp(split_date)
    data_range = f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}"
    if split <= first or split > last:
        hint = (
            f"use fewer than {test_weeks} test weeks or pass a split date"
            if split_date is None
            else "choose a split date after the first and not after the last transaction"
        )
        raise DataError(
            f"split date {split:%Y-%m-%d %H:%M} is outside the data range {data_range}; {hint}"
        )

    before = (dates < split).to_numpy()
    train = df.loc[before].reset_index(drop=True)
    period = df.loc[~before]
    known = period["customer_id"].isin(train["customer_id"].unique()) & period[
        "stock_code"
    ].isin(train["stock_code"].unique())
    test = period.loc[known].reset_index(drop=True)
    if train.empty:
        raise DataError(
            f"no training rows before {split:%Y-%m-%d}; "
            f"choose a later split date within {data_range}"
        )
    if test.empty:
        raise DataError(
            f"no test rows from {split:%Y-%m-%d} for customers and items seen before it; "
            f"choose an earlier split date within {data_range} or use more test weeks"
        )
    return TemporalSplit(
        train=train,
        test=test,
        split_date=split,
        end_date=end_date,
        dropped_test_rows=int((~known).sum()),
    )
