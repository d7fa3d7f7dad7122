"""The PostgreSQL store's connections: the schema migrated at open (on a connection of its
own), then a small pool; an operation is a transaction (run again when PostgreSQL aborts it
to break a deadlock) or a few autocommitted reads; every driver error becomes a
`StoreError` saying what failed, the server shown without user or password.

Prepared statements are off (`prepare_threshold=None`): the store works behind PgBouncer in
transaction mode. The database's clock (`now`) is read when `db_clock` asks for it, and its
offset from this process's clock is kept for the times that must be given back on ours.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from bridge.config_store import shown_store_url
from bridge.errors import StoreError
from bridge.redact import describe
from bridge.store.pg_probe import connect
from bridge.store.pg_schema import Conn, Migrated, migrate

T = TypeVar("T")

TX_TRIES = 3  # a transaction PostgreSQL chose as a deadlock's victim runs again
_RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_DB_NOW = "SELECT extract(epoch FROM clock_timestamp())::double precision"


async def _configure(conn: Conn) -> None:
    """A new connection of the pool: no JIT compilation. The claims' plans look costly (an
    index walk with a lookup per row, cut short by a LIMIT the estimate cannot see), and
    compiling them would take far longer than running them."""
    await conn.execute("SET jit = off")


class Pool:
    """Connections to the store at `url`. `db_clock`: `now()` answers the database's clock."""

    def __init__(self, url: str, *, size: int, open_timeout_s: float, db_clock: bool) -> None:
        self.url = url
        self.where = shown_store_url(url)  # server and database, for messages
        self.size = size
        self.open_timeout_s = open_timeout_s
        self.db_clock = db_clock
        self.clock_offset_s = 0.0  # the database's clock minus this process's, last measured
        self._pool: AsyncConnectionPool[Conn] | None = None

    def error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.where}: {what}: {describe(exc)}")

    async def open(self) -> Migrated:
        """Create or migrate the schema, then open the pool (`StoreError` saying why not)."""
        async with await connect(self.url, self.open_timeout_s) as conn:
            try:
                async with conn.transaction():
                    migrated = await migrate(conn)
            except psycopg.Error as exc:
                raise self.error("cannot create or migrate the schema", exc) from exc
            except StoreError as exc:
                raise StoreError(f"cannot open store {self.where}: {exc}") from None
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.size,
            open=False,
            timeout=self.open_timeout_s,
            kwargs={"autocommit": True, "prepare_threshold": None},
            configure=_configure,
        )
        try:
            await pool.open(wait=True, timeout=self.open_timeout_s)
        except psycopg.Error as exc:
            await pool.close()
            raise self.error("cannot open a pool of connections", exc) from exc
        self._pool = pool
        return migrated

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _opened(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise StoreError(f"store {self.where} is not open")
        return self._pool

    async def tx(self, what: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """`fn` in a transaction, run again if PostgreSQL broke a deadlock by aborting it."""
        pool = self._opened()
        for attempt in range(1, TX_TRIES + 1):
            try:
                async with pool.connection() as conn, conn.transaction():
                    return await fn(conn)
            except _RETRIED as exc:
                if attempt == TX_TRIES:
                    raise self.error(what, exc) from exc
            except psycopg.Error as exc:
                raise self.error(what, exc) from exc
        raise AssertionError("unreachable")

    async def read(self, what: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """`fn` on a connection of the pool, each statement on its own (no transaction)."""
        try:
            async with self._opened().connection() as conn:
                return await fn(conn)
        except psycopg.Error as exc:
            raise self.error(what, exc) from exc

    async def now(self, conn: Conn, now: float) -> float:
        """`now`, or with `db_clock` the database's clock (measuring its offset from ours)."""
        if not self.db_clock:
            return now
        before = time.time()
        row = await (await conn.execute(_DB_NOW)).fetchone()
        assert row is not None
        self.measured(before, float(row[0]))
        return float(row[0])

    def measured(self, sent_at: float, db_now: float) -> None:
        """Record the database's clock `db_now`, read by a query sent at `sent_at`."""
        self.clock_offset_s = db_now - (sent_at + time.time()) / 2
