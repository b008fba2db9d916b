"""The append-only audit log in the database.

:class:`AuditLog` appends events as RFC 9162 Merkle leaves, signs tree heads (every
``head_every_events`` events or ``head_every_seconds``, and on demand), and answers
inclusion and consistency proofs from the stored perfect nodes in O(log n) lookups.

Appends are serialised in the database (:func:`siloguard.storage.exclusive`): the size is
read, the new leaves and the nodes they complete are written and, when due, a head is signed,
all in one transaction, so any number of processes can append to one log without forking or
reordering it. A batch is one transaction with one durable commit (group commit);
:class:`GroupCommitSink` forms such batches from many threads.

Before signing a head the log checks that its stored tree extends the previous signed head
(an RFC 9162 consistency proof from the node store) and that this head's signature is good,
so a signer never vouches for a log that was truncated or rewritten under it (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from siloguard.audit._store import EVENT_BY_ID, all_heads, insert_many, latest_head
from siloguard.audit._store import EVENTS as _E
from siloguard.audit._store import HEADS as _H
from siloguard.audit._store import NODES as _N
from siloguard.audit._store import lookup_nodes as _lookup
from siloguard.audit._store import tree_size as _size
from siloguard.audit.events import AuditEvent, EventId
from siloguard.audit.heads import HeadSigner, SignedTreeHead, load_signing_key
from siloguard.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    resolve,
    verify_consistency,
    verify_inclusion,
)
from siloguard.errors import AuditError, AuditIntegrityError
from siloguard.storage import also_hold, create_engine, exclusive, require_current_schema

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from siloguard.audit.verify import VerifyReport
    from siloguard.config import Settings

__all__ = ["APPEND_LOCK", "AuditLog", "GroupCommitSink", "InclusionProof", "StoredEvent"]

log = logging.getLogger(__name__)

APPEND_LOCK = "siloguard.audit.append"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its leaf index, its canonical bytes and their leaf hash."""

    index: int
    body: bytes
    leaf_hash: bytes

    @property
    def event(self) -> AuditEvent:
        return AuditEvent.from_canonical(self.body)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """RFC 9162 inclusion proof of one event in the tree a signed head commits to."""

    leaf_index: int
    leaf_input: bytes  # the canonical event bytes that were hashed
    inclusion_path: tuple[bytes, ...]
    head: SignedTreeHead

    @property
    def tree_size(self) -> int:
        return self.head.tree_size

    @property
    def event(self) -> AuditEvent:
        return AuditEvent.from_canonical(self.leaf_input)

    def verify(self, public_key: Ed25519PublicKey, event_id: str | None = None) -> None:
        """Check the head's signature, the event bytes and the path (RFC 9162 2.1.3.2)."""
        self.head.verify(public_key)
        try:
            event = self.event
        except AuditError:
            raise AuditIntegrityError("inclusion proof: the event bytes are not a canonical audit event") from None
        if event_id is not None and event.event_id != event_id:
            raise AuditIntegrityError("inclusion proof is for a different event")
        head = self.head
        verify_inclusion(leaf_hash(self.leaf_input), self.leaf_index, head.tree_size, self.inclusion_path, head.root_hash)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "siloguard-audit-inclusion-proof-v1",
            "event": json.loads(self.leaf_input),
            "leaf_input": self.leaf_input.decode("ascii"),
            "leaf_hash": base64.b64encode(leaf_hash(self.leaf_input)).decode(),
            "leaf_index": self.leaf_index,
            "tree_size": self.head.tree_size,
            "inclusion_path": [base64.b64encode(p).decode() for p in self.inclusion_path],
            "tree_head": self.head.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> InclusionProof:
        try:
            if not isinstance(data, dict) or data.get("format") != "siloguard-audit-inclusion-proof-v1":
                raise ValueError
            head = SignedTreeHead.from_json(data["tree_head"])
            proof = cls(
                leaf_index=int(data["leaf_index"]),
                leaf_input=str(data["leaf_input"]).encode("ascii"),
                inclusion_path=tuple(base64.b64decode(p, validate=True) for p in data["inclusion_path"]),
                head=head,
            )
        except (KeyError, TypeError, ValueError, binascii.Error, UnicodeEncodeError):
            raise AuditError("not a siloguard inclusion proof: expected the JSON `siloguard audit prove` writes") from None
        if data.get("tree_size") != head.tree_size:
            raise AuditIntegrityError("inclusion proof: tree_size differs from its tree head's")
        return proof


