"""Engines, serialised write transactions and schema migrations.

- :func:`create_engine` makes an engine for a ``sqlite:///`` file (WAL journal,
  ``synchronous=FULL`` so a committed transaction survives a power cut, a generous busy
  timeout) or a ``postgresql+psycopg://`` URL.
- :func:`exclusive` opens a transaction that no other writer of the same lock runs
  concurrently, in any process: SQLite ``BEGIN IMMEDIATE`` (the database's write lock,
  taken before the first read), PostgreSQL ``pg_advisory_xact_lock`` (released at commit or
  rollback). Read-modify-write sequences such as "read the tree size, append after it"
  must run inside one.
- :func:`upgrade_database` runs the Alembic migrations in ``storage/migrations`` up to head
  (under the same lock, so two processes can call it at once); :func:`require_current_schema`
  refuses a database that is behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, OperationalError

from siloguard.errors import StorageError

__all__ = [
    "MIGRATIONS",
    "Leader",
    "also_hold",
    "create_engine",
    "exclusive",
    "head_revision",
    "current_revision",
    "reads",
    "require_current_schema",
    "upgrade_database",
]

MIGRATIONS = Path(__file__).with_name("migrations")
_EXCLUSIVE = "siloguard_exclusive"
_SQLITE_BUSY_TIMEOUT_S = 60.0


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def create_engine(url: str, *, pre_ping: bool = True, application_name: str | None = None, **kwargs: Any) -> Engine:
    """An engine for a SQLite file or a PostgreSQL server, set up for durable appends.

    ``pre_ping`` (PostgreSQL): test each pooled connection with a round trip before handing it
    out, so a connection the server dropped (a restart, a fail-over) is replaced unseen. The
    API turns it off: a request's reads are one statement each, so the ping doubled their round
    trips; a dropped connection there fails one request with 503 instead, and SQLAlchemy then
    renews the whole pool (``siloguard.api.errors``). ``application_name`` (PostgreSQL) names
    the process's connections in ``pg_stat_activity``, for the database's operators.
    """
    try:
        parsed = sa.engine.make_url(url)
    except ArgumentError:
        raise StorageError("database URL is not a valid SQLAlchemy URL: use sqlite:///PATH or postgresql+psycopg://...") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StorageError("an in-memory SQLite database cannot be shared between connections: use sqlite:///PATH")
        engine = sa.create_engine(parsed, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S}, **kwargs)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        if application_name and "application_name" not in parsed.query:
            kwargs["connect_args"] = {**kwargs.get("connect_args", {}), "application_name": application_name}
        return sa.create_engine(parsed, pool_pre_ping=pre_ping, **kwargs)
    raise StorageError(f"unsupported database backend {backend!r}: use sqlite:///PATH or postgresql+psycopg://...")


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own implicit BEGIN is turned off so that we choose the kind of BEGIN:
    # the recipe from SQLAlchemy's SQLite dialect documentation.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten with zeros, not left in free pages of the file:
            # an erasure must not survive in the database file (docs/API.md, "What is kept").
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages per connection
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return  # reads(): each statement on its own, no transaction
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_EXCLUSIVE) else "BEGIN")


def reads(engine: Engine) -> Engine:
    """The same engine and pool for reads that are one statement each: autocommit.

    A read on the plain engine opens a transaction (``BEGIN``, on PostgreSQL a round trip of
    its own) and ends it with a ``ROLLBACK`` when the connection goes back to the pool; one
    statement is its own consistent snapshot, so the hot read paths of the API (a subject's
    token, an API key, a subject's consent) skip both. Not for anything that reads twice and
    relies on the two reads agreeing, and never for writes.
    """
    # Kept on the engine itself: the autocommit engine refers to the engine it was made from, so a
    # weak-keyed table of them never let an engine go; a cycle of the two is collected.
    held = engine.__dict__.get(_READS)
    if held is None:
        held = engine.__dict__[_READS] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return held


_READS = "_siloguard_reads"


@contextmanager
def exclusive(engine: Engine, lock: str) -> Iterator[Connection]:
    """A write transaction serialised against every other ``exclusive(…, lock)`` on this database.

    Commits when the block ends, rolls back (nothing written) if it raises.
    """
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.execution_options(**{_EXCLUSIVE: True})
                with conn.begin():
                    yield conn
            else:
                with conn.begin():
                    also_hold(conn, lock)
                    yield conn
    except OperationalError as exc:
        raise StorageError(f"database error on {engine.url.get_backend_name()}: {_first_line(exc)}") from None


def also_hold(conn: Connection, lock: str) -> None:
    """Take ``lock`` too, for the rest of the write transaction ``conn`` (from :func:`exclusive`
    on another lock): one transaction that writes what two locks guard. Take the locks in the
    same order everywhere. On SQLite there is nothing to take: :func:`exclusive` already holds
    the database's only write lock."""
    if not conn.in_transaction() or (conn.dialect.name == "sqlite" and not conn.get_execution_options().get(_EXCLUSIVE)):
        # On SQLite a plain (deferred) transaction would read before it holds the write lock.
        raise StorageError(f"lock {lock!r} is taken inside a write transaction from exclusive(), not another one")
    if conn.dialect.name != "sqlite":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(lock)})


