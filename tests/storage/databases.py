"""Fresh databases for tests: a SQLite file, and PostgreSQL when SILOGUARD_TEST_DATABASE_URL is set.

Each PostgreSQL test gets its own schema (dropped afterwards) through ``search_path`` in the
URL, so tests never see each other's tables and the URL also works in child processes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.storage import create_engine, upgrade_database

PG_ENV = "SILOGUARD_TEST_DATABASE_URL"
BACKENDS = ("sqlite", "postgresql")


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database of ``kind``; PostgreSQL skips when the variable is unset."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'siloguard.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL variant: set {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = "sgtest_" + secrets.token_hex(6)
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        url = sa.engine.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once per backend."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def migrated_engine(database_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to the current schema."""
    engine = create_engine(database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()
