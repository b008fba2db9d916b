"""siloguard.storage: the SQL database (SQLite file by default, PostgreSQL by URL).

A sink: it imports nothing from the packages above it.
"""

from siloguard.storage.db import (
    also_hold,
    create_engine,
    current_revision,
    exclusive,
    head_revision,
    reads,
    require_current_schema,
    upgrade_database,
)

__all__ = [
    "also_hold",
    "create_engine",
    "current_revision",
    "exclusive",
    "head_revision",
    "reads",
    "require_current_schema",
    "upgrade_database",
]
