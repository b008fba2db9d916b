"""What the rules run against: data maps, records, the stores' rows, the database, the clocks.

Built once per ``siloguard check`` or pre-flight from the typed settings. Expensive inputs
(the stores' rows, the database engine, the consent registry) are loaded on first use, so
``--only`` a rule that reads the data maps touches neither the data nor the database.

The stores are the prepared run's (``work_dir/run.json`` and its silo files) when there is
one; otherwise they are cut in memory from the configured data (``data.path`` or the
embedded sample) exactly as a run would cut them, and nothing is written.

Two clocks (see docs/COMPLIANCE.md, "Which clock"):

- :attr:`Context.now` is the wall clock (UTC): consent, request deadlines, DPIA dates and
  transfer mechanisms are judged now, because they are facts of today;
- :meth:`Context.data_clock` is ``compliance.as_of``: the time at which the *age* of the
  stores' rows is measured for storage limitation and retention enforcement. ``None`` means
  now; ``"data"`` means the data's own clock, the latest invoice time in the stores (for
  historical extracts such as the embedded 2010-2011 sample); a datetime is used as given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from siloguard.compliance.records import Activity, Records, load_records
from siloguard.config import Settings
from siloguard.errors import DataError
from siloguard.policies.datamap import DataMap, load_datamaps

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from siloguard.policies.consent import ConsentRegistry, StoreConsent

__all__ = ["STORE_DATASET", "TRAINING_PURPOSE", "Context", "StoreRows"]

#: The data map of the rows in a store's silo file (the Online Retail transactions).
STORE_DATASET = "transactions"
#: What the federation processes the stores' data for (the purpose of its audit events).
TRAINING_PURPOSE = "personalize.profiling"


@dataclass(frozen=True)
class StoreRows:
    """One store's transactions (cleaned loader columns) and where they live."""

    name: str
    frame: pd.DataFrame
    path: Path | None  # the silo file, or None when cut in memory from the configured data
    country: str | None = None  # the country the store declares (its site); None: judged from the rows

    @property
    def customer_ids(self) -> list[str]:
        from siloguard.privacy.pseudonyms import normalise_ids

        return sorted({c for c in normalise_ids(self.frame["customer_id"]) if c is not None})


class Context:
    """Inputs of one evaluation of the rules."""

    def __init__(
        self,
        settings: Settings,
        *,
        now: datetime | None = None,
        datamaps: dict[str, DataMap] | None = None,
        records: Records | None = None,
        engine: Engine | None = None,
        stores: dict[str, StoreRows] | None = None,
    ) -> None:
        self.settings = settings
        if stores is not None:  # a store's own checks on its site (siloguard.clients.site)
            self.__dict__["stores"] = stores
        self.now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        compliance = settings.compliance
        self.datamaps = datamaps if datamaps is not None else (
            load_datamaps(compliance.datamaps) if compliance.datamaps is not None else load_datamaps()
        )
        self.records = records if records is not None else load_records(compliance.records)
        # A given engine is used as it is (not migrated, not disposed): tests and callers that
        # hold their own database.
        self._engine: Engine | None = engine
        self._owns_engine = engine is None
        self._registry: ConsentRegistry | None = None

    # ---- activities ---------------------------------------------------------------
    def activities(self, scope: str) -> list[Activity]:
        """The activities a scope evaluates: all for ``check``, the federation's for ``training``."""
        acts = list(self.records.activities.values())
        return [a for a in acts if a.federation_training] if scope == "training" else acts

    def flows(self, activity: Activity) -> Iterator[tuple[str, DataMap | None, tuple[str, ...], str]]:
        """(dataset, its data map or None, columns read, purpose) for each dataset and purpose."""
        for dataset, columns in activity.datasets.items():
            for purpose in activity.purposes:
                yield dataset, self.datamaps.get(dataset), columns, purpose

    # ---- stores --------------------------------------------------------------------
    @cached_property
    def stores(self) -> dict[str, StoreRows]:
        from siloguard.runs import SITE_FILE

        if (self.settings.work_dir / SITE_FILE).is_file():  # a store's own check, on its site
            return self._site_stores()
        run = self.settings.work_dir / "run.json"
        if run.is_file():
            return self._prepared_stores(run)
        return self._stores_in_memory()

    def _site_stores(self) -> dict[str, StoreRows]:
        from siloguard.data.loader import load_clean
        from siloguard.runs import site_info

        info = site_info(self.settings.work_dir)
        frame, _ = load_clean(info["data"])
        return {info["store"]: StoreRows(info["store"], frame, info["data"], info["country"])}

    def _prepared_stores(self, run: Path) -> dict[str, StoreRows]:
        from siloguard.data.loader import load_clean

        from siloguard.runs import RunManifest

        # A run of store sites names no silo: the coordinator reads no store's rows, and each
        # store judges its own on its site (the ClientApp's pre-flight, ``siloguard check --site``).
        paths = RunManifest.read(run.parent).stores
        out = {}
        for name, path in sorted(paths.items()):
            frame, _ = load_clean(path)
            out[name] = StoreRows(name, frame, path)
        return out

    def _stores_in_memory(self) -> dict[str, StoreRows]:
        from siloguard.data.loader import load_clean, sample_path
        from siloguard.data.silos import assign_stores, partition

        data = self.settings.data
        frame, _ = load_clean(data.path or sample_path())
        stores = assign_stores(frame, uk_stores=data.uk_stores, min_customers=data.min_store_customers)
        return {s.name: StoreRows(s.name, s.frame, None) for s in partition(frame, stores)}

    def data_clock(self) -> datetime:
        """When the age of rows is measured (``compliance.as_of``); see the module docstring."""
        as_of = self.settings.compliance.as_of
        if as_of is None:
            return self.now
        if as_of == "data":
            latest = [rows.frame["invoice_date"].max() for rows in self.stores.values() if len(rows.frame)]
            if not latest:
                raise DataError("compliance.as_of is 'data' but the stores hold no rows to take the clock from")
            return pd.Timestamp(max(latest)).to_pydatetime().replace(tzinfo=timezone.utc)
        assert isinstance(as_of, datetime)
        return as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=timezone.utc)

    # ---- database --------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The settings' database, migrated to this siloguard's schema (like the ledger does)."""
        if self._engine is None:
            from siloguard.storage.db import create_engine, current_revision, head_revision, upgrade_database

            engine = create_engine(self.settings.database.url)
            if current_revision(engine) != head_revision():
                upgrade_database(engine)
            self._engine = engine
        return self._engine

    @property
    def consent(self) -> ConsentRegistry:
        if self._registry is None:
            from siloguard.policies.consent import ConsentRegistry

            self._registry = ConsentRegistry(self.engine)
        return self._registry

    def store_consent(self, store: str) -> StoreConsent | None:
        """The store's view of the registry, or None if the store has no keys yet.

        A store without keys cannot have recorded any consent (the registry is keyed by the
        store's keyed subject references), so every subject of it lacks consent. The key
        store is opened only if its directory exists: a check creates no key material.
        """
        from siloguard.policies.consent import StoreConsent
        from siloguard.privacy.keys import FileKeyStore, StoreKeys

        root = self.settings.keys.root
        if not root.is_dir():
            return None
        keys = StoreKeys(FileKeyStore(root), store)
        if keys.keystore.read(f"stores/{store}/master") is None:
            return None
        return StoreConsent(self.consent, keys)

    def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            self._engine.dispose()
            self._engine = None
        self._registry = None
