"""The PostgreSQL store's connections: the schema migrated at open (on a connection of its
own), then a small pool; an operation is a transaction (run again when PostgreSQL aborts it
to break a deadlock) or a few autocommitted reads; every driver error becomes a
`StoreError` saying what failed, the server shown without user or password (`pg_url`).

Prepared statements are off (`prepare_threshold=None`): the store works behind PgBouncer in
transaction mode. The database's clock (`now`) is read when `db_clock` asks for it, and its
offset from this process's clock is kept for the times that must be given back on ours.

Nothing waits without bound: connections have TCP keepalives and a TCP user timeout (unless
the URL sets them), a statement timeout and an idle-in-transaction timeout; a caller waits
at most `open_timeout_s` for a connection (then `StoreError`); `close()` waits a few seconds
at most. After an outage the pool is usable again within seconds of the server answering:
it retries a lost connection for `RECONNECT_S`, then starts over at once (not with
psycopg_pool's backoff, which grows to minutes); a connection the server hung up on while
it was idle in the pool (a restart, `pg_terminate_backend`) is replaced before it is used,
and an operation whose connection broke before it could commit runs again on another.
"""

from __future__ import annotations

import math
import select
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from bridge.config_store import shown_store_url
from bridge.errors import StoreError
from bridge.redact import describe
from bridge.store.pg_probe import connect
from bridge.store.pg_schema import Conn, Migrated, inspect, migrate
from bridge.store.pg_url import network_params, parse, scrubbed, session_settings

T = TypeVar("T")

TX_TRIES = 3  # a transaction PostgreSQL chose as a deadlock's victim runs again
_RETRIED = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_DB_NOW = "SELECT extract(epoch FROM clock_timestamp())::double precision"
RECONNECT_S = 5.0  # a lost connection is retried (1 s, 2 s … apart) this long, then anew
CLOSE_S = 1.0  # how long closing waits for the pool's own tasks (then leaves them)


async def _configure(settings: Mapping[str, str], conn: Conn) -> None:
    """A new connection of the pool: no JIT compilation (the claims' plans look costly, an
    index walk with a lookup per row cut short by a LIMIT the estimate cannot see, and
    compiling them would take far longer than running them), and `settings` (the statement
    and idle-in-transaction timeouts), in one round trip."""
    pairs = [("jit", "off"), *settings.items()]
    calls = ", ".join("set_config(%s, %s, false)" for _ in pairs)
    await conn.execute(f"SELECT {calls}", [item for pair in pairs for item in pair])


def _hung_up(conn: Conn) -> bool:
    """Whether the server may have said something to `conn` while it sat idle in the pool:
    a connection in use answers only what it is asked, so anything readable now is the
    server hanging up (or a notice). A look at the socket, no round trip."""
    if conn.broken or conn.closed:
        return True
    try:
        fd = conn.fileno()
        if hasattr(select, "poll"):  # any descriptor number (select's stop at 1024)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


class Pool:
    """Connections to the store at `url`. `db_clock`: `now()` answers the database's clock.
    `migrate`: `open()` creates or migrates the schema; without it, it only checks that the
    store is there at this bridge's version."""

    def __init__(
        self,
        url: str,
        *,
        size: int,
        open_timeout_s: float,
        db_clock: bool,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.where = shown_store_url(url)  # server and database, for messages
        self.size = size
        self.open_timeout_s = open_timeout_s
        self.db_clock = db_clock
        self.migrate = migrate
        self.clock_offset_s = 0.0  # the database's clock minus this process's, last measured
        self.reconnects_failed = 0  # times the pool gave a lost connection up and began anew
        self._pool: AsyncConnectionPool[Conn] | None = None

    def error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.where}: {what}: {scrubbed(describe(exc), self.url)}")

    async def open(self) -> Migrated:
        """Create or migrate the schema (or with `migrate` off, check it), then open the
        pool (`StoreError` saying why not)."""
        params = parse(self.url)
        async with await connect(self.url, self.open_timeout_s) as conn:
            try:
                if self.migrate:
                    async with conn.transaction():
                        migrated = await migrate(conn)
                else:
                    migrated = await inspect(conn)
            except psycopg.Error as exc:
                doing = "create or migrate" if self.migrate else "read"
                raise self.error(f"cannot {doing} the schema", exc) from exc
            except StoreError as exc:
                raise StoreError(f"cannot open store {self.where}: {exc}") from None
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": None,
            "connect_timeout": max(1, math.ceil(self.open_timeout_s)),
            **network_params(params),
        }
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self.size,
            open=False,
            timeout=self.open_timeout_s,
            kwargs=kwargs,
            configure=partial(_configure, session_settings(params)),
            reconnect_timeout=RECONNECT_S,
            reconnect_failed=self._reconnect_failed,
        )
        try:
            await pool.open(wait=True, timeout=self.open_timeout_s)
        except psycopg.Error as exc:
            await pool.close(timeout=CLOSE_S)
            raise self.error("cannot open a pool of connections", exc) from exc
        self._pool = pool
        return migrated

    async def _reconnect_failed(self, pool: AsyncConnectionPool[Any]) -> None:
        """The pool gave up a lost connection after `RECONNECT_S`: try anew at once (it
        would otherwise wait for the next caller, who may already be waiting)."""
        self.reconnects_failed += 1
        if not pool.closed:
            await pool.check()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(timeout=CLOSE_S)

    def _opened(self) -> AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise StoreError(f"store {self.where} is not open")
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A connection of the pool, one the server hung up on replaced first."""
        pool = self._opened()
        conn = await self._usable(pool)
        try:
            yield conn
        finally:
            await pool.putconn(conn)

    async def _usable(self, pool: AsyncConnectionPool[Conn]) -> Conn:
        conn = await pool.getconn()
        for _ in range(self.size):
            if not _hung_up(conn):
                return conn
            try:
                await conn.execute("")  # reads what it said: an error if it hung up
            except psycopg.Error:
                await pool.putconn(conn)  # broken: the pool closes and replaces it
                conn = await pool.getconn()
            except BaseException:
                await pool.putconn(conn)
                raise
            else:
                return conn
        return conn

    async def tx(self, what: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """`fn` in a transaction; run again if PostgreSQL broke a deadlock by aborting it,
        or if the connection broke before the transaction could commit."""
        deadlocks = lost = 0
        while True:
            committing = False
            try:
                async with self._connection() as conn:
                    try:
                        async with conn.transaction():
                            result = await fn(conn)
                            committing = True
                        return result
                    except psycopg.Error:
                        if conn.broken and not committing and lost < self.size:
                            lost += 1  # nothing of it was committed: on another connection
                            continue
                        raise
            except _RETRIED as exc:
                deadlocks += 1
                if deadlocks == TX_TRIES:
                    raise self.error(what, exc) from exc
            except psycopg.Error as exc:
                raise self.error(what, exc) from exc

    async def read(self, what: str, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """`fn` on a connection of the pool, each statement on its own (no transaction);
        run again on another connection if this one broke."""
        lost = 0
        while True:
            try:
                async with self._connection() as conn:
                    try:
                        return await fn(conn)
                    except psycopg.Error:
                        if conn.broken and lost < self.size:
                            lost += 1
                            continue
                        raise
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
