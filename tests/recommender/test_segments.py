"""RFM scores and segments on hand-built purchase histories."""

from __future__ import annotations

import pandas as pd
import pytest

from siloguard.errors import DataError
from siloguard.recommender.segments import SEGMENTS, rfm_table, segment_counts


def _purchases(spec: dict[str, list[tuple[str, float]]]) -> pd.DataFrame:
    """customer -> [(date, spend)], one invoice per purchase."""
    rows = []
    for customer, buys in spec.items():
        for k, (day, spend) in enumerate(buys):
            rows.append((customer, f"{customer}-{k}", pd.Timestamp(day), 1, spend))
    return pd.DataFrame(rows, columns=["customer_id", "invoice", "invoice_date", "quantity", "unit_price"])


def test_when_customers_differ_in_recency_and_frequency_then_scores_and_segments_follow_the_grid() -> None:
    # Ten customers: a frequent recent buyer, a frequent lapsed buyer, a one-off recent buyer...
    spec = {
        "champ": [("2011-01-01", 10), ("2011-02-01", 10), ("2011-03-01", 10), ("2011-03-30", 10), ("2011-03-31", 10)],
        "lapsed": [("2010-01-01", 50), ("2010-02-01", 50), ("2010-03-01", 50), ("2010-04-01", 50), ("2010-05-01", 50)],
        "newbie": [("2011-03-31", 5)],
        "gone": [("2010-01-02", 1)],
    }
    for k in range(6):  # middling customers to fill the quintiles
        spec[f"mid{k}"] = [("2010-09-01", 3), (f"2010-1{k % 3}-01", 3)]
    table = rfm_table(_purchases(spec)).set_index("customer_id")

    assert table.loc["champ", "recency_days"] == 1  # as of the day after the last purchase
    assert table.loc["champ", "frequency"] == 5
    assert table.loc["lapsed", "monetary"] == 250.0
    assert (table.loc["champ", "r"], table.loc["champ", "f"]) == (5, 5)
    assert table.loc["champ", "segment"] == "champions"
    assert table.loc["lapsed", "segment"] == "at_risk"
    assert table.loc["newbie", "segment"] == "new"
    assert table.loc["gone", "segment"] == "hibernating"
    assert table.loc["lapsed", "m"] == 5 and table.loc["gone", "m"] == 1
    counts = segment_counts(table.reset_index())
    assert list(counts) == list(SEGMENTS) and sum(counts.values()) == len(spec)


def test_when_an_as_of_date_is_given_then_recency_is_measured_from_it() -> None:
    table = rfm_table(_purchases({"a": [("2011-01-01", 1)]}), as_of=pd.Timestamp("2011-01-11"))
    assert table.loc[0, "recency_days"] == 10


def test_when_a_column_is_missing_then_the_error_names_it() -> None:
    with pytest.raises(DataError, match="unit_price"):
        rfm_table(_purchases({"a": [("2011-01-01", 1)]}).drop(columns="unit_price"))
