"""The gate in front of a store's data, as the store's own processes build it.

A store's federation client never reads its silo directly: :func:`gated_training_frame`
passes the silo through the store's :class:`~siloguard.policies.gate.Gate` as the store's
trainer, for ``personalize.profiling``, asking only for the columns training needs. The gate
keeps only customers with a live consent at that moment (the consent registry in the run's
database), pseudonymises the customer id with the store's key, and records one decision
event in the audit log. It runs on every round, so a withdrawal recorded between two rounds
removes the customer from the next one.

Everything a store's gate needs is built once per process and store (:func:`store_gate`):
the store's keys (:func:`store_keys`, a :class:`~siloguard.privacy.keys.FileKeyStore` under
``settings.keys.root``), the shipped Casbin policy with the trainer's role binding, the
consent registry and the audit log.
"""

from __future__ import annotations

import threading
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import pandas as pd

from siloguard.config import Settings
from siloguard.errors import ConfigError
from siloguard.policies.gate import Gate, GatedData, Principal
from siloguard.privacy.keys import FileKeyStore, StoreKeys
# What training reads of the silo (purpose, data map, columns): defined with the run, which the
# compliance checks read too, and re-exported here for the store's modules.
from siloguard.runs import TRAINING_COLUMNS, TRAINING_DATASET, TRAINING_PURPOSE, run_manifest

__all__ = [
    "TRAINING_COLUMNS",
    "bind",
    "TRAINING_DATASET",
    "TRAINING_PURPOSE",
    "gated_training_frame",
    "known_stores",
    "silo_path",
    "store_audit",
    "store_consent",
    "store_gate",
    "store_keys",
    "store_suppression",
    "trainer",
]

_lock = threading.Lock()


def trainer(store: str) -> Principal:
    """The principal a store's federation client acts as."""
    return Principal(id=f"client:{store}", role="store_trainer")


def store_keys(settings: Settings, store: str) -> StoreKeys:
    """The store's keys under ``settings.keys.root``, created on first use."""
    keys = StoreKeys(FileKeyStore(settings.keys.root), store)
    keys.init()
    return keys


def known_stores(settings: Settings) -> list[str]:
    """The store of the site in ``settings.work_dir``, or the stores of an older one-directory run (sorted)."""
    from siloguard.clients.site import StoreSite

    if StoreSite.is_site(settings.work_dir):
        return [StoreSite.open(settings.work_dir, settings).name]
    return run_manifest(settings.work_dir).names


@lru_cache(maxsize=4)
def _registry(url: str):  # noqa: ANN202 - one engine per database and process
    from siloguard.policies.consent import ConsentRegistry

    return ConsentRegistry(url)


@lru_cache(maxsize=4)
def store_audit(settings: Settings):  # noqa: ANN201 - one audit log per database and process
    """The store's own audit log (its database), opened once per process."""
    from siloguard.audit import AuditLog

    return AuditLog.open(settings)


@lru_cache(maxsize=4)
def _recorder(settings: Settings):  # noqa: ANN202 - the gate's decisions go to the store's log
    from siloguard.audit.adapters import DecisionRecorderAdapter

    return DecisionRecorderAdapter(store_audit(settings))


def store_consent(settings: Settings, store: str):  # noqa: ANN201 - imported lazily (SQLAlchemy)
    """The consent registry of the run's database, seen by one store (customer ids in)."""
    from siloguard.policies.consent import StoreConsent

    return StoreConsent(_registry(settings.database.url), store_keys(settings, store))


def store_suppression(settings: Settings, store: str):  # noqa: ANN201 - imported lazily (SQLAlchemy)
    """The store's suppression list (customers it erased), in the run's database."""
    from siloguard.privacy.suppression import SuppressionList

    return SuppressionList(_registry(settings.database.url).engine, store_keys(settings, store))


@lru_cache(maxsize=16)
def _enforcer(store: str):  # noqa: ANN202 - Casbin only when a gate is built
    """The shipped policy with the store trainer's role binding (one per store and process)."""
    from siloguard.policies.enforcer import PolicyEnforcer

    enforcer = PolicyEnforcer()
    principal = trainer(store)
    enforcer.assign_role(principal.id, principal.role, store)
    return enforcer


def bind(store: str, principal: Principal) -> None:
    """Give ``principal`` its role in the store's gate (this process only).

    The store's own commands (``siloguard store ...``) run on the store's machine with its
    keys, as its staff: they bind the operator they act for before asking the gate.
    """
    _enforcer(store).assign_role(principal.id, principal.role, store)


@lru_cache(maxsize=16)
def store_gate(settings: Settings, store: str) -> Gate:
    """The store's gate, built once per process: policy, consent, keys, masker, audit."""
    from siloguard.privacy.masking import Masker
    from siloguard.privacy.pseudonyms import Pseudonymiser

    with _lock:
        keys = store_keys(settings, store)
        return Gate(
            store=store,
            enforcer=_enforcer(store),
            consent=store_consent(settings, store),
            recorder=_recorder(settings),
            pseudonymiser=Pseudonymiser(keys),
            masker=Masker.for_store(keys),
            suppression=(suppression := store_suppression(settings, store)),
            blind=suppression.blinder(),
        )


def gated_training_frame(settings: Settings, store: str, frame: pd.DataFrame, *, at: datetime | None = None) -> GatedData:
    """The part of a store's cleaned transactions its trainer may use now (or ``at``).

    Raises :class:`~siloguard.errors.AccessDenied` when the gate refuses the flow.
    """
    missing = [c for c in TRAINING_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"store {store!r}: the silo lacks column(s) {', '.join(missing)}")
    return store_gate(settings, store).admit(
        trainer(store),
        TRAINING_PURPOSE,
        TRAINING_DATASET,
        frame,  # whole: the gate itself drops what training may not read, and records it
        action="train",
        columns=TRAINING_COLUMNS,
        at=at,
    )


def silo_path(settings: Settings, store: str) -> Path:
    """The store's transaction file: its site's (``settings.work_dir`` is a store site), or, in a
    run prepared in one directory by an older siloguard, ``stores/<store>.csv``."""
    from siloguard.clients.site import StoreSite

    if StoreSite.is_site(settings.work_dir):
        site = StoreSite.open(settings.work_dir, settings)
        if site.name != store:
            raise ConfigError(f"the site {settings.work_dir} is store {site.name!r}'s, not {store!r}'s")
        return site.silo()
    path = settings.work_dir / "stores" / f"{store}.csv"
    if not path.is_file():
        raise ConfigError(f"store {store!r} has no silo at {path}: prepare the run first")
    return path
