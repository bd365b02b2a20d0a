"""Runs and events, durable: SQLite by default, PostgreSQL for several nodes.

:func:`open_store` picks the backend from the settings; everything above the
store (engine, runner, web, CLI) sees only :class:`Store`.
"""

from __future__ import annotations

from typing import Any

from .backend import Store
from .sqlite import SQLiteStore

__all__ = ["Store", "open_store"]


def open_store(settings: Any) -> Store:
    """The store the settings ask for: PostgreSQL for ``db_url``, else SQLite at ``db_path``."""
    if settings.db_url:
        from .postgres import PostgresStore  # psycopg loads only for PostgreSQL

        return PostgresStore(settings.db_url, pool_size=settings.db_pool_size)
    return SQLiteStore(settings.resolved_db_path, settings.db_synchronous)
