"""Engines, migrations and serialised write transactions, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from siloguard.errors import StorageError
from siloguard.storage import (
    create_engine,
    current_revision,
    exclusive,
    head_revision,
    reads,
    require_current_schema,
    upgrade_database,
)
from siloguard.storage.cli import db_app
from siloguard.storage.orm import Base
from tests.storage.databases import fresh_database


def test_when_database_is_empty_then_schema_check_names_the_command_to_run(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert current_revision(engine) is None
        with pytest.raises(StorageError, match=r"no siloguard tables: run `siloguard db upgrade`"):
            require_current_schema(engine)
    finally:
        engine.dispose()


def test_when_upgraded_then_at_head_with_the_audit_tables_and_upgrading_again_changes_nothing(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        upgrade_database(engine)
        assert current_revision(engine) == head_revision() == "0010_incidents"
        require_current_schema(engine)
        upgrade_database(engine)
        assert current_revision(engine) == head_revision()
        tables = set(sa.inspect(engine).get_table_names())
        assert {"audit_events", "audit_nodes", "audit_heads", "privacy_ledger", "privacy_ledger_rounds", "consent_events", "alembic_version"} <= tables
    finally:
        engine.dispose()


def test_migrations_create_exactly_the_tables_the_orm_declares(migrated_engine: Engine) -> None:
    with migrated_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_sqlite_file_is_durable_wal_with_full_sync(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("mysql://u@h/db", "unsupported database backend 'mysql'"),
        ("not a url", "not a valid SQLAlchemy URL"),
    ],
)
def test_when_url_is_unusable_then_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        create_engine(url)


def test_sqlite_exclusive_transaction_holds_the_write_lock_until_commit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    holder = create_engine(url)
    impatient = sa.create_engine(url, connect_args={"timeout": 0})  # a second writer that does not wait
    upgrade_database(holder)
    try:
        with exclusive(holder, "test.lock") as conn:
            conn.exec_driver_sql("SELECT count(*) FROM audit_events").scalar()
            with impatient.connect() as other:
                other.connection.driver_connection.isolation_level = None
                with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                    other.exec_driver_sql("BEGIN IMMEDIATE")
        with impatient.connect() as other:  # released at commit
            other.connection.driver_connection.isolation_level = None
            other.exec_driver_sql("BEGIN IMMEDIATE")
            other.exec_driver_sql("ROLLBACK")
    finally:
        holder.dispose()
        impatient.dispose()


def test_postgresql_exclusive_transaction_holds_the_advisory_lock_until_commit(tmp_path: Path) -> None:
    from siloguard.storage.db import _lock_key

    with fresh_database("postgresql", tmp_path) as url:  # skips when no PostgreSQL is configured
        engine = create_engine(url)
        try:
            key = _lock_key("test.lock")
            probe = sa.text("SELECT pg_try_advisory_xact_lock(:k)")
            with exclusive(engine, "test.lock"):
                with engine.connect() as other, other.begin():
                    assert other.execute(probe, {"k": key}).scalar() is False
            with engine.connect() as other, other.begin():
                assert other.execute(probe, {"k": key}).scalar() is True
        finally:
            engine.dispose()


def test_exclusive_transactions_serialise_read_modify_write_across_threads(migrated_engine: Engine) -> None:
    """Each thread reads the max index and inserts the next one; without the lock two would
    read the same max and one insert would fail on the primary key."""
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(n: int) -> None:
        try:
            start.wait()
            for _ in range(15):
                with exclusive(migrated_engine, "test.counter") as conn:
                    top = conn.exec_driver_sql("SELECT max(seq) FROM audit_events").scalar()
                    nxt = 0 if top is None else top + 1
                    conn.execute(
                        sa.text("INSERT INTO audit_events (seq, event_id, leaf_hash, body) VALUES (:s, :e, :h, :b)"),
                        {"s": nxt, "e": f"t{n}-{nxt}", "h": b"\0" * 32, "b": b"{}"},
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with migrated_engine.connect() as conn:
        seqs = [r[0] for r in conn.exec_driver_sql("SELECT seq FROM audit_events ORDER BY seq")]
    assert seqs == list(range(60))


def test_db_cli_upgrades_and_reports_the_schema(database_url: str) -> None:
    runner = CliRunner()
    first = runner.invoke(db_app, ["current", "--db", database_url])
    assert first.exit_code == 0, first.output
    assert "database: empty" in first.output
    up = runner.invoke(db_app, ["upgrade", "--db", database_url])
    assert up.exit_code == 0, up.output
    assert "empty -> 0010_incidents" in up.output
    again = runner.invoke(db_app, ["upgrade", "--db", database_url])
    assert "already at 0010_incidents" in again.output


def test_db_cli_refuses_a_bad_url_in_one_line() -> None:
    result = CliRunner().invoke(db_app, ["upgrade", "--db", "mysql://u@h/db"])
    assert result.exit_code == 2  # ConfigError: settings only accept sqlite or postgresql URLs
    assert result.output.count("\n") == 1 and result.output.startswith("error:")


def _in_transaction(conn: sa.Connection) -> bool:
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite":
        return bool(dbapi.in_transaction)  # type: ignore[union-attr]
    from psycopg import pq

    return dbapi.info.transaction_status != pq.TransactionStatus.IDLE  # type: ignore[union-attr]


def test_reads_run_each_statement_outside_a_transaction_on_the_same_pool(migrated_engine: Engine) -> None:
    # The API's hot reads: no BEGIN before the statement and nothing to roll back after it.
    with migrated_engine.connect() as conn:
        conn.execute(sa.text("SELECT 1")).all()
        assert _in_transaction(conn)  # the plain engine opens one (and rolls it back on return)
    reader = reads(migrated_engine)
    assert reads(migrated_engine) is reader and reader.pool is migrated_engine.pool
    with reader.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        assert not _in_transaction(conn)
    with migrated_engine.connect() as conn:  # the pooled connection is handed back as it was
        conn.execute(sa.text("SELECT 1")).all()
        assert _in_transaction(conn)


def test_when_an_engine_with_a_reads_twin_is_dropped_then_both_are_freed(tmp_path: Path) -> None:
    import gc
    import weakref

    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    reader = reads(engine)
    with reader.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    engine.dispose()
    gone = weakref.ref(engine)
    del engine, reader, conn
    gc.collect()
    assert gone() is None


def test_when_several_processes_ask_to_lead_then_one_leads_until_it_lets_go(migrated_engine: Engine) -> None:
    """The API workers' request sweep: one at a time, and another takes over when it is gone."""
    from siloguard.storage import Leader

    other = create_engine(migrated_engine.url.render_as_string(hide_password=False))
    first, second = Leader(migrated_engine, "dsr-sweep"), Leader(other, "dsr-sweep")
    try:
        assert first.acquire()
        assert not second.acquire()
        assert first.acquire()  # still leading: asking again does not give it up
        assert Leader(other, "something-else").acquire()  # another job has its own leader
        first.release()
        assert second.acquire()
        assert not first.acquire()
    finally:
        first.release()
        second.release()
        other.dispose()


def test_when_the_leaders_database_session_is_dropped_then_another_process_takes_over(tmp_path: Path) -> None:
    import os

    from siloguard.storage import Leader
    from tests.storage.databases import fresh_database

    if not os.environ.get("SILOGUARD_TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL only: set SILOGUARD_TEST_DATABASE_URL")
    with fresh_database("postgresql", tmp_path) as url:
        engine, other = create_engine(url), create_engine(url)
        first, second = Leader(engine, "dsr-sweep"), Leader(other, "dsr-sweep")
        try:
            assert first.acquire() and not second.acquire()
            pid = first._conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()  # type: ignore[union-attr]
            with other.connect() as conn:
                # with a timeout the call returns once the backend has ended (PostgreSQL 14+)
                assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar()
            assert second.acquire()  # the server ended the leader's session and its lock
            assert not first.acquire()  # the old leader notices and follows
        finally:
            first.release()
            second.release()
            engine.dispose()
            other.dispose()
