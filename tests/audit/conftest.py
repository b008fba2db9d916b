from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from siloguard.audit.log import AuditLog
from tests.audit.helpers import Keys, make_keys
from tests.storage.databases import database_url, migrated_engine

__all__ = ["audit_log", "database_url", "keys", "migrated_engine"]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    return make_keys(key_dir)


@pytest.fixture
def audit_log(migrated_engine: Engine, keys: Keys) -> Iterator[AuditLog]:
    """A log that signs heads only on demand (tests decide when)."""
    log = AuditLog(migrated_engine, signer=keys.signer, head_every_events=0, head_every_seconds=0)
    yield log
