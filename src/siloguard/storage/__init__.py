"""siloguard.storage: the SQL database (SQLite file by default, PostgreSQL by URL).

A sink: it imports nothing from the packages above it.
"""

from siloguard.storage.db import (
    Leader,
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
    "Leader",
    "also_hold",
    "create_engine",
    "current_revision",
    "exclusive",
    "head_revision",
    "reads",
    "require_current_schema",
    "upgrade_database",
]
