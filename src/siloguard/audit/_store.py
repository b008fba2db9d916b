"""Queries on the audit tables shared by the log and the verifier (package-internal)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from siloguard.audit.heads import SignedTreeHead
from siloguard.audit.merkle import NodeKey
from siloguard.storage.orm import AuditEventRow, AuditHeadRow, AuditNodeRow

EVENTS = AuditEventRow.__table__
NODES = AuditNodeRow.__table__
HEADS = AuditHeadRow.__table__


# Built once: statement construction costs more than SQLite takes to answer them.
_MAX_SEQ = select(func.max(EVENTS.c.seq))
_LATEST_HEAD = select(HEADS).order_by(HEADS.c.seq.desc()).limit(1)
_ALL_HEADS = select(HEADS).order_by(HEADS.c.seq)
EVENT_BY_ID = select(EVENTS.c.seq, EVENTS.c.body, EVENTS.c.leaf_hash).where(EVENTS.c.event_id == bindparam("event_id"))


def tree_size(conn: Connection) -> int:
    """Events in the log: one more than the highest index (gaps are the verifier's business)."""
    top = conn.execute(_MAX_SEQ).scalar()
    return 0 if top is None else int(top) + 1


def head_from_row(row: Any) -> SignedTreeHead:
    return SignedTreeHead(
        seq=int(row.seq),
        tree_size=int(row.tree_size),
        root_hash=bytes(row.root_hash),
        timestamp_ms=int(row.timestamp_ms),
        key_id=str(row.key_id),
        signature=bytes(row.signature),
    )


def latest_head(conn: Connection) -> SignedTreeHead | None:
    row = conn.execute(_LATEST_HEAD).first()
    return None if row is None else head_from_row(row)


def all_heads(conn: Connection) -> list[SignedTreeHead]:
    return [head_from_row(row) for row in conn.execute(_ALL_HEADS)]


@functools.lru_cache(maxsize=512)
def _lookup_sql(leaves: int, inner: int, mark: str) -> str:
    # Equality terms, not a row-value IN list: SQLite answers "(level, idx) IN (VALUES ...)"
    # with a full scan, "(level = ? AND idx = ?) OR ..." with one primary-key search per term.
    parts = []
    if leaves:
        binds = ", ".join([mark] * leaves)
        parts.append(f"SELECT 0, seq, leaf_hash FROM {EVENTS.name} WHERE seq IN ({binds})")
    if inner:
        terms = " OR ".join([f"(level = {mark} AND idx = {mark})"] * inner)
        parts.append(f"SELECT level, idx, hash FROM {NODES.name} WHERE {terms}")
    return " UNION ALL ".join(parts)


def lookup_nodes(conn: Connection, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
    """Perfect nodes by ``(level, index)``: leaves from the events, the rest from the node store.

    One round trip, straight to the driver (a proof needs about 2 log2(n) nodes and this is
    its hot path); keys that are not stored are simply absent from the result.
    """
    leaves = sorted({i for level, i in keys if level == 0})
    inner = sorted({(level, i) for level, i in keys if level > 0})
    if not leaves and not inner:
        return {}
    params: list[int] = [*leaves]
    for level, i in inner:
        params += (level, i)
    sql = _lookup_sql(len(leaves), len(inner), "?" if conn.dialect.paramstyle == "qmark" else "%s")
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return {(int(level), int(idx)): bytes(h) for level, idx, h in rows}


def insert_many(conn: Connection, table: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Bulk insert straight to the driver, in the current transaction: ``COPY`` on
    PostgreSQL, ``executemany`` on SQLite. Per-row SQLAlchemy parameter processing would
    cost more than the database's own work (the values are already ints and bytes)."""
    if conn.dialect.name == "postgresql":
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        dbapi = conn.dialect.dbapi
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except dbapi.Error as exc:  # type: ignore[union-attr]
            # as SQLAlchemy would have raised it (IntegrityError, OperationalError, ...)
            raise DBAPIError.instance(statement, None, exc, dbapi.Error) from exc  # type: ignore[union-attr]
        finally:
            cursor.close()
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    conn.exec_driver_sql(sql, rows)


_cursor_names = itertools.count()


def scan(conn: Connection, sql: str, batch: int = 20_000) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``sql`` in lists of up to ``batch``, straight from the driver, in the current
    transaction (begin one first). PostgreSQL streams through a server-side cursor."""
    dbapi = conn.connection
    if conn.dialect.name == "postgresql":
        cursor = dbapi.driver_connection.cursor(name=f"siloguard_scan_{next(_cursor_names)}")  # type: ignore[union-attr]
    else:
        cursor = dbapi.cursor()
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(batch):
            yield rows
    finally:
        cursor.close()
