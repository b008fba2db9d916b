"""Shared fixtures: a tiny Online Retail file with three country stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from siloguard.config import Settings
from siloguard.privacy.keys import FileKeyStore, StoreKeys
from siloguard.privacy.masking import Masker

COUNTRIES = ("United Kingdom", "Germany", "France")


def write_tiny_retail(path: Path, *, customers_per_country: int = 12, items: int = 30, seed: int = 0) -> Path:
    """Customers with favourite items they reorder, over Jan-Apr 2011."""
    rng = np.random.default_rng(seed)
    rows = []
    invoice = 500000
    start = pd.Timestamp("2011-01-03 09:00")
    for c_idx, country in enumerate(COUNTRIES):
        for k in range(customers_per_country):
            customer = 12000 + 100 * c_idx + k
            favourites = rng.choice(items, 5, replace=False)
            for visit in range(rng.integers(4, 9)):
                invoice += 1
                when = start + pd.Timedelta(days=int(rng.integers(0, 115)), hours=int(rng.integers(0, 8)))
                basket = np.unique(np.concatenate([rng.choice(favourites, 3), rng.integers(0, items, 2)]))
                for item in basket:
                    rows.append(
                        (str(invoice), f"SKU{item:03d}", f"PRODUCT {item}", int(rng.integers(1, 6)),
                         when.strftime("%Y-%m-%d %H:%M:%S"), 1.25, f"{customer}.0", country)
                    )
    frame = pd.DataFrame(
        rows,
        columns=["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"],
    )
    frame.to_csv(path, index=False)
    return path


def write_consent(path: Path, customer_ids, *, purpose: str = "personalize.profiling", event: str = "grant",
                  at: str = "2010-12-01T09:00:00+00:00", store: str = "") -> Path:
    """A consent records file: one ``event`` for ``purpose`` per customer."""
    pd.DataFrame(
        {
            "customer_id": [str(c) for c in customer_ids],
            "store": store,
            "purpose": purpose,
            "event": event,
            "source": "store",
            "notice_version": "test-1",
            "at": at,
        }
    ).to_csv(path, index=False)
    return path


def tiny_customers(path: Path) -> list[int]:
    return sorted({int(float(c)) for c in pd.read_csv(path)["CustomerID"]})


@pytest.fixture
def tiny_retail(tmp_path: Path) -> Path:
    return write_tiny_retail(tmp_path / "tiny.csv")


@pytest.fixture
def tiny_consent(tmp_path: Path, tiny_retail: Path) -> Path:
    """Every tiny customer granted personalize.profiling in store before their first purchase."""
    return write_consent(tmp_path / "consent.csv", tiny_customers(tiny_retail))


@pytest.fixture
def tiny_settings(tmp_path: Path, tiny_retail: Path, tiny_consent: Path) -> Settings:
    return Settings.build(
        work_dir=tmp_path / "work",
        keys={"root": tmp_path / "store-keys"},
        data={"path": tiny_retail, "consent": tiny_consent, "uk_stores": 1, "min_store_customers": 5, "test_weeks": 3},
        model={"dim": 8, "hidden": 4, "cutoffs": 2, "batch_size": 16},
        federation={"rounds": 2, "min_stores": 3},
        database={"url": f"sqlite:///{tmp_path / 'siloguard.db'}"},
        privacy={"enabled": False},
    )


@pytest.fixture
def tiny_dp_settings(tiny_settings: Settings) -> Settings:
    return tiny_settings.with_overrides(privacy={"enabled": True, "sample_rate": 0.25, "epsilon_cap": 8.0})


# Keys and a masker in temporary directories (gate and privacy tests); the spaCy pipeline is made once per session.

@pytest.fixture(scope="session")
def nlp_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nlp-cache")


@pytest.fixture
def keystore(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys")


@pytest.fixture
def store_keys(keystore: FileKeyStore) -> StoreKeys:
    keys = StoreKeys(keystore, "united-kingdom-1")
    keys.init()
    return keys


@pytest.fixture
def masker(store_keys: StoreKeys, nlp_cache: Path) -> Masker:
    return Masker.for_store(store_keys, cache_dir=nlp_cache)
