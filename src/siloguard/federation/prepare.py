"""Prepare a run: validate the input, cut it into the stores' silos, write them out.

``prepare_run`` reads and validates the input completely in memory, and only then writes
the stores' silos (each an Online Retail file of its own, as a partner store would hold),
the public product catalogue and ``run.json`` into the work directory, and records the
consents the stores collected. Both ways of running a federation use it: the simulation
(:mod:`siloguard.federation.runner`) before it starts, and the ServerApp under ``flwr run``
(:mod:`siloguard.federation.app`) when nothing has prepared the work directory yet.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from siloguard.config import Settings
from siloguard.data.loader import RAW_COLUMNS, CleaningReport, load_clean, sample_consent_path, sample_path
from siloguard.data.silos import assign_stores, partition
from siloguard.data.split import temporal_split
from siloguard.recommender.features import Catalogue
from siloguard.runs import TRAINING_PURPOSE, save_catalogue

__all__ = ["PreparedFederation", "PreparedRun", "prepare_federation", "prepare_run"]


@dataclass(frozen=True)
class PreparedRun:
    stores: dict[str, Path]
    customers: dict[str, int]
    catalogue: Path
    items: int
    split_date: pd.Timestamp
    end_date: pd.Timestamp
    cleaning: CleaningReport
    source: Path
    consented: dict[str, int]  # customers per store the gate lets train now (consent recorded)


def _to_raw(frame: pd.DataFrame) -> pd.DataFrame:
    raw = frame[list(RAW_COLUMNS.values())].copy()
    raw["invoice_date"] = raw["invoice_date"].dt.strftime("%Y-%m-%d %H:%M:%S")
    return raw.rename(columns={v: k for k, v in RAW_COLUMNS.items()})


def _without_erased(settings: Settings, silos: list) -> list:
    """Each store's silo without the customers that store erased (its suppression list).

    Cutting the silos again from the same source must not bring an erased customer back.
    """
    from siloguard.clients.gating import store_suppression
    from siloguard.data.silos import Silo

    out = []
    for silo in silos:
        frame, dropped = store_suppression(settings, silo.name).drop_suppressed(silo.frame)
        if dropped:
            logging.getLogger(__name__).info("store %s: %d row(s) of erased customers left out", silo.name, dropped)
        out.append(Silo(silo.name, frame) if dropped else silo)
    return out


def prepare_run(settings: Settings) -> PreparedRun:
    """Validate the input, cut it into stores and write them under ``work_dir``.

    Every check runs before anything is written: a bad file leaves the work
    directory untouched.
    """
    source = settings.data.path or sample_path()
    frame, report = load_clean(source)
    split = temporal_split(frame, settings.data.split_date, settings.data.test_weeks)
    stores = assign_stores(
        frame, uk_stores=settings.data.uk_stores, min_customers=settings.data.min_store_customers
    )
    silos = partition(frame, stores)
    catalogue = Catalogue.from_frame(split.train)
    consent_file = settings.data.consent or (sample_consent_path() if settings.data.path is None else None)
    consents = None
    if consent_file is not None:
        from siloguard.policies.consent_io import read_consent_file

        consents = read_consent_file(consent_file, [s.name for s in silos])

    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True)  # (the run's database may live in it)
    silos = _without_erased(settings, silos)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=work))
    try:
        (staging / "stores").mkdir()
        paths: dict[str, Path] = {}
        for silo in silos:
            name = f"{silo.name}.csv"
            _to_raw(silo.frame).to_csv(staging / "stores" / name, index=False)
            paths[silo.name] = (work / "stores" / name).resolve()
        # Product descriptions as each store would publish them (products 3+ of its customers
        # bought), the first store's in name order: the public features of the shared model.
        from siloguard.runs import shelf_descriptions

        shelf: dict[str, str] = {}
        for silo in sorted(silos, key=lambda s: s.name):
            for code, text in shelf_descriptions(silo.frame).items():
                shelf.setdefault(code, text)
        save_catalogue(catalogue, staging / "catalogue.json", shelf)
        from siloguard.runs import RunManifest

        run = RunManifest(
            directory=work.resolve(),
            stores=paths,
            catalogue=(work / "catalogue.json").resolve(),
            split_date=str(split.split_date.date()),
            end_date=str(split.end_date.date()),
            source=str(Path(source).name),
            # The embedded sample is historical (2010-2011): `siloguard check --run` measures
            # the age of its rows on the data's own clock, not today's (docs/COMPLIANCE.md).
            compliance_as_of="data" if settings.data.path is None else None,
        )
        (staging / "run.json").write_text(json.dumps(run.to_json(), indent=2))
        for entry in ("stores", "catalogue.json", "run.json"):
            target = work / entry
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    consented = _record_consent(settings, silos, consents)
    return PreparedRun(
        stores=paths,
        customers={s.name: int(s.frame["customer_id"].nunique()) for s in silos},
        catalogue=work / "catalogue.json",
        items=catalogue.size,
        split_date=split.split_date,
        end_date=split.end_date,
        cleaning=report,
        source=Path(source),
        consented=consented,
    )


def _record_consent(settings: Settings, silos: list, consents: pd.DataFrame | None) -> dict[str, int]:
    """Create the stores' keys, import the consent records, count who may train now."""
    from datetime import UTC, datetime

    from siloguard.clients.gating import store_consent, store_keys
    from siloguard.policies.consent import ConsentRegistry
    from siloguard.policies.consent_io import import_consent

    keys = {silo.name: store_keys(settings, silo.name) for silo in silos}
    if consents is not None:
        registry = ConsentRegistry(settings.database.url)
        try:
            import_consent(registry, consents, keys)
        finally:
            registry.close()
    now = datetime.now(UTC)
    return {
        silo.name: len(
            store_consent(settings, silo.name).subjects_with_basis(
                TRAINING_PURPOSE, {str(c) for c in silo.frame["customer_id"].unique()}, now
            )
        )
        for silo in silos
    }


