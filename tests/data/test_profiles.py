"""Tests of siloguard.data.profiles: deterministic synthetic customer profiles."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from siloguard.data import generate_profiles
from siloguard.data.profiles import PROFILE_COLUMNS, _make_unique
from siloguard.errors import DataError

COUNTRIES = ["United Kingdom"] * 6 + ["Germany", "France", "EIRE", "Japan", "Greece", "Atlantis"]


def _customers(n: int) -> pd.Series:
    ids = range(12346, 12346 + n)
    return pd.Series([COUNTRIES[i % len(COUNTRIES)] for i in range(n)], index=list(ids))


def test_when_generated_then_one_row_per_customer_with_all_columns() -> None:
    profiles = generate_profiles(_customers(24))

    assert list(profiles.columns) == list(PROFILE_COLUMNS)
    assert len(profiles) == 24 and profiles["customer_id"].is_unique
    assert profiles["customer_id"].dtype == "int64"
    assert all(isinstance(d, date) for d in profiles["birth_date"])
    assert profiles["email"].str.fullmatch(r"[a-z0-9._]+@example\.(com|org|net)").all()
    assert not profiles[["name", "phone", "street_address", "city", "postcode"]].isna().any().any()


def test_when_country_known_then_matching_locale_else_en_us() -> None:
    profiles = generate_profiles(_customers(12)).set_index("country")["locale"]

    assert profiles["Germany"] == "de_DE"
    assert profiles["EIRE"] == "en_IE"
    assert profiles["Japan"] == "ja_JP"
    assert profiles["Atlantis"] == "en_US"
    assert (profiles["United Kingdom"] == "en_GB").all()


def test_when_same_seed_twice_then_identical_profiles() -> None:
    first, second = generate_profiles(_customers(50)), generate_profiles(_customers(50))

    pd.testing.assert_frame_equal(first, second)


def test_when_other_seed_then_different_profiles() -> None:
    a = generate_profiles(_customers(50), seed=0)
    b = generate_profiles(_customers(50), seed=1)

    assert (a["name"] != b["name"]).mean() > 0.5


def test_when_input_shuffled_then_same_profiles() -> None:
    customers = _customers(200)

    shuffled = customers.sample(frac=1.0, random_state=5)

    pd.testing.assert_frame_equal(generate_profiles(customers), generate_profiles(shuffled))


def test_when_subset_generated_then_each_profile_equals_full_run() -> None:
    customers = _customers(200)
    full = generate_profiles(customers, seed=7).set_index("customer_id")

    part = generate_profiles(customers.iloc[::7], seed=7).set_index("customer_id")

    pd.testing.assert_frame_equal(part, full.loc[part.index])


def test_when_frame_given_then_same_as_series() -> None:
    customers = _customers(30)
    frame = pd.DataFrame({"customer_id": customers.index, "country": customers.to_numpy()})

    pd.testing.assert_frame_equal(generate_profiles(customers), generate_profiles(frame))


def test_when_many_customers_then_emails_unique() -> None:
    profiles = generate_profiles(pd.Series("United Kingdom", index=range(1, 3001)))

    assert profiles["email"].is_unique


def test_when_emails_repeat_then_numbers_appended_without_new_clashes() -> None:
    emails = ["ann@example.com", "ann@example.com", "ann2@example.com", "ann@example.com"]

    assert _make_unique(emails) == [
        "ann@example.com",
        "ann3@example.com",
        "ann2@example.com",
        "ann4@example.com",
    ]


def test_when_customer_has_two_countries_then_data_error() -> None:
    frame = pd.DataFrame({"customer_id": [1, 1], "country": ["France", "Germany"]})

    with pytest.raises(DataError, match="more than one country"):
        generate_profiles(frame)


def test_when_customer_id_missing_then_data_error() -> None:
    frame = pd.DataFrame({"customer_id": pd.array([1, None], dtype="Int64"), "country": "France"})

    with pytest.raises(DataError, match="customer_id"):
        generate_profiles(frame)
