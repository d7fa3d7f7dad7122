"""The configured store: a SQLite file, or a PostgreSQL database replicas share."""

from __future__ import annotations

import secrets

from bridge.config import Settings
from bridge.store.base import Store
from bridge.store.sqlite import SqliteStore


def build_store(settings: Settings, *, exclusive: bool = False, migrate: bool = True) -> Store:
    """The store `settings` name. `exclusive` (for `run`, SQLite): hold its lock file, so a
    second process on the same file is refused (PostgreSQL is shared by design). `migrate`
    off (commands that only look, such as `status` and `deliveries`, PostgreSQL): opening
    never creates nor migrates the schema, and refuses a store at another version than this
    bridge's; SQLite ignores it."""
    max_attempts = 1 + len(settings.delivery.retry_schedule_s)
    if settings.store.is_postgres:
        from bridge.store.pg import PgStore

        # the lease names this process, unique even if two were given the same replica id
        holder = f"{settings.store.replica_id}#{secrets.token_hex(4)}"
        return PgStore(
            settings.store.url, max_attempts=max_attempts, replica_id=holder, migrate=migrate
        )
    return SqliteStore(settings.store.sqlite_path(), exclusive=exclusive, max_attempts=max_attempts)
