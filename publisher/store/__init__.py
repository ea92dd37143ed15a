"""The store: SQLite by default, PostgreSQL by URL, one schema migrated by Alembic on first use."""

from .db import Store, open_store

__all__ = ["Store", "open_store"]
