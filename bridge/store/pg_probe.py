"""Looking at a PostgreSQL store without changing it: for `check` and `status`, which must
create nothing and work beside running replicas. One connection, read-only queries: the
schema's version (0: no store yet), the store's id, when a scan last saw a record, and who
holds the poller's lease. Also the one-line errors of a server that cannot be reached."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import psycopg

from bridge.config_store import shown_store_url
from bridge.errors import StoreError
from bridge.store import pg_leader
from bridge.store.base import LeaderState
from bridge.store.pg_schema import Conn, applied_version, current_schema, read_store_id, too_new
from bridge.store.pg_url import invalid, network_params, parse, scrubbed


@dataclass(frozen=True, slots=True)
class PgProbed:
    """What the database holds for the store, as far as a reader can tell."""

    schema_version: int  # 0: no store in this schema yet (the first `run` creates it)
    store_id: str | None = None
    last_seen_at: float | None = None  # when a scan last saw a record (a successful poll)
    leader: LeaderState | None = None  # the poller's lease (None: no store yet)


def reason(exc: BaseException, url: str) -> str:
    """The first line of an error (with the next one when it only introduces it), URLs cut
    to their origin, `url`'s credentials hidden (`pg_url.scrubbed`)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:
        first = f"{first} {lines[1]}"
    return scrubbed(first, url)


def unreachable(url: str, exc: BaseException) -> StoreError:
    """The error of a server that cannot be reached: where (no user or password) and why."""
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:
        return invalid(url)  # libpq could not read the URL: its message quotes it
    return StoreError(f"cannot reach PostgreSQL at {shown_store_url(url)}: {reason(exc, url)}")


async def connect(url: str, timeout_s: float) -> Conn:
    """A connection of its own (autocommit, no prepared statements, keepalives unless the
    URL sets them), or `unreachable`; `StoreError` without trying when the URL is invalid."""
    params = parse(url)
    try:
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                url,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=max(1, math.ceil(timeout_s)),
                **network_params(params),
            ),
            timeout=timeout_s + 1,
        )
    except (psycopg.Error, OSError, TimeoutError) as exc:
        raise unreachable(url, exc) from None


async def probe_pg(url: str, timeout_s: float = 5) -> PgProbed:
    """Read the store at `url` without creating or migrating anything. `StoreError` (one
    line saying why) when the server cannot be reached or `run` could not use the store."""
    where = shown_store_url(url)
    conn = await connect(url, timeout_s)
    async with conn:
        try:
            return await asyncio.wait_for(_read(conn, where), timeout=timeout_s)
        except (psycopg.Error, TimeoutError) as exc:
            raise StoreError(f"cannot read the store at {where}: {reason(exc, url)}") from None


async def _read(conn: Conn, where: str) -> PgProbed:
    try:
        await current_schema(conn)
    except StoreError as exc:
        raise StoreError(f"cannot open store {where}: {exc}") from None
    version = await applied_version(conn)
    if not version:
        return PgProbed(0)
    if (problem := too_new(version)) is not None:
        raise StoreError(f"cannot open store {where}: {problem}")
    row = await (await conn.execute("SELECT MAX(seen_at) FROM records")).fetchone()
    seen = None if row is None or row[0] is None else float(row[0])
    return PgProbed(version, await read_store_id(conn), seen, await pg_leader.read(conn))
