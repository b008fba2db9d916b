"""Synthetic customer profiles (name, contact, address, birth date) for the demo.

The Online Retail data has no personal data beyond a customer number and a country.
To exercise PII detection and anonymization, each customer gets a fake profile in a
locale fitting their country. A profile depends only on ``(seed, customer_id, country)``
and the Faker version, never on which other customers are generated alongside it,
except for the rare numeric suffix that keeps emails unique.
Emails use the reserved ``example.*`` domains so they can never reach a real mailbox.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from functools import lru_cache

import pandas as pd
from faker import Faker
from faker.decode import unidecode
from faker.generator import Generator

from siloguard.errors import DataError

__all__ = [
    "COUNTRY_LOCALES",
    "DEFAULT_LOCALE",
    "PROFILE_COLUMNS",
    "generate_profiles",
    "locale_for",
]

DEFAULT_LOCALE = "en_US"

#: Faker locale per Online Retail country name; other countries use DEFAULT_LOCALE.
COUNTRY_LOCALES: dict[str, str] = {
    "United Kingdom": "en_GB",
    "Germany": "de_DE",
    "France": "fr_FR",
    "EIRE": "en_IE",
    "Spain": "es_ES",
    "Netherlands": "nl_NL",
    "Belgium": "nl_BE",
    "Switzerland": "de_CH",
    "Portugal": "pt_PT",
    "Italy": "it_IT",
    "Norway": "no_NO",
    "Australia": "en_AU",
    "Finland": "fi_FI",
    "Sweden": "sv_SE",
    "Denmark": "da_DK",
    "Japan": "ja_JP",
    "Poland": "pl_PL",
    "Austria": "de_AT",
    "USA": "en_US",
    "Canada": "en_CA",
    "Greece": "el_GR",
    "Israel": "he_IL",
    "Czech Republic": "cs_CZ",
    "Brazil": "pt_BR",
}

PROFILE_COLUMNS = (
    "customer_id",
    "name",
    "email",
    "phone",
    "street_address",
    "city",
    "postcode",
    "birth_date",
    "country",
    "locale",
)

_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
_BIRTH_FIRST = date(1935, 1, 1).toordinal()  # fixed range: results must not depend on today
_BIRTH_LAST = date(2005, 12, 31).toordinal()
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def locale_for(country: str) -> str:
    """Faker locale used for a country name."""
    return COUNTRY_LOCALES.get(country, DEFAULT_LOCALE)


@lru_cache(maxsize=None)
def _generator(locale: str) -> Generator:
    """One Faker generator per locale, re-seeded for every customer.

    Names are drawn uniformly rather than by frequency: weighted draws recompute their
    weights on every call and are about five times slower.
    """
    return Faker(locale, use_weighting=False).factories[0]


def _customer_seed(seed: int, customer_id: int) -> int:
    key = f"{seed}:{customer_id}".encode("ascii")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def _ascii_token(text: str) -> str:
    return _NON_ALNUM.sub("", unidecode(text).lower())


def _email_local(g: Generator, first: str, last: str) -> str:
    f, l_ = _ascii_token(first) or "user", _ascii_token(last) or "mail"
    style = g.random.randrange(6)
    if style == 0:
        return f"{f}.{l_}"
    if style == 1:
        return f"{f}{l_}"
    if style == 2:
        return f"{f}_{l_}"
    if style == 3:
        return f"{f[0]}{l_}"
    if style == 4:
        return f"{l_}.{f}"
    return f"{f}.{l_}{g.random.randrange(1, 100)}"


def _profile(g: Generator, locale: str) -> tuple[str, str, str, str, str, str, date]:
    """Name, email, phone, street, city, postcode, birth date from a freshly seeded generator."""
    if locale == "ja_JP":  # family name first; email from the matching romanized names
        first, _, ascii_first = g.first_name_pair()
        last, _, ascii_last = g.last_name_pair()
        name = f"{last} {first}"
    else:
        first, last = g.first_name(), g.last_name()
        ascii_first, ascii_last = first, last
        name = f"{first} {last}"
    local = _email_local(g, ascii_first, ascii_last)
    email = f"{local}@{_EMAIL_DOMAINS[g.random.randrange(len(_EMAIL_DOMAINS))]}"
    phone = g.phone_number()
    street = g.street_address().replace("\n", ", ")
    city = g.city()
    postcode = g.postcode()
    birth = date.fromordinal(g.random.randint(_BIRTH_FIRST, _BIRTH_LAST))
    return name, email, phone, street, city, postcode, birth


def _customer_table(customers: pd.DataFrame | pd.Series) -> pd.DataFrame:
    """Normalize the input to a frame of unique (customer_id int64, country str), sorted."""
    if isinstance(customers, pd.Series):
        table = pd.DataFrame(
            {"customer_id": customers.index.to_numpy(), "country": customers.to_numpy()}
        )
    elif isinstance(customers, pd.DataFrame):
        missing = [c for c in ("customer_id", "country") if c not in customers.columns]
        if missing:
            raise DataError(
                f"customer table lacks column(s) {', '.join(missing)}; pass a frame with "
                "customer_id and country, or a Series of countries indexed by customer_id"
            )
        table = customers[["customer_id", "country"]].reset_index(drop=True)
    else:
        raise DataError(
            f"customers must be a pandas Series or DataFrame, got {type(customers).__name__}"
        )
    ids = pd.to_numeric(pd.Series(table["customer_id"]), errors="coerce")
    if ids.isna().any() or (ids != ids.round()).any():
        raise DataError(
            "customer_id holds missing or non-integer values; clean the transactions first"
        )
    table = pd.DataFrame(
        {
            "customer_id": ids.astype("int64"),
            "country": table["country"].fillna("").astype(str).str.strip(),
        }
    ).drop_duplicates()
    if table["customer_id"].duplicated().any():
        raise DataError(
            "some customers have more than one country; pass one country per customer, "
            "e.g. siloguard.data.silos.customer_countries(transactions)"
        )
    return table.sort_values("customer_id", kind="stable").reset_index(drop=True)


def _make_unique(emails: list[str]) -> list[str]:
    """Append 2, 3, ... to the local part of repeated emails (first occurrence unchanged)."""
    used: set[str] = set(emails)
    seen: set[str] = set()
    out: list[str] = []
    for email in emails:
        if email not in seen:
            seen.add(email)
            out.append(email)
            continue
        local, domain = email.split("@", 1)
        n = 2
        while f"{local}{n}@{domain}" in used:
            n += 1
        candidate = f"{local}{n}@{domain}"
        used.add(candidate)
        seen.add(candidate)
        out.append(candidate)
    return out


def generate_profiles(customers: pd.DataFrame | pd.Series, *, seed: int = 0) -> pd.DataFrame:
    """One synthetic profile per customer, sorted by customer_id.

    ``customers`` maps customer_id to country: a Series of countries indexed by
    customer_id, or a frame with columns customer_id and country. The same seed and
    customer always give the same profile, whatever the order or set of other customers;
    emails are unique in the output (a repeat gets a number appended, deciding by
    ascending customer_id).
    """
    table = _customer_table(customers)
    locales = [locale_for(c) for c in table["country"]]
    columns: list[list[object]] = [[] for _ in range(7)]
    for customer_id, locale in zip(table["customer_id"].tolist(), locales):
        g = _generator(locale)
        g.seed_instance(_customer_seed(seed, customer_id))
        for column, value in zip(columns, _profile(g, locale)):
            column.append(value)
    names, emails, phones, streets, cities, postcodes, births = columns
    out = pd.DataFrame(
        {
            "customer_id": table["customer_id"].astype("int64"),
            "name": pd.Series(names, dtype="str"),
            "email": pd.Series(_make_unique([str(e) for e in emails]), dtype="str"),
            "phone": pd.Series(phones, dtype="str"),
            "street_address": pd.Series(streets, dtype="str"),
            "city": pd.Series(cities, dtype="str"),
            "postcode": pd.Series(postcodes, dtype="str"),
            "birth_date": pd.Series(births, dtype="object"),
            "country": table["country"],
            "locale": pd.Series(locales, dtype="str"),
        }
    )
    return out[list(PROFILE_COLUMNS)]