@dataclass(frozen=True)
class PreparedFederation:
    """A run of store sites, as the coordinator prepared it from the stores' publications."""

    directory: Path  # the coordinator's work directory
    stores: tuple[str, ...]
    catalogue: Path
    items: int
    split_date: pd.Timestamp
    end_date: pd.Timestamp
    publications: dict[str, object]  # store -> Publication (products, dates, counts)

    @property
    def consented(self) -> dict[str, int]:
        """Customers per store with a live training consent when the store published (its count)."""
        return {k: int(p.counts.get("consented", 0)) for k, p in self.publications.items()}  # type: ignore[attr-defined]

    @property
    def customers(self) -> dict[str, int]:
        return {k: int(p.counts.get("customers", 0)) for k, p in self.publications.items()}  # type: ignore[attr-defined]


def prepare_federation(
    settings: Settings,
    publications: list,
    *,
    sites: dict[str, Path] | None = None,
    source: str | None = None,
    compliance_as_of: str | None = None,
) -> PreparedFederation:
    """The coordinator's part of a run: catalogue, split dates and ``run.json`` from what stores publish.

    ``publications`` are the stores' :class:`~siloguard.clients.site.Publication` (product codes
    and descriptions, first sale day per product, first and last invoice day, counts, declared
    country and law): the coordinator never opens a store's file, database or key. The
    catalogue is every product some store sold before the split, in code order, exactly the
    products a single file cut into these stores would give. ``sites`` (one machine only) tells
    the in-process simulation where each store's site is.
    """
    from siloguard.errors import ConfigError, DataError
    from siloguard.runs import RunManifest

    if not publications:
        raise ConfigError("no store publications: each store runs 'siloguard store init' and sends its publication.json")
    by_store = {}
    for pub in publications:
        if pub.store in by_store:
            raise ConfigError(f"two publications of store {pub.store!r}: keep the newest one")
        by_store[pub.store] = pub
    first = min(pd.Timestamp(p.first_day) for p in publications)
    last = max(pd.Timestamp(p.last_day) for p in publications)
    end = last + pd.Timedelta(days=1)
    data = settings.data
    split = pd.Timestamp(data.split_date) if data.split_date is not None else last - pd.Timedelta(weeks=data.test_weeks)
    if split <= first or split > last:
        raise DataError(
            f"split date {split:%Y-%m-%d} is outside the stores' data ({first:%Y-%m-%d} to {last:%Y-%m-%d}): "
            "pass a split date inside it, or fewer test weeks"
        )
    codes = sorted({code for p in publications for code, day in p.products.items() if pd.Timestamp(day) < split})
    if not codes:
        raise DataError(f"no store sold any product before the split date {split:%Y-%m-%d}: pass a later split date")
    work = settings.work_dir
    work.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=work))
    try:
        # Product descriptions as the stores publish them (products 3+ of their customers bought),
        # so a store can describe a product it never sold; the first store's in name order wins.
        shelf: dict[str, str] = {}
        for pub in sorted(publications, key=lambda p: p.store):
            for code, text in pub.descriptions.items():
                shelf.setdefault(code, text)
        save_catalogue(Catalogue(tuple(codes)), staging / "catalogue.json", shelf)
        run = RunManifest(
            directory=work.resolve(),
            stores={},
            members=tuple(sorted(by_store)),
            sites={k: Path(v).resolve() for k, v in (sites or {}).items()},
            catalogue=(work / "catalogue.json").resolve(),
            split_date=str(split.date()),
            end_date=str(end.date()),
            source=source,
            jurisdictions={k: p.jurisdiction for k, p in sorted(by_store.items())},
            compliance_as_of=compliance_as_of,
        )
        (staging / "run.json").write_text(json.dumps(run.to_json(), indent=2))
        for entry in ("catalogue.json", "run.json"):
            os.replace(staging / entry, work / entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PreparedFederation(
        directory=work, stores=tuple(sorted(by_store)), catalogue=work / "catalogue.json", items=len(codes),
        split_date=split, end_date=end, publications=dict(sorted(by_store.items())),
    )
