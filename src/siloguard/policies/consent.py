"""The consent registry in the SQL database: append-only events, current and as-of state.

Events per (subject, purpose): ``grant``, ``withdraw`` or ``opt_out``, with their source
(``web``, ``store``, ``api``, ``gpc``), the notice version shown and the time. The rules,
identical to the gate's in-memory stand-in (``policies.gate.InMemoryConsentSource``):

* an event for a purpose also speaks for every purpose below it (consent to ``marketing``
  covers ``marketing.advertising.first_party.targeted``);
* for a subject and purpose, the latest event at or before the asked time among the purpose
  and its ancestors decides; at equal times a withdrawal or opt-out wins over a grant;
* no event means no consent.

A Global Privacy Control signal (``Sec-GPC: 1``) is recorded as an opt-out of sale and
sharing (:data:`SALE_AND_SHARING`); it is later than any earlier opt-in, so it wins over it.

Subjects are a store's stable keyed references of its customers, never raw customer ids;
:class:`StoreConsent` maps customer ids to them and implements the gate's ``ConsentSource``.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.errors import ConfigError
from siloguard.policies.taxonomy import ancestors, load_taxonomy
from siloguard.storage.db import create_engine, current_revision, exclusive, head_revision, upgrade_database
from siloguard.privacy.pseudonyms import normalise_ids
from siloguard.storage.orm import consent_events

if TYPE_CHECKING:
    from siloguard.privacy.keys import StoreKeys

__all__ = ["KINDS", "SALE_AND_SHARING", "SOURCES", "ConsentRegistry", "StoreConsent"]

Kind = Literal["grant", "withdraw", "opt_out"]
KINDS: tuple[str, ...] = ("grant", "withdraw", "opt_out")
SOURCES: tuple[str, ...] = ("web", "store", "api", "gpc")
#: Purposes a GPC signal opts out of (CCPA "sale or sharing"): fideslang data uses.
SALE_AND_SHARING: tuple[str, ...] = ("third_party_sharing", "marketing.advertising.third_party")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_IN_CHUNK = 1000  # subjects per IN list
_LOOKUP_LIMIT = 20_000  # asked subjects up to which index lookups beat one full pass


def _fetch_tuples(conn: sa.Connection, query: sa.Select) -> list[tuple]:
    """Run ``query`` on the DBAPI cursor: plain tuples, no Row objects (a purpose can hold
    a million subjects, and building a Row per subject doubled the time of the scan)."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    args: tuple | dict = tuple(params[name] for name in compiled.positiontup) if compiled.positional else params
    cursor = conn.connection.cursor()
    try:
        cursor.execute(compiled.string, args)
        return cursor.fetchall()
    finally:
        cursor.close()



