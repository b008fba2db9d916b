"""Split cleaned transactions into stores (silos) by customer.

Every customer belongs to exactly one store. A customer's country is the country of
most of their rows; countries with enough customers become stores of their own, the
home country is split into several stores by a stable hash of the customer id, and the
remaining countries are pooled into ``international``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from siloguard.errors import ConfigError, DataError

__all__ = ["INTERNATIONAL", "Silo", "assign_stores", "customer_countries", "partition", "slug"]

INTERNATIONAL = "international"


def slug(text: str) -> str:
    """Lower-case ``text`` and join its alphanumeric runs with '-'.

    "United Kingdom" -> "united-kingdom"; text without letters or digits -> "unknown".
    """
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())) or "unknown"


def _stable_bucket(customer_id: int, buckets: int) -> int:
    """0-based bucket of a customer id; independent of PYTHONHASHSEED and platform."""
    digest = hashlib.blake2b(str(int(customer_id)).encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def _require(df: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"transactions lack column(s) {', '.join(missing)}; pass a frame from "
            "siloguard.data.clean"
        )
    if df["customer_id"].isna().any():
        raise DataError(
            "transactions contain rows without customer_id; run siloguard.data.clean first"
        )


def customer_countries(df: pd.DataFrame) -> pd.Series:
    """Country of most of each customer's rows (ties: alphabetically first), by customer_id."""
    _require(df, ("customer_id", "country"))
    counts = (
        df.groupby(["customer_id", "country"], observed=True, sort=False)
        .size()
        .rename("rows")
        .reset_index()
    )
    counts["customer_id"] = counts["customer_id"].astype("int64")
    counts = counts.sort_values(
        ["customer_id", "rows", "country"], ascending=[True, False, True], kind="stable"
    )
    first = counts.drop_duplicates("customer_id", keep="first")
    return pd.Series(
        first["country"].to_numpy(),
        index=pd.Index(first["customer_id"].to_numpy(), name="customer_id"),
        name="country",
    )


def assign_stores(
    df: pd.DataFrame,
    *,
    uk_stores: int = 4,
    min_customers: int = 30,
    home_country: str = "United Kingdom",
) -> pd.Series:
    """Store name of every customer, as a Series indexed by customer_id (sorted).

    Countries with at least ``min_customers`` customers are their own store (named by
    their slug). ``home_country`` is always kept and split into ``uk_stores`` stores
    ``<slug>-1`` .. ``<slug>-K`` by a stable hash of the customer id (just ``<slug>``
    when ``uk_stores`` is 1). All other customers go to ``international``.
    """
    if isinstance(uk_stores, bool) or not isinstance(uk_stores, int) or uk_stores < 1:
        raise ConfigError(f"uk_stores must be a whole number >= 1, got {uk_stores!r}")
    if isinstance(min_customers, bool) or not isinstance(min_customers, int) or min_customers < 1:
        raise ConfigError(f"min_customers must be a whole number >= 1, got {min_customers!r}")

    countries = customer_countries(df)
    per_country = countries.value_counts()
    own_store = {
        country: slug(country)
        for country, n in per_country.items()
        if n >= min_customers and country != home_country
    }
    stores = pd.Series(
        [own_store.get(c, INTERNATIONAL) for c in countries], index=countries.index, dtype="str"
    )

    home = (countries == home_country).to_numpy()
    home_slug = slug(home_country)
    if uk_stores == 1:
        stores[home] = home_slug
    else:
        buckets = np.fromiter(
            (_stable_bucket(cid, uk_stores) for cid in countries.index[home]),
            dtype=np.int64,
            count=int(home.sum()),
        )
        stores[home] = [f"{home_slug}-{b + 1}" for b in buckets]
    return stores.rename("store")


@dataclass(frozen=True, eq=False)
class Silo:
    """One store's transactions."""

    name: str
    frame: pd.DataFrame

    @property
    def customers(self) -> int:
        """Number of distinct customers in this store."""
        return int(self.frame["customer_id"].nunique())


def partition(df: pd.DataFrame, stores: pd.Series) -> list[Silo]:
    """Split ``df`` into one Silo per store (sorted by name), each with only its customers' rows."""
    _require(df, ("customer_id",))
    customer_ids = df["customer_id"].astype("int64")
    store_of_row = customer_ids.map(stores)
    unassigned = store_of_row.isna()
    if unassigned.any():
        n = int(customer_ids[unassigned].nunique())
        raise DataError(
            f"{n} customer(s) in the transactions have no store; compute the stores with "
            "assign_stores on the same transactions"
        )
    silos = []
    for name, frame in df.groupby(store_of_row.to_numpy(), sort=True):
        silos.append(Silo(name=str(name), frame=frame.reset_index(drop=True)))
    return silos