class Leader:
    """Which one of several processes on a database runs a job (the API workers' request sweep).

    Whoever holds a database-wide lock named ``name`` leads: on PostgreSQL a session advisory
    lock (``pg_try_advisory_lock``) on a connection the leader keeps, released when it closes it
    or the server drops it; on SQLite an exclusive ``flock`` on a file beside the database,
    released when the process ends. Never blocks: :meth:`acquire` answers whether this process
    leads now; a follower asks again on its next turn and takes over when the leader is gone.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine, self.name = engine, name
        self._conn: Connection | None = None
        self._file: Any = None
        self._key = 0

    def acquire(self) -> bool:
        if self.engine.dialect.name == "sqlite":
            return self._acquire_file()
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT 1")).all()  # still our session: still ours
                return True
            except Exception:  # noqa: BLE001  the session (and its lock) is gone: try again below
                self.release()
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            # Advisory locks are per database, not per schema: two deployments in two schemas of
            # one database each have their own leader.
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
            self._key = _lock_key(f"{self.name}@{schema}")
            held = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}).scalar())
        except Exception:
            conn.close()
            raise
        if not held:
            conn.close()
            return False
        self._conn = conn
        return True

    def _acquire_file(self) -> bool:
        import fcntl

        database = self.engine.url.database
        if not database or database == ":memory:":
            return True  # one process's private database
        if self._file is not None:
            return True
        handle = open(f"{database}.{self.name}.lock", "a")  # noqa: SIM115  held open while leading
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:  # the connection goes back to the pool: the session lives on, so unlock it first
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                self._conn.close()
            except Exception:  # noqa: BLE001  a broken session: closed, not pooled (its locks go with it)
                self._conn.invalidate()
                self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _alembic_config(conn: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration this siloguard ships (read once per process: Alembic imports every
    migration script to find it, an eighth of a small store's round in a profile)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at; ``None`` for a database siloguard never set up."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise StorageError(f"cannot open the database: {_first_line(exc)}") from None


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest), creating tables as needed."""
    from alembic import command

    with exclusive(engine, "siloguard.migrations") as conn:
        command.upgrade(_alembic_config(conn), revision)


def require_current_schema(engine: Engine) -> None:
    """Raise :class:`StorageError` unless the database is at the newest migration."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "has no siloguard tables" if current is None else f"is at schema {current}, this siloguard needs {head}"
        raise StorageError(
            f"the database {engine.url.render_as_string(hide_password=True)} {state}: "
            "run `siloguard db upgrade` (or siloguard.storage.upgrade_database) first"
        )