def _order(at: datetime, kind: str) -> int:
    """The event's order key: later first, and at the same time a withdrawal or opt-out first.

    2 x microseconds since the epoch, + 1 unless a grant: the largest key among a subject's
    events for a purpose's keys decides, and it is a grant exactly when it is even.
    """
    delta = at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * 2 + (0 if kind == "grant" else 1)


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    if at.tzinfo is None:
        raise ConfigError("consent times must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return at.astimezone(timezone.utc)


class ConsentRegistry:
    """Consent events in a SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        if current_revision(self.engine) != head_revision():
            upgrade_database(self.engine)
        self._taxonomy = load_taxonomy()

    def close(self) -> None:
        self.engine.dispose()

    # ---- writing -----------------------------------------------------------------
    def record(
        self,
        subject: str,
        purpose: str,
        kind: str,
        *,
        source: str,
        notice_version: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Append one event; a bad kind, source or purpose is refused and nothing is written."""
        self.record_many([(subject, purpose, kind)], source=source, notice_version=notice_version, at=at)

    def record_many(
        self,
        events: Collection[tuple[str, str, str]],
        *,
        source: str,
        notice_version: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Append many (subject, purpose, kind) events in one transaction."""
        when = _utc(at)
        self.record_events([(subject, purpose, kind, source, notice_version, when) for subject, purpose, kind in events])

    def record_events(
        self, events: Collection[tuple[str, str, str, str, str | None, datetime]]
    ) -> None:
        """Append (subject, purpose, kind, source, notice version, time) events in one transaction.

        Every event is checked first: one bad event and nothing is written.
        """
        rows = []
        for subject, purpose, kind, source, notice_version, at in events:
            if source not in SOURCES:
                raise ConfigError(f"unknown consent source {source!r}: use one of {', '.join(SOURCES)}")
            if kind not in KINDS:
                raise ConfigError(f"unknown consent event {kind!r}: use one of {', '.join(KINDS)}")
            if not self._taxonomy.is_use(purpose):
                raise ConfigError(f"unknown purpose {purpose!r}: use a fideslang data use (policies/taxonomy.yaml)")
            if not isinstance(subject, str) or not subject or len(subject) > 64:
                raise ConfigError("a consent subject is the store's reference of the customer (1-64 characters)")
            when = _utc(at)
            rows.append(
                {"subject": subject, "purpose": purpose, "kind": kind, "source": source,
                 "notice_version": notice_version, "at": when, "ord": _order(when, kind)}
            )
        if rows:
            with exclusive(self.engine, "consent-events") as conn:
                conn.execute(consent_events.insert(), rows)

    def record_gpc(self, subject: str, *, at: datetime | None = None) -> None:
        """A Global Privacy Control signal: opt the subject out of sale and sharing."""
        self.record_many([(subject, p, "opt_out") for p in SALE_AND_SHARING], source="gpc", at=at)

    def forget(self, subjects: Collection[str]) -> int:
        """Delete every event of these subjects (erasure); returns how many were deleted.

        The log is append-only for everything else: an erased subject's consent history is
        personal data about them and goes with the rest. The store's suppression list keeps
        them from coming back (:mod:`siloguard.privacy.suppression`).
        """
        refs = sorted(set(subjects))
        if not refs:
            return 0
        with exclusive(self.engine, "consent-events") as conn:
            return int(conn.execute(consent_events.delete().where(consent_events.c.subject.in_(refs))).rowcount or 0)

    # ---- reading -----------------------------------------------------------------
    def _granted(self, purpose: str, at: datetime, subjects: Collection[str] | None) -> set[str]:
        """Subjects whose deciding event (latest at or before ``at`` among the purpose and its
        ancestors, a withdrawal winning ties) is a grant.

        One grouped scan per key of the purpose's ancestry over the (purpose, subject, ord)
        index, merged here: each scan streams in subject order, where one query over all keys
        would sort every event. ``subjects`` (at most ``_IN_CHUNK`` at a time) narrows each
        scan to index lookups. Measured in bench/consent.py.
        """
        t = consent_events
        limit = _order(at, "withdraw")  # every event at or before ``at``
        chunks: list[list[str] | None] = [None]
        if subjects is not None:
            listed = list(subjects)
            chunks = [listed[i : i + _IN_CHUNK] for i in range(0, len(listed), _IN_CHUNK)]
        per_key: list[list[tuple[str, int]]] = []
        with self.engine.connect() as conn:
            for key in ancestors(purpose):
                rows: list[tuple[str, int]] = []
                for chunk in chunks:
                    query = (
                        sa.select(t.c.subject, sa.func.max(t.c.ord))
                        .where(t.c.purpose == key, t.c.ord <= limit)
                        .group_by(t.c.subject)
                    )
                    if chunk is not None:
                        query = query.where(t.c.subject.in_(chunk))
                    rows.extend(_fetch_tuples(conn, query))
                if rows:
                    per_key.append(rows)
        if not per_key:
            return set()
        per_key.sort(key=len)
        biggest = per_key.pop()
        others: dict[str, int] = {}
        for rows in per_key:
            for subject, order in rows:
                if order > others.get(subject, -1):
                    others[subject] = order
        if not others:
            return {subject for subject, order in biggest if not order & 1}
        granted = set()
        for subject, order in biggest:
            other = others.pop(subject, None)
            if other is not None and other > order:
                order = other
            if not order & 1:
                granted.add(subject)
        granted.update(subject for subject, order in others.items() if not order & 1)
        return granted

    def subjects_with_basis(self, purpose: str, subject_ids: Collection[str], at: datetime) -> set[str]:
        """Which of ``subject_ids`` had a live consent for ``purpose`` at ``at``."""
        wanted = set(subject_ids)
        if not wanted:
            return set()
        when = _utc(at)
        # Up to a store's worth of subjects: index lookups; beyond, one pass over the purpose.
        if len(wanted) <= _LOOKUP_LIMIT:
            return self._granted(purpose, when, wanted)
        return self._granted(purpose, when, None) & wanted

    def consented(self, purpose: str, at: datetime | None = None) -> set[str]:
        """Every subject with a live consent for ``purpose`` at ``at`` (default: now)."""
        return self._granted(purpose, _utc(at), None)

    def has_basis(self, subject: str, purpose: str, at: datetime | None = None) -> bool:
        """Did ``subject`` have a live consent for ``purpose`` at ``at`` (default: now)?"""
        return subject in self.subjects_with_basis(purpose, [subject], _utc(at))


class StoreConsent:
    """One store's view of the registry, in customer ids: the gate's ``ConsentSource``.

    The registry is keyed by the store's stable subject reference (a keyed hash of the
    customer id, :meth:`siloguard.privacy.keys.SubjectVault.subject_ref`): it does not change
    when pseudonym secrets rotate, and without the store's master key it names nobody. So the
    same customer has unrelated references in two stores, and consent is recorded per store.
    """

    def __init__(self, registry: ConsentRegistry, store_keys: StoreKeys) -> None:
        from siloguard.privacy.keys import SubjectVault

        self.registry = registry
        self.store = store_keys.store
        self._vault = SubjectVault(store_keys)
        from siloguard.privacy.suppression import SuppressionList

        # Built once: its keyed references are derived from the store's keys (HKDF) on creation.
        self._suppression = SuppressionList(registry.engine, store_keys)

    def subject(self, customer_id: object) -> str:
        """The registry's key for a customer of this store."""
        return self.subjects([customer_id])[0]

    def subjects(self, customer_ids: Collection[object]) -> list[str]:
        """:meth:`subject` of many customer ids, in order (one keyed HMAC each)."""
        clean = normalise_ids(pd.Series(list(customer_ids), dtype=object))
        if clean.isna().any():
            raise ConfigError("a consent subject needs a customer id")
        return self._vault.subject_refs(clean.tolist())

    def subjects_with_basis(self, purpose: str, subject_ids: Collection[str], at: datetime) -> set[str]:
        """Which of these customer ids had a live consent for ``purpose`` at ``at``."""
        ids = list(subject_ids)
        by_ref = dict(zip(self.subjects(ids), ids))
        granted = self.registry.subjects_with_basis(purpose, by_ref.keys(), at)
        return {by_ref[ref] for ref in granted}

    def record(
        self,
        customer_ids: Collection[object],
        purpose: str,
        kind: str,
        *,
        source: str,
        notice_version: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """One ``kind`` event for ``purpose`` per customer, in one transaction.

        Customers the store erased (its suppression list) are skipped: the registry holds no
        consent for someone the store no longer holds.
        """
        ids = list(customer_ids)
        erased = self._suppression.suppressed(ids)
        self.registry.record_many(
            [(ref, purpose, kind) for cid, ref in zip(ids, self.subjects(ids)) if str(cid) not in erased],
            source=source,
            notice_version=notice_version,
            at=at,
        )

    def forget(self, customer_ids: Collection[object]) -> int:
        """Delete these customers' consent events in this store (erasure); returns the count."""
        return self.registry.forget(self.subjects(customer_ids))

    def record_gpc(self, customer_id: object, *, at: datetime | None = None) -> None:
        """A Global Privacy Control signal from this customer: opt-out of sale and sharing.

        Nothing is recorded for a customer the store erased (its suppression list).
        """
        if self._suppression.suppressed([customer_id]):
            return
        self.registry.record_gpc(self.subject(customer_id), at=at)

    def __repr__(self) -> str:
        return f"StoreConsent(store={self.store!r})"
