"""The configured store: a SQLite file, or a PostgreSQL database replicas share."""

from __future__ import annotations

from bridge.config import Settings
from bridge.store.base import Store
from bridge.store.sqlite import SqliteStore


def build_store(settings: Settings, *, exclusive: bool = False) -> Store:
    """The store `settings` name. `exclusive` (for `run`, SQLite): hold its lock file, so a
    second process on the same file is refused (PostgreSQL is shared by design)."""
    max_attempts = 1 + len(settings.delivery.retry_schedule_s)
    if settings.store.is_postgres:
        from bridge.store.pg import PgStore

        return PgStore(
            settings.store.url, max_attempts=max_attempts, replica_id=settings.store.replica_id
        )
    return SqliteStore(settings.store.sqlite_path(), exclusive=exclusive, max_attempts=max_attempts)
