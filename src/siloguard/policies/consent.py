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

**Current state.** Next to the events, ``consent_state`` keeps the latest event's order key per
(purpose key, subject), upserted in the same transaction as the events (a write that fails
leaves neither). A question about *now* (or any time no later than every event) reads it: one
row per subject and key instead of their whole history. A question about an earlier time
(an as-of query) reads the events. The events stay the source of truth: :meth:`ConsentRegistry.state_differences`
rebuilds the state from them and compares (``siloguard check``, rule ``consent-state-rebuilds``),
and :meth:`ConsentRegistry.rebuild_state` replaces the table with the rebuilt one.
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
from siloguard.storage.orm import consent_events, consent_state

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



_SEPARATOR = "\x1f"  # ASCII unit separator: subjects are keyed references, never hold one


def _fetch_subjects(conn: sa.Connection, *where: sa.ColumnElement[bool]) -> list[str]:
    """The subjects of the state rows matching ``where``, joined into one string by the
    database and split here: a million subjects fetched as rows cost ~0.8 us each (a tuple and
    a string per row through the driver), as one string a few hundredths of that.

    The count comes along; if a subject held the separator the split would not add up, and
    the rows are fetched one by one instead.
    """
    t = consent_state
    joined = (sa.func.string_agg(t.c.subject, _SEPARATOR) if conn.dialect.name == "postgresql"
              else sa.func.group_concat(t.c.subject, _SEPARATOR))
    text, count = conn.execute(sa.select(joined, sa.func.count()).where(*where)).one()
    subjects = text.split(_SEPARATOR) if text else []
    if len(subjects) != count:
        return [s for (s,) in _fetch_tuples(conn, sa.select(t.c.subject).where(*where))]
    return subjects


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
            latest: dict[tuple[str, str], int] = {}
            for row in rows:
                key = (row["purpose"], row["subject"])
                if row["ord"] > latest.get(key, -1):
                    latest[key] = row["ord"]
            with exclusive(self.engine, "consent-events") as conn:
                conn.execute(consent_events.insert(), rows)
                self._upsert_state(conn, [{"purpose": p, "subject": s, "ord": o} for (p, s), o in latest.items()])

    @staticmethod
    def _upsert_state(conn: sa.Connection, rows: list[dict[str, object]]) -> None:
        """Raise each (purpose, subject)'s state to these order keys where they are later.

        An event recorded late with an earlier time (an import of old consents) leaves a later
        state alone: the state is the latest event by time, not by arrival.
        """
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        # Each pair once per batch (PostgreSQL refuses to update a row twice in one statement,
        # and SQLAlchemy sends an executemany as multi-row statements there).
        stmt = insert(consent_state)
        stmt = stmt.on_conflict_do_update(
            index_elements=[consent_state.c.purpose, consent_state.c.subject],
            set_={"ord": stmt.excluded.ord},
            where=stmt.excluded.ord > consent_state.c.ord,
        )
        conn.execute(stmt, rows)

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
        deleted = 0
        with exclusive(self.engine, "consent-events") as conn:
            for start in range(0, len(refs), _IN_CHUNK):
                chunk = refs[start : start + _IN_CHUNK]
                deleted += int(conn.execute(consent_events.delete().where(consent_events.c.subject.in_(chunk))).rowcount or 0)
                conn.execute(consent_state.delete().where(consent_state.c.subject.in_(chunk)))
        return deleted

    # ---- the current state and its check ---------------------------------------------
    @staticmethod
    def _rebuilt() -> sa.Select:
        """The state as the events say it is: the latest order key per (purpose, subject)."""
        t = consent_events
        return sa.select(t.c.purpose, t.c.subject, sa.func.max(t.c.ord).label("ord")).group_by(t.c.purpose, t.c.subject)

    def state_differences(self) -> dict[str, int]:
        """Rebuild the state from the events and compare it with the table, in the database.

        ``missing``: (purpose, subject) pairs whose latest event the table lacks or holds with
        another order key; ``extra``: table rows the events do not give (a stale or foreign
        row, or a wrong key). Both 0 when the table is what the events say. ``events`` and
        ``rows`` are the sizes compared. Read in one transaction (a snapshot on SQLite and, with
        the repeatable-read level asked for here, on PostgreSQL).
        """
        rebuilt = self._rebuilt()
        table = sa.select(consent_state.c.purpose, consent_state.c.subject, consent_state.c.ord)

        def count(query: sa.Select | sa.CompoundSelect) -> int:
            return int(conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())

        options = {"isolation_level": "REPEATABLE READ"} if self.engine.dialect.name == "postgresql" else {}
        with self.engine.connect().execution_options(**options) as conn, conn.begin():
            return {
                "missing": count(sa.except_(rebuilt, table)),
                "extra": count(sa.except_(table, rebuilt)),
                "events": int(conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one()),
                "rows": int(conn.execute(sa.select(sa.func.count()).select_from(consent_state)).scalar_one()),
            }

    def rebuild_state(self) -> int:
        """Replace the state with the one the events give (after a failed check); returns its rows."""
        with exclusive(self.engine, "consent-events") as conn:
            conn.execute(consent_state.delete())
            conn.execute(sa.insert(consent_state).from_select(["purpose", "subject", "ord"], self._rebuilt()))
            return int(conn.execute(sa.select(sa.func.count()).select_from(consent_state)).scalar_one())

    # ---- reading -----------------------------------------------------------------
    def _state_holds(self, conn: sa.Connection, keys: Collection[str], limit: int) -> bool:
        """Whether the state answers for ``limit``: no key has an event after it (an index
        lookup per key). Times in the past, or events recorded ahead of time, read the events."""
        t = consent_state
        for key in keys:
            latest = conn.execute(sa.select(sa.func.max(t.c.ord)).where(t.c.purpose == key)).scalar()
            if latest is not None and latest > limit:
                return False
        return True

    def _granted(self, purpose: str, at: datetime, subjects: Collection[str] | None) -> set[str]:
        """Subjects whose deciding event (latest at or before ``at`` among the purpose and its
        ancestors, a withdrawal winning ties) is a grant.

        From the state table when no event of these keys is later than ``at`` (the usual
        question, "now"); from the events otherwise, one grouped scan per key over the
        (purpose, subject, ord) index. Either way one read per key of the purpose's ancestry,
        merged here: each streams in subject order, where one query over all keys would sort.
        ``subjects`` (at most ``_IN_CHUNK`` at a time) narrows each read to index lookups.
        Measured in bench/consent.py.
        """
        limit = _order(at, "withdraw")  # every event at or before ``at``
        keys = ancestors(purpose)
        chunks: list[list[str] | None] = [None]
        if subjects is not None:
            listed = list(subjects)
            chunks = [listed[i : i + _IN_CHUNK] for i in range(0, len(listed), _IN_CHUNK)]
        with self.engine.connect() as conn:
            if self._state_holds(conn, keys, limit):
                if subjects is None:
                    return self._granted_now(conn, purpose, keys)
                t = consent_state

                def query(key: str) -> sa.Select:
                    return sa.select(t.c.subject, t.c.ord).where(t.c.purpose == key)
            else:
                e = consent_events

                def query(key: str) -> sa.Select:
                    return sa.select(e.c.subject, sa.func.max(e.c.ord)).where(e.c.purpose == key, e.c.ord <= limit).group_by(e.c.subject)

            per_key: list[list[tuple[str, int]]] = []
            for key in keys:
                rows: list[tuple[str, int]] = []
                for chunk in chunks:
                    q = query(key)
                    if chunk is not None:
                        q = q.where(q.selected_columns[0].in_(chunk))
                    rows.extend(_fetch_tuples(conn, q))
                if rows:
                    per_key.append(rows)
        return _merge(per_key)

    def _granted_now(self, conn: sa.Connection, purpose: str, keys: Collection[str]) -> set[str]:
        """Everyone consenting to ``purpose`` now, from the state.

        The purpose's own key holds most rows (a million subjects); its grants are read as bare
        subjects (no order key, no merge), and the order keys only of subjects the ancestors
        also speak for. The ancestors' rows are read whole (a parent key is given by few).
        """
        t = consent_state
        others: dict[str, int] = {}
        for key in keys:
            if key == purpose:
                continue
            for subject, order in _fetch_tuples(conn, sa.select(t.c.subject, t.c.ord).where(t.c.purpose == key)):
                if order > others.get(subject, -1):
                    others[subject] = order
        own = _fetch_subjects(conn, t.c.purpose == purpose, t.c.ord % 2 == 0)
        if not others:
            return set(own)
        contested = sa.select(t.c.subject).where(t.c.purpose.in_([k for k in keys if k != purpose])).scalar_subquery()
        mine = dict(_fetch_tuples(conn, sa.select(t.c.subject, t.c.ord).where(t.c.purpose == purpose, t.c.subject.in_(contested))))
        granted = set(own)
        granted.difference_update(others)  # the ancestors speak for these too: decided below
        granted.update(s for s, order in others.items() if max(order, mine.get(s, -1)) % 2 == 0)
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


def _merge(per_key: list[list[tuple[str, int]]]) -> set[str]:
    """Subjects whose largest order key across the keys' (subject, order) rows is a grant (even)."""
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
