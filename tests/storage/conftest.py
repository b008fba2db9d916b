from tests.storage.databases import database_url, migrated_engine

__all__ = ["database_url", "migrated_engine"]
