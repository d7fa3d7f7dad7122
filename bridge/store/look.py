"""Looking at the configured store without changing it, whichever backend it is: for
`check`, `status` and `deliveries`, which create nothing and work beside running bridges.

SQLite: the file read-only and its lock probed (`sqlite_probe`). PostgreSQL: the schema's
version, store id and who holds the poller's lease, read without migrating (`pg_probe`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import Settings
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_probe import lock_holder, probe


@dataclass(frozen=True, slots=True)
class Look:
    """What the store holds and who uses it, as far as a reader can tell."""

    where: str  # the file, or the server and database (no user-info)
    exists: bool  # a schema is there (the first `run` creates it)
    schema_version: int = 0
    store_id: str | None = None
    last_seen_at: float | None = None  # when a scan last saw a record (a successful poll)
    running: bool = False  # a bridge uses it: holds the file's lock, or the poller's lease
    pid: int | None = None  # SQLite: the lock holder's pid
    leader: str | None = None  # PostgreSQL: the replica holding the poller's lease
    last_poll_at: float | None = None  # PostgreSQL: the leader's last successful poll


async def look(settings: Settings) -> Look:
    """`StoreError` (one line saying why) when the store cannot be read or `run` could not
    use it."""
    cfg = settings.store
    if cfg.is_postgres:
        from bridge.store.pg_probe import probe_pg

        found = await probe_pg(cfg.url)
        leader = found.leader
        return Look(
            cfg.shown(),
            found.schema_version > 0,
            found.schema_version,
            found.store_id,
            found.last_seen_at,
            running=leader is not None and leader.replica is not None,
            leader=None if leader is None else leader.replica,
            last_poll_at=None if leader is None else leader.last_poll_at,
        )
    path = cfg.sqlite_path()
    probed = probe(path, busy_timeout_s=SqliteStore.busy_timeout_s)
    holder = lock_holder(path)
    return Look(
        str(path),
        probed.exists,
        probed.schema_version,
        probed.store_id,
        probed.last_seen_at,
        running=holder.held,
        pid=holder.pid,
    )


def store_line(found: Look) -> str:
    line = where_line(found.where, found.exists, found.schema_version)
    return line if found.leader is None else f"{line}; polling: replica {found.leader}"


def where_line(where: str, exists: bool, schema_version: int | None) -> str:
    """`store: …` saying where the store is and its schema version, or that the first run
    creates it."""
    if not exists and where.startswith("postgres"):
        return f"store: {where} has no bridge tables yet (the first run creates them)"
    if not exists:
        return f"store: {where} does not exist yet (the first run creates it)"
    return f"store: {where} (schema version {schema_version})"
