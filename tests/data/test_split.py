"""Tests of siloguard.data.split: the temporal train/test split."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from siloguard.data import load_clean, temporal_split
from siloguard.errors import ConfigError, DataError

SHARED_FILE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "online_retail"
    / "online_retail_2010-12_2011-10.csv.gz"
)


def _frame(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    """Rows of (date, customer_id, stock_code)."""
    return pd.DataFrame(
        {
            "invoice": "1",
            "stock_code": [r[2] for r in rows],
            "quantity": 1,
            "invoice_date": pd.to_datetime([r[0] for r in rows]).astype("datetime64[ns]"),
            "unit_price": 1.0,
            "customer_id": pd.Series([r[1] for r in rows], dtype="int64"),
            "country": "United Kingdom",
        }
    )


ROWS = [
    ("2011-01-03 10:00", 1, "A"),
    ("2011-01-10 10:00", 2, "B"),
    ("2011-01-20 10:00", 1, "B"),
    ("2011-02-01 09:00", 1, "A"),  # test: known customer, known item
    ("2011-02-02 09:00", 2, "A"),  # test: known customer, known item
    ("2011-02-03 09:00", 3, "A"),  # dropped: unknown customer
    ("2011-02-04 09:00", 1, "Z"),  # dropped: unknown item
    ("2011-02-07 18:30", 2, "B"),  # test, last day (a Monday)
]


def test_when_no_split_date_then_test_is_last_weeks_up_to_last_day() -> None:
    split = temporal_split(_frame(ROWS), test_weeks=1)

    assert split.split_date == pd.Timestamp("2011-01-31")
    assert split.end_date == pd.Timestamp("2011-02-08")
    assert len(split.train) == 3


def test_when_split_then_test_rows_only_for_known_customers_and_items() -> None:
    split = temporal_split(_frame(ROWS), "2011-02-01")

    assert len(split.train) == 3 and len(split.test) == 3
    assert split.dropped_test_rows == 2
    assert set(split.test["customer_id"]) <= set(split.train["customer_id"])
    assert set(split.test["stock_code"]) <= set(split.train["stock_code"])
    assert (split.train["invoice_date"] < split.split_date).all()
    assert (split.test["invoice_date"] >= split.split_date).all()


@pytest.mark.parametrize(
    "when", ["2011-02-01", date(2011, 2, 1), pd.Timestamp("2011-02-01"), " 2011-02-01 "]
)
def test_when_split_date_given_as_str_date_or_timestamp_then_same_split(when: object) -> None:
    split = temporal_split(_frame(ROWS), when)  # type: ignore[arg-type]

    assert split.split_date == pd.Timestamp("2011-02-01")


@pytest.mark.parametrize("when", ["2010-06-01", "2011-01-03 10:00", "2011-03-01"])
def test_when_split_date_outside_data_then_data_error(when: str) -> None:
    with pytest.raises(DataError, match="outside the data range"):
        temporal_split(_frame(ROWS), when)


def test_when_split_date_string_malformed_then_config_error() -> None:
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        temporal_split(_frame(ROWS), "next tuesday")


def test_when_no_test_row_is_known_then_data_error() -> None:
    rows = [("2011-01-03", 1, "A"), ("2011-01-20", 2, "B"), ("2011-02-01", 3, "C")]

    with pytest.raises(DataError, match="no test rows"):
        temporal_split(_frame(rows), "2011-01-25")


def test_when_default_test_weeks_cover_all_data_then_data_error_suggests_fewer() -> None:
    with pytest.raises(DataError, match="fewer than 10 test weeks"):
        temporal_split(_frame(ROWS), test_weeks=10)


def test_when_test_weeks_not_positive_then_config_error() -> None:
    with pytest.raises(ConfigError, match="test_weeks"):
        temporal_split(_frame(ROWS), test_weeks=0)


def test_when_frame_empty_then_data_error() -> None:
    with pytest.raises(DataError, match="no transactions"):
        temporal_split(_frame(ROWS).iloc[0:0])


def test_when_shared_file_split_by_default_then_split_is_2011_10_03() -> None:
    if not SHARED_FILE.is_file():
        pytest.skip(f"shared Online Retail file not found at {SHARED_FILE}")
    df, _ = load_clean(SHARED_FILE)

    split = temporal_split(df)

    assert split.split_date == pd.Timestamp("2011-10-03")
    assert split.end_date == pd.Timestamp("2011-11-01")
    assert len(split.test) > 0 and split.dropped_test_rows > 0
    assert len(split.train) + len(split.test) + split.dropped_test_rows == len(df)
