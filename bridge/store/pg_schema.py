"""The PostgreSQL schema: versioned SQL files (`pg_migrations/NNNN_name.sql`), applied at
open in one transaction under an advisory lock, and recorded in `schema_migrations`.

Every object is created unqualified, in the connection's current schema (the first existing
one of its `search_path`); everything that must not reach across schemas (advisory lock
keys, the wake-up channel) is derived from `current_schema()`. Replicas opening an empty
database at once queue on the lock: the first applies the migrations, the others find them
applied. Append a file to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import TypeAlias

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from bridge.errors import StoreError

Conn: TypeAlias = AsyncConnection[TupleRow]

STORE_ID = "store_id"  # meta key: this store's id (random hex, made by the first migration)
_FILE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def lock_key(sql_text: str) -> str:
    """`sql_text` (an SQL expression giving a name) as an advisory lock key of this schema."""
    return f"hashtextextended('munsit_bridge:' || current_schema() || ':' || {sql_text}, 0)"


@lru_cache(maxsize=1)
def migrations() -> tuple[str, ...]:
    """The scripts of the migrations this bridge knows, version 1 first."""
    found: dict[int, str] = {}
    for item in files("bridge.store").joinpath("pg_migrations").iterdir():
        match = _FILE.fullmatch(item.name)
        if match is not None:
            found[int(match.group(1))] = item.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise StoreError(f"PostgreSQL migrations are not numbered 1 to n: {sorted(found)}")
    return tuple(found[version] for version in sorted(found))


@dataclass(frozen=True, slots=True)
class Migrated:
    created: bool  # the schema held no store before
    version: int
    store_id: str | None
    schema: str  # the current schema, where the store is


async def current_schema(conn: Conn) -> str:
    """The schema the store's objects go in; `StoreError` when the search path names none
    that exists."""
    row = await (await conn.execute("SELECT current_schema()")).fetchone()
    if row is None or row[0] is None:
        raise StoreError(
            "no schema to keep the store in: the search_path names no schema that exists"
        )
    return str(row[0])


async def applied_version(conn: Conn) -> int | None:
    """The newest migration applied in the current schema; None when it has no store."""
    cur = await conn.execute(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
        " AND tablename = 'schema_migrations'"
    )
    if await cur.fetchone() is None:
        return None
    row = await (await conn.execute("SELECT MAX(version) FROM schema_migrations")).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def too_new(version: int) -> str | None:
    """Why a store of schema `version` cannot be used by this bridge, if it cannot."""
    known = len(migrations())
    if version > known:
        return f"schema version {version} is newer than this bridge knows ({known})"
    return None


async def read_store_id(conn: Conn) -> str | None:
    row = await (
        await conn.execute("SELECT value FROM meta WHERE key = %s", (STORE_ID,))
    ).fetchone()
    return None if row is None else str(row[0])


async def migrate(conn: Conn) -> Migrated:
    """Bring the current schema's store to the newest version. The caller holds a
    transaction: the lock is held, and every migration applied, until it commits."""
    schema = await current_schema(conn)
    await conn.execute(f"SELECT pg_advisory_xact_lock({lock_key('%s')})", ("migrate",))
    version = await applied_version(conn)
    if version is None:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = 0
    if (problem := too_new(version)) is not None:
        raise StoreError(problem)
    scripts = migrations()
    for number, script in enumerate(scripts[version:], start=version + 1):
        await conn.execute(script)
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
    return Migrated(version == 0, len(scripts), await read_store_id(conn), schema)


async def inspect(conn: Conn) -> Migrated:
    """The current schema's store as it is, for a command that must not change it:
    `StoreError` when there is none or its version is not this bridge's."""
    schema = await current_schema(conn)
    version = await applied_version(conn)
    known = len(migrations())
    if not version:
        raise StoreError(
            f"the schema {schema} holds no store (schema version 0, this bridge's is {known}):"
            " `munsit-bridge run` creates it"
        )
    if version != known:
        fix = "`munsit-bridge run` migrates it" if version < known else "upgrade this bridge"
        raise StoreError(
            f"the store is at schema version {version}, this bridge's is {known}: {fix}"
        )
    return Migrated(False, version, await read_store_id(conn), schema)
