"""A store site: everything one partner store owns, in one directory on the store's machine.

A :class:`StoreSite` is the one object a store process builds (once, from the site directory
and the store's environment) to reach its own state; it is the only code that opens the
store's transaction file, its database and its keys. Nothing of it is ever sent: the store
publishes a :class:`Publication` (product codes and descriptions, its date range, counts,
its declared country and law: no customer data) for the coordinator's catalogue.

Layout of a site (``siloguard store init STORE --site DIR --data FILE``)::

    DIR/site.json          the store's name, declared country and jurisdiction, contact, data file,
                       the currency of its prices
    DIR/data/              its transaction file (a copy, unless --in-place)
    DIR/siloguard.db       its database: consent registry, budget ledger, suppression list,
                           erasure journal, its own audit log (SQLite; or a URL, see below)
    DIR/keys/              its keys: master key, pseudonym secrets, per-subject data keys,
                           audit signing key (mode 0700 / 0600)
    DIR/private/           its customers' private embeddings
    DIR/publication.json   what it publishes to the coordinator

Where the store's settings come from, strongest first: the store's environment
(``SILOGUARD_DATABASE__URL``, ``SILOGUARD_KEYS__ROOT``, ...), then ``site.json`` (``database``),
then the site's own defaults above. A coordinator's run config never sets them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError
# Shared with the coordinator (what a store publishes) and every store tool: re-exported here.
from siloguard.runs import SITE_FILE, Publication, shelf_descriptions, site_settings

__all__ = ["Publication", "SITE_FILE", "StoreSite", "site_settings", "sites_under"]

PUBLICATION_FILE = "publication.json"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
_JURISDICTIONS = ("gdpr", "ccpa")


def _check_name(store: str) -> str:
    from siloguard.audit.events import store_id_ok

    if not _NAME.fullmatch(store) or not store_id_ok(store):
        raise ConfigError(
            f"store name {store!r}: use lowercase letters, digits and '-', starting with a letter, "
            "at most 63 characters (e.g. germany, uk-1, store-31782)"
        )
    return store


def sites_under(root: Path) -> dict[str, Path]:
    """The store sites laid out under a run on one machine (``ROOT/stores/<store>``), store -> directory."""
    base = Path(root) / "stores"
    return {d.name: d for d in sorted(base.iterdir()) if StoreSite.is_site(d)} if base.is_dir() else {}


class StoreSite:
    """One store's site, opened once per store process: its settings, data, database and keys."""

    def __init__(self, directory: Path, manifest: dict[str, Any], settings: Settings) -> None:
        self.directory = Path(directory).resolve()
        self.manifest = manifest
        self.settings = settings
        self.cleaning: Any = None  # the CleaningReport of the file, when the site was just made

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def is_site(cls, directory: Path) -> bool:
        return (Path(directory) / SITE_FILE).is_file()

    @classmethod
    def open(cls, directory: Path, base: Settings | None = None) -> StoreSite:
        """The site in ``directory``; ConfigError naming the fix if there is none."""
        directory = Path(directory)
        path = directory / SITE_FILE
        try:
            manifest = json.loads(path.read_text())
            _check_name(str(manifest["store"]))
            if manifest.get("jurisdiction") not in _JURISDICTIONS or not isinstance(manifest.get("data"), str):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(
                f"no store site at {directory} (its {SITE_FILE} is missing or damaged): "
                "create one with 'siloguard store init STORE --site DIR --data FILE'"
            ) from None
        return cls(directory, manifest, site_settings(directory, base, database=manifest.get("database")))

    @classmethod
    def init(
        cls,
        directory: Path,
        store: str,
        data: Path,
        *,
        country: str | None,
        jurisdiction: str = "gdpr",
        contact: str | None = None,
        database: str | None = None,
        consent: Path | None = None,
        consents: pd.DataFrame | None = None,
        in_place: bool = False,
        compliance_as_of: str | None = None,
        currency: str = "GBP",
        base: Settings | None = None,
    ) -> StoreSite:
        """Create the site: check the data, copy it in, make keys and database, import consent, publish.

        ``consent`` is a consent records file (``consents``: the same, already read) of this store.

        Everything is checked before anything is written; an existing site is refused.
        """
        from siloguard.data.loader import load_clean

        directory = Path(directory)
        _check_name(store)
        if jurisdiction not in _JURISDICTIONS:
            raise ConfigError(f"jurisdiction {jurisdiction!r}: use gdpr or ccpa (the law where the store operates)")
        if not re.fullmatch(r"[A-Z]{3}", str(currency)):
            raise ConfigError(f"currency {currency!r}: give the ISO 4217 code of the store's prices, e.g. GBP, EUR, USD")
        from siloguard.compliance.records import load_records

        adequacy = load_records().adequacy
        if country is not None and adequacy.declared(country) is None:
            raise ConfigError(
                f"unknown country {country!r}: give its English name as in the retail data (e.g. Germany, "
                "United Kingdom, USA) or its ISO code (DE, GB, US); the names known are in "
                "siloguard/policies/records/adequacy.yaml"
            )
        if cls.is_site(directory):
            raise ConfigError(f"{directory} is already the site of a store: use it, or choose another --site")
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise ConfigError(f"--site {directory} exists and is not an empty directory: choose a new directory for the site")
        data = Path(data)
        if not data.is_file():
            raise DataError(f"--data {data}: no such file; pass the store's transaction file (Online Retail CSV)")
        frame, report = load_clean(data)  # refuses a file that cannot be trained on, before anything is written
        if country is None:
            unknown = [v for v in frame["country"].dropna().astype(str).unique() if adequacy.codes(v) is None]
            if unknown:
                raise ConfigError(
                    f"the Country column of {data.name} holds {len(unknown)} value(s) that are not country names "
                    "(store codes?): declare where the store operates with --country (e.g. --country Germany)"
                )
        if consent is not None:
            from siloguard.policies.consent_io import read_consent_file

            consents = read_consent_file(consent, [store])
        if consents is not None:
            # The site keeps consent records of its own customers only (an empty store column
            # means "every store of the programme": each store takes its customers' part).
            from siloguard.privacy.pseudonyms import normalise_ids

            own = {c for c in normalise_ids(frame["customer_id"]) if c is not None}
            consents = consents[consents["store"].isin(["", store]) & consents["customer_id"].astype(str).isin(own)]
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if in_place:
            data_ref = str(data.resolve())
        else:
            (directory / "data").mkdir(exist_ok=True)
            target = directory / "data" / data.name
            shutil.copyfile(data, target)
            os.chmod(target, 0o600)
            data_ref = str(Path("data") / data.name)
        manifest: dict[str, Any] = {"store": store, "jurisdiction": jurisdiction, "data": data_ref,
                                    "created": datetime.now(UTC).isoformat(timespec="seconds")}
        if country is not None:
            manifest["country"] = country
        if contact is not None:
            manifest["contact"] = contact
        if database is not None:
            manifest["database"] = database
        if compliance_as_of is not None:  # "data": a historical extract's rows are aged on its own clock
            manifest["compliance_as_of"] = compliance_as_of
        manifest["currency"] = currency  # of the prices in its data: shown on its lists and reports
        from siloguard._files import write_atomic

        site = cls(directory, manifest, site_settings(directory, base, database=database))
        site.migrate()
        keys = site.keys(create=True)
        if consents is not None:
            from siloguard.policies.consent import ConsentRegistry
            from siloguard.policies.consent_io import import_consent

            registry = ConsentRegistry(site.settings.database.url)
            try:
                import_consent(registry, consents, {store: keys})
            finally:
                registry.close()
        site.audit_signing_key  # its own log's tree heads, witnessed by the coordinator  # noqa: B018
        write_atomic(directory / SITE_FILE, json.dumps(manifest, indent=2).encode(), mode=0o600)
        site.publish(frame)
        site.cleaning = report
        return site

    # ---- what the site holds ------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.manifest["store"])

    @property
    def jurisdiction(self) -> str:
        return str(self.manifest["jurisdiction"])

    @property
    def country(self) -> str | None:
        """The country the store declares it operates in (None: judged from its rows)."""
        value = self.manifest.get("country")
        return str(value) if value else None

    @property
    def contact(self) -> str | None:
        return self.manifest.get("contact")

    @property
    def data_path(self) -> Path:
        path = Path(self.manifest["data"])
        return path if path.is_absolute() else self.directory / path

    def silo(self) -> Path:
        path = self.data_path
        if not path.is_file():
            raise ConfigError(f"store {self.name!r}: its transaction file {path} is missing (site {self.directory})")
        return path

    def transactions(self) -> pd.DataFrame:
        """The store's cleaned transactions (every row, ungated: the store's own processes only)."""
        from siloguard.data.loader import load_clean

        return load_clean(self.silo())[0]

    def keys(self, *, create: bool = False):  # noqa: ANN201 - StoreKeys, imported lazily
        """The store's keys; with ``create``, made on first use (``store init``), else an error if absent."""
        from siloguard.privacy.keys import FileKeyStore, StoreKeys, existing_store_keys

        root = self.settings.keys.root
        if create:
            keys = StoreKeys(FileKeyStore(root), self.name)
            keys.init()
            return keys
        return existing_store_keys(root, self.name)

    def migrate(self) -> None:
        """Create or migrate the store's database (its own: consent, ledger, suppression, audit)."""
        from siloguard.storage.db import create_engine, upgrade_database

        engine = create_engine(self.settings.database.url)
        try:
            upgrade_database(engine)
        finally:
            engine.dispose()

    @cached_property
    def audit_signing_key(self) -> Path:
        """The store's audit signing key, created on first use (its log's tree heads)."""
        from siloguard.audit.heads import generate_keypair

        audit = self.settings.audit
        if not audit.signing_key.is_file():
            audit.signing_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            generate_keypair(audit.signing_key, audit.public_key)
        return audit.signing_key

    # ---- publishing -----------------------------------------------------------------------
    def publication(self, frame: pd.DataFrame | None = None) -> Publication:
        """Products, dates and counts of the store's data (no customer id, no row)."""
        frame = self.transactions() if frame is None else frame
        if frame.empty:
            raise DataError(f"store {self.name!r} has no usable transactions in {self.data_path}")
        days = frame["invoice_date"].dt.normalize()
        codes = frame["stock_code"].astype(str)
        first_sold = days.groupby(codes).min()
        descriptions = shelf_descriptions(frame)
        counts = {"rows": len(frame), "customers": int(frame["customer_id"].nunique())}
        try:
            counts["consented"] = self.consented_now(frame)
        except ConfigError:
            pass  # no keys yet: nobody's consent can have been recorded
        return Publication(
            store=self.name, jurisdiction=self.jurisdiction, country=self.country,
            first_day=str(days.min().date()), last_day=str(days.max().date()),
            products={str(k): str(v.date()) for k, v in first_sold.items()},
            descriptions=descriptions,
            counts=counts,
        )

    def publish(self, frame: pd.DataFrame | None = None) -> Path:
        """Write ``publication.json`` (what the store sends to the coordinator)."""
        from siloguard._files import write_atomic

        path = self.directory / PUBLICATION_FILE
        write_atomic(path, json.dumps(self.publication(frame).to_json(), indent=1).encode(), mode=0o644)
        return path

    def consented_now(self, frame: pd.DataFrame | None = None) -> int:
        """Customers of the store the gate would let train now (a live training consent)."""
        from siloguard.policies.consent import ConsentRegistry, StoreConsent
        from siloguard.runs import TRAINING_PURPOSE

        frame = self.transactions() if frame is None else frame
        keys = self.keys()  # ConfigError when the store has no keys
        ids = {str(c) for c in frame["customer_id"].unique()}
        registry = ConsentRegistry(self.settings.database.url)
        try:
            return len(StoreConsent(registry, keys).subjects_with_basis(TRAINING_PURPOSE, ids, datetime.now(UTC)))
        finally:
            registry.close()

    def __repr__(self) -> str:
        return f"StoreSite({self.name!r}, {str(self.directory)!r})"
