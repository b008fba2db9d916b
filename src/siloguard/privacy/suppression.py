"""A store's suppression list: the customers it erased, by keyed reference, never by id.

When a store erases a customer (``siloguard store sync``), it adds the customer's keyed
reference (:meth:`~siloguard.privacy.keys.SubjectVault.subject_ref`, an HMAC under a key
derived from the store's master key) to ``store_suppressions``. Everything that brings
customers into the store honours the list: preparing silos from a source file, loading the
store's silo, importing consent, answering access requests. So re-cutting the silos from the
same source or re-importing an old consent file does not bring an erased customer back.

The list holds no customer id: without the store's master key it names nobody, and after
the store's keys are gone it is a list of meaningless hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.privacy.keys import StoreKeys, SubjectVault
from siloguard.privacy.pseudonyms import normalise_ids
from siloguard.storage.orm import store_suppressions

__all__ = ["SuppressionList"]

_IN_CHUNK = 1000


def _canonical(value: object) -> str:
    """A customer id as every store writes it: ``17850``, ``17850.0`` and ``" 17850"`` alike."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]
    return text


class SuppressionList:
    """One store's erased customers in a database (the store's own)."""

    def __init__(self, engine: Engine, store_keys: StoreKeys) -> None:
        self.engine = engine
        self.store = store_keys.store
        self._vault = SubjectVault(store_keys)

    def refs(self, customer_ids: Collection[object]) -> list[str]:
        """The keyed references of customer ids (normalised as the stores write them)."""
        clean = normalise_ids(pd.Series(list(customer_ids), dtype=object))
        return self._vault.subject_refs([_canonical(c) for c in clean])

    def add(self, customer_ids: Collection[object], *, at: datetime | None = None) -> int:
        """Suppress these customers (idempotent); returns how many were new."""
        refs = sorted(set(self.refs(customer_ids)))
        held = self._held(refs)
        new = [r for r in refs if r not in held]
        if new:
            when = at or datetime.now(timezone.utc)
            with self.engine.begin() as conn:
                conn.execute(store_suppressions.insert(), [{"store": self.store, "subject_ref": r, "erased_at": when} for r in new])
        return len(new)

    def _held(self, refs: list[str]) -> set[str]:
        held: set[str] = set()
        t = store_suppressions
        with self.engine.connect() as conn:
            for i in range(0, len(refs), _IN_CHUNK):
                chunk = refs[i : i + _IN_CHUNK]
                held.update(conn.execute(sa.select(t.c.subject_ref).where(t.c.store == self.store, t.c.subject_ref.in_(chunk))).scalars())
        return held

    def suppressed(self, customer_ids: Collection[object]) -> set[str]:
        """Which of these customer ids (as given) are suppressed."""
        ids = list(customer_ids)
        if not ids:
            return set()
        refs = self.refs(ids)
        held = self._held(sorted(set(refs)))
        return {str(i) for i, r in zip(ids, refs) if r in held}

    def __len__(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(store_suppressions).where(store_suppressions.c.store == self.store)).scalar_one())

    def drop_suppressed(self, frame: pd.DataFrame, column: str = "customer_id") -> tuple[pd.DataFrame, int]:
        """``frame`` without the rows of suppressed customers, and how many rows were dropped."""
        if frame.empty or column not in frame.columns:
            return frame, 0
        ids = frame[column]
        distinct = pd.unique(ids.dropna())
        gone = self.suppressed(distinct.tolist())
        if not gone:
            return frame, 0
        mask = ids.astype(str).isin(gone).to_numpy()
        return frame.loc[~mask], int(mask.sum())

    def blinder(self) -> Callable[[str], str]:
        """The store's blinded audit reference of a subject (``SubjectVault.audit_ref``), for the gate.

        An erased subject gets ``unidentified`` and no key: a blinded reference needs the
        subject's data key, and recreating the key the erasure destroyed would make the
        subject's events linkable again. If the subject is erased between the check and the
        key's creation, the new key is destroyed again at once.
        """
        vault = self._vault

        def blind(subject_id: str) -> str:
            if self.suppressed([subject_id]):
                return "unidentified"
            ref = vault.audit_ref(subject_id)
            if self.suppressed([subject_id]):
                vault.shred(subject_id)
                return "unidentified"
            return ref

        return blind

    def __repr__(self) -> str:
        return f"SuppressionList(store={self.store!r})"
