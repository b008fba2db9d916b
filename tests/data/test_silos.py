"""Tests of siloguard.data.silos: store assignment and partitioning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from siloguard.data import assign_stores, customer_countries, load_clean, partition, sample_path
from siloguard.errors import ConfigError, DataError


def _transactions(per_country: dict[str, int], rows_per_customer: int = 2) -> pd.DataFrame:
    """Cleaned-looking rows: customers numbered from 1000, ``rows_per_customer`` rows each."""
    records = []
    customer_id = 1000
    for country, customers in per_country.items():
        for _ in range(customers):
            for r in range(rows_per_customer):
                records.append((customer_id, country, f"S{r}"))
            customer_id += 1
    return pd.DataFrame(
        {
            "invoice": "1",
            "stock_code": [r[2] for r in records],
            "quantity": 1,
            "invoice_date": pd.Timestamp("2011-01-01"),
            "unit_price": 1.0,
            "customer_id": pd.Series([r[0] for r in records], dtype="int64"),
            "country": [r[1] for r in records],
        }
    )


COUNTS = {"United Kingdom": 60, "Germany": 35, "France": 30, "Spain": 5, "EIRE": 2}


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_clean(sample_path())[0]


def test_when_countries_have_enough_customers_then_they_get_own_stores() -> None:
    stores = assign_stores(_transactions(COUNTS))

    counts = stores.value_counts()
    assert set(counts.index) == {
        "germany", "france", "international",
        "united-kingdom-1", "united-kingdom-2", "united-kingdom-3", "united-kingdom-4",
    }  # fmt: skip
    assert counts["germany"] == 35 and counts["france"] == 30 and counts["international"] == 7
    assert stores.index.name == "customer_id" and stores.index.is_monotonic_increasing
    assert stores.index.dtype == "int64"


def test_when_uk_stores_is_one_then_single_home_store() -> None:
    stores = assign_stores(_transactions(COUNTS), uk_stores=1)

    assert (stores == "united-kingdom").sum() == 60


def test_when_min_customers_raised_then_country_pools_into_international() -> None:
    stores = assign_stores(_transactions(COUNTS), min_customers=31)

    assert "france" not in set(stores) and (stores == "international").sum() == 37


def test_when_customer_has_rows_in_two_countries_then_majority_then_alphabetical() -> None:
    df = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 2, 2],
            "country": ["Germany", "France", "Germany", "Spain", "France"],
        }
    )

    countries = customer_countries(df)

    assert countries.to_dict() == {1: "Germany", 2: "France"}


@pytest.mark.parametrize("kwargs", [{"uk_stores": 0}, {"min_customers": 0}, {"uk_stores": 1.5}])
def test_when_store_settings_invalid_then_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        assign_stores(_transactions(COUNTS), **kwargs)  # type: ignore[arg-type]


def test_when_customer_id_missing_then_data_error() -> None:
    df = pd.DataFrame({"customer_id": pd.array([1, None], dtype="Int64"), "country": "France"})

    with pytest.raises(DataError, match="clean"):
        assign_stores(df)


def test_when_home_customer_hashed_then_bucket_is_pinned() -> None:
    # blake2b of the decimal id, not hash(): these values must never change.
    df = pd.DataFrame({"customer_id": [12346, 12347, 12348, 12352], "country": "United Kingdom"})

    assert assign_stores(df).to_dict() == {
        12346: "united-kingdom-3",
        12347: "united-kingdom-4",
        12348: "united-kingdom-2",
        12352: "united-kingdom-1",
    }


def test_when_rows_shuffled_then_same_stores_and_silos(sample: pd.DataFrame) -> None:
    shuffled = sample.sample(frac=1.0, random_state=3).reset_index(drop=True)

    stores = assign_stores(sample)
    pd.testing.assert_series_equal(stores, assign_stores(shuffled))
    for a, b in zip(partition(sample, stores), partition(shuffled, stores)):
        assert a.name == b.name
        assert set(a.frame["customer_id"]) == set(b.frame["customer_id"])
        assert len(a.frame) == len(b.frame)


def test_when_run_in_processes_with_other_hash_seeds_then_same_stores(
    sample: pd.DataFrame,
) -> None:
    script = (
        "import json; from siloguard.data import assign_stores, load_clean, sample_path; "
        "s = assign_stores(load_clean(sample_path())[0]); "
        "print(json.dumps({str(k): v for k, v in s.items()}))"
    )
    expected = {str(k): v for k, v in assign_stores(sample).items()}
    for hash_seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(run.stdout) == expected


def test_when_partitioned_then_silos_disjoint_covering_and_sorted(sample: pd.DataFrame) -> None:
    stores = assign_stores(sample)

    silos = partition(sample, stores)

    names = [s.name for s in silos]
    assert names == sorted(names) == sorted(set(stores))
    seen: set[int] = set()
    for silo in silos:
        customers = set(silo.frame["customer_id"])
        assert not customers & seen
        seen |= customers
        assert (stores.loc[sorted(customers)] == silo.name).all()
        assert silo.customers == len(customers)
    assert seen == set(sample["customer_id"])
    assert sum(len(s.frame) for s in silos) == len(sample)


def test_when_sample_assigned_with_defaults_then_germany_and_france_are_stores(
    sample: pd.DataFrame,
) -> None:
    counts = assign_stores(sample).value_counts()

    assert counts["germany"] >= 30 and counts["france"] >= 30
    assert {f"united-kingdom-{i}" for i in range(1, 5)} <= set(counts.index)


def test_when_customer_has_no_store_then_partition_refuses() -> None:
    df = _transactions(COUNTS)
    stores = assign_stores(df).iloc[1:]

    with pytest.raises(DataError, match="1 customer"):
        partition(df, stores)