class AuditLog:
    """The audit log of one database. Thread-safe; one instance per process is enough.

    ``signer`` signs tree heads; without one the log still appends, and heads are signed
    wherever the key is (``siloguard audit head``).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        signer: HeadSigner | None = None,
        head_every_events: int = 1000,
        head_every_seconds: float = 3600,
        clock: Any = time.time,
    ) -> None:
        if head_every_events < 0 or head_every_seconds < 0:
            raise AuditError("head intervals must be >= 0 (0 = never automatically)")
        self._engine = engine
        self._signer = signer
        self._every_events = int(head_every_events)
        self._every_ms = int(head_every_seconds * 1000)
        self._clock = clock

    @property
    def url(self) -> sa.engine.URL:
        """The database the log is in (:meth:`append_in` takes a transaction on it)."""
        return self._engine.url

    @classmethod
    def open(cls, settings: Settings, *, signer: HeadSigner | None | bool = True) -> AuditLog:
        """The log in ``settings.database.url`` (which must be migrated to the current schema).

        ``signer=True`` loads ``settings.audit.signing_key`` if that file exists (refusing an
        unsafe one); ``False`` never signs; a :class:`HeadSigner` is used as given.
        """
        engine = create_engine(settings.database.url)
        try:
            require_current_schema(engine)
            if signer is True:
                path = settings.audit.signing_key
                if path.exists():
                    signer = load_signing_key(path)
                else:
                    log.info("audit signing key not found: tree heads are signed on demand only")
                    signer = None
            elif signer is False:
                signer = None
        except BaseException:
            engine.dispose()
            raise
        return cls(
            engine,
            signer=signer,
            head_every_events=settings.audit.head_every_events,
            head_every_seconds=settings.audit.head_every_seconds,
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def signer(self) -> HeadSigner | None:
        return self._signer

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------
    def record(self, event: AuditEvent) -> EventId:
        """:class:`~siloguard.audit.AuditSink`: append one event durably; return its id."""
        self.append([event])
        return event.event_id

    def append(self, events: Iterable[AuditEvent]) -> list[int]:
        """Append events in one transaction (one durable commit); return their leaf indices.

        All or nothing: if any event is refused, none is written.
        """
        batch = self._checked(events)
        if not batch:
            return []
        with exclusive(self._engine, APPEND_LOCK) as conn:
            return self._write(conn, batch)

    def append_in(self, conn: Connection, events: Iterable[AuditEvent]) -> list[int]:
        """Append events inside the caller's write transaction ``conn`` (on this log's database):
        they are committed, or rolled back, with the caller's own change.

        One commit for a change and its audit trail instead of two, and no window in which the
        change is durable but its events are not. ``conn`` must come from
        :func:`~siloguard.storage.exclusive` on this log's database: on PostgreSQL the append
        lock is taken here, for the rest of the caller's transaction (take it last, after the
        caller's own lock, so the order of locks is the same everywhere); on SQLite the
        caller's transaction already holds the database's only write lock. Raises
        :class:`AuditError` for a refused batch; the caller's transaction must then roll back
        (on PostgreSQL it can do nothing else).
        """
        batch = self._checked(events)
        if not batch:
            return []
        if conn.engine.url != self.url:
            raise AuditError("append_in needs a transaction on the audit log's own database")
        also_hold(conn, APPEND_LOCK)
        return self._write(conn, batch)

    @staticmethod
    def _checked(events: Iterable[AuditEvent]) -> list[AuditEvent]:
        batch = list(events)
        if not all(isinstance(e, AuditEvent) for e in batch):
            raise AuditError("only AuditEvent objects can be appended to the audit log")
        if len({e.event_id for e in batch}) != len(batch):
            raise AuditError("the batch holds the same event id twice: nothing was written")
        return batch

    def _write(self, conn: Connection, batch: list[AuditEvent]) -> list[int]:
        bodies = [e.canonical() for e in batch]
        leaves = [leaf_hash(b) for b in bodies]
        first = _size(conn)
        frontier = self._frontier(conn, first)
        rows: list[tuple[int, str, bytes, bytes]] = []
        nodes: list[tuple[int, int, bytes]] = []
        for event, body, leaf in zip(batch, bodies, leaves):
            rows.append((frontier.size, event.event_id, leaf, body))
            nodes.extend(frontier.append(leaf))
        try:
            insert_many(conn, _E, ("seq", "event_id", "leaf_hash", "body"), rows)
            if nodes:
                insert_many(conn, _N, ("level", "idx", "hash"), nodes)
            if self._signer is not None and self._head_due(conn, frontier.size):
                self._sign_in(conn, self._signer, frontier)
        except IntegrityError:
            raise AuditError("an event id in this batch is already in the audit log: nothing was written") from None
        return list(range(first, first + len(batch)))

    def sign_head(self) -> SignedTreeHead:
        """Sign a tree head for the log as it is now (on demand)."""
        if self._signer is None:
            raise AuditError("no audit signing key loaded: create one with `siloguard audit keygen` or set audit.signing_key")
        with exclusive(self._engine, APPEND_LOCK) as conn:
            frontier = self._frontier(conn, _size(conn))
            return self._sign_in(conn, self._signer, frontier)

    def _head_due(self, conn: Connection, size: int) -> bool:
        if not self._every_events and not self._every_ms:
            return False
        last = latest_head(conn)
        if last is None:
            return bool(self._every_ms) or size >= self._every_events
        if size <= last.tree_size:
            return False
        if self._every_events and size - last.tree_size >= self._every_events:
            return True
        return bool(self._every_ms) and self._now_ms() - last.timestamp_ms >= self._every_ms

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _sign_in(self, conn: Connection, signer: HeadSigner, frontier: Frontier) -> SignedTreeHead:
        size, root = frontier.size, frontier.root()
        previous = latest_head(conn)
        if previous is not None:
            previous.verify(signer.public_key)
            if previous.tree_size > size:
                raise AuditIntegrityError(
                    f"refusing to sign: the log holds {size} events but head #{previous.seq} covered "
                    f"{previous.tree_size} (events deleted?); run `siloguard audit verify`"
                )
            proof = [] if previous.tree_size == size else resolve(
                consistency_ranges(previous.tree_size, size), lambda keys: _lookup(conn, keys)
            )
            try:
                verify_consistency(previous.tree_size, size, previous.root_hash, root, proof)
            except AuditIntegrityError:
                raise AuditIntegrityError(
                    f"refusing to sign: the stored tree does not extend head #{previous.seq}; run `siloguard audit verify`"
                ) from None
        head = signer.sign(
            seq=0 if previous is None else previous.seq + 1,
            tree_size=size,
            root_hash=root,
            timestamp_ms=self._now_ms() if previous is None else max(self._now_ms(), previous.timestamp_ms + 1),
        )
        conn.execute(
            insert(_H),
            [{"seq": head.seq, "tree_size": head.tree_size, "root_hash": head.root_hash,
              "timestamp_ms": head.timestamp_ms, "key_id": head.key_id, "signature": head.signature}],
        )
        return head

    def _frontier(self, conn: Connection, size: int) -> Frontier:
        keys = Frontier.keys(size)
        found = _lookup(conn, keys)
        missing = [k for k in keys if k not in found]
        if missing:
            raise AuditIntegrityError(
                f"the audit log's Merkle node store lacks node {missing[0]}: run `siloguard audit verify`"
            )
        return Frontier(size, [found[k] for k in keys])

    # ---- reading ------------------------------------------------------------------
    def size(self) -> int:
        with self._engine.connect() as conn:
            return _size(conn)

    def heads(self) -> list[SignedTreeHead]:
        with self._engine.connect() as conn:
            return all_heads(conn)

    def latest_head(self) -> SignedTreeHead | None:
        with self._engine.connect() as conn:
            return latest_head(conn)

    def get(self, event_id: str) -> StoredEvent:
        with self._engine.connect() as conn:
            return _get(conn, event_id)

    def iter_events(self, start: int = 0, stop: int | None = None, *, batch: int = 10_000) -> Iterator[StoredEvent]:
        """Stored events with ``start <= index < stop``, in log order."""
        query = select(_E.c.seq, _E.c.body, _E.c.leaf_hash).where(_E.c.seq >= start).order_by(_E.c.seq)
        if stop is not None:
            query = query.where(_E.c.seq < stop)
        with self._engine.connect() as conn:
            for seq, body, leaf in conn.execution_options(yield_per=batch).execute(query):
                yield StoredEvent(seq, bytes(body), bytes(leaf))

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` events (all by default), from the node store."""
        with self._engine.connect() as conn:
            n = _size(conn) if size is None else size
            return self._range_hash(conn, 0, n)

    def _range_hash(self, conn: Connection, start: int, end: int) -> bytes:
        if start == end:
            return EMPTY_ROOT
        return resolve([(start, end)], lambda keys: _lookup(conn, keys))[0]

    def inclusion_path(self, index: int, size: int) -> list[bytes]:
        """``PATH(index, D[0:size])`` from the node store."""
        with self._engine.connect() as conn:
            return _inclusion_path(conn, index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """``PROOF(old, D[0:new])`` (RFC 9162 2.1.4.1) from the node store."""
        with self._engine.connect() as conn:
            if new > _size(conn):
                raise AuditError(f"the log holds fewer than {new} events")
            try:
                ranges = consistency_ranges(old, new)
            except ValueError as exc:
                raise AuditError(str(exc)) from None
            return resolve(ranges, lambda keys: _lookup(conn, keys))

    def prove(self, event_id: str, *, head: SignedTreeHead | None = None) -> InclusionProof:
        """Inclusion proof of ``event_id`` in the tree of ``head`` (default: the latest signed head)."""
        with self._engine.connect() as conn:
            stored = _get(conn, event_id)
            if head is None:
                head = latest_head(conn)
                if head is None:
                    raise AuditError("no signed tree head yet: sign one with `siloguard audit head`")
            if stored.index >= head.tree_size:
                raise AuditError(
                    f"event {event_id} is newer than tree head #{head.seq} (size {head.tree_size}): "
                    "sign a new head with `siloguard audit head`"
                )
            path = _inclusion_path(conn, stored.index, head.tree_size)
        return InclusionProof(stored.index, stored.body, tuple(path), head)

    def verify(self, public_key: Ed25519PublicKey, *, against: SignedTreeHead | None = None) -> VerifyReport:
        """Recompute the whole log from its events and check every head; see :mod:`.verify`."""
        from siloguard.audit.verify import verify_log

        with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for all reads
            with conn.begin():
                return verify_log(conn, public_key, against=against)


class GroupCommitSink:
    """:class:`~siloguard.audit.AuditSink` for many threads sharing one log (group commit).

    ``record`` returns once its event is durably committed. One writer thread commits:
    whatever events were recorded while it wrote the previous transaction go into the next
    one (up to ``max_batch``), so a busy process pays one commit per batch, not per event.
    If a batch is refused, its events are retried one by one so that only the faulty
    event's caller gets the error. ``close()`` (or leaving a ``with`` block) commits what is
    queued and stops the writer.
    """

    def __init__(self, log: AuditLog, *, max_batch: int = 1000) -> None:
        if max_batch < 1:
            raise AuditError("max_batch must be >= 1")
        self._log = log
        self._max = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._closed = False
        self.commits = 0  # transactions written, for monitoring

    def record(self, event: AuditEvent) -> EventId:
        if not isinstance(event, AuditEvent):
            raise AuditError("only AuditEvent objects can be recorded")
        mine = _Pending(event)
        with self._lock:
            if self._closed:
                raise AuditError("this audit sink is closed: nothing was written")
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="siloguard-audit-writer", daemon=True)
                self._writer.start()
            self._queue.put(mine)
        mine.done.wait()
        if mine.error is not None:
            raise mine.error
        return event.event_id

    def close(self) -> None:
        with self._lock:
            self._closed = True
            writer, self._writer = self._writer, None
            if writer is not None:
                self._queue.put(None)
        if writer is not None:
            writer.join()

    def __enter__(self) -> GroupCommitSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: Sequence[_Pending]) -> None:
        try:
            self._log.append([p.event for p in batch])
            self.commits += 1
        except AuditError as exc:
            if len(batch) > 1:
                for p in batch:
                    self._commit([p])
                return
            batch[0].error = exc
        except BaseException as exc:  # e.g. the database went away: every caller learns it
            for p in batch:
                p.error = exc
        for p in batch:
            p.done.set()


class _Pending:
    __slots__ = ("done", "error", "event")

    def __init__(self, event: AuditEvent) -> None:
        self.event = event
        self.done = threading.Event()
        self.error: BaseException | None = None


# ---- queries ------------------------------------------------------------------------


def _get(conn: Connection, event_id: str) -> StoredEvent:
    if not isinstance(event_id, str) or len(event_id) > 64:
        raise AuditError("an event id is a UUID such as 3f2b8c1e-...; check the id")
    row = conn.execute(EVENT_BY_ID, {"event_id": event_id}).first()
    if row is None:
        raise AuditError(f"no event {event_id} in the audit log")
    return StoredEvent(int(row.seq), bytes(row.body), bytes(row.leaf_hash))


def _inclusion_path(conn: Connection, index: int, size: int) -> list[bytes]:
    try:
        ranges = inclusion_ranges(index, size)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    return resolve(ranges, lambda keys: _lookup(conn, keys))
