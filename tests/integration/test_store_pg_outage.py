"""The PostgreSQL store when its server goes away: connections the server ended are replaced
before anyone sees an error, the pool answers again within seconds of an outage's end, and
closing never waits for a server that stopped answering. The server is reached through a
relay of the test's own, which can cut every connection or swallow everything. And every
connection is bounded: keepalives, a TCP user timeout, statement and idle timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bridge.errors import StoreError
from bridge.models import Attempt, DeliveryState, Event, RecordState
from bridge.store.base import AttemptOutcome, ScanCommit
from bridge.store.pg import PgStore
from bridge.store.pg_pool import RECONNECT_S, Pool
from bridge.store.pg_schema import Conn
from bridge.store.pg_url import NETWORK_DEFAULTS
from tests.pgdb import fresh_schema, require_pg

DONE = AttemptOutcome(DeliveryState.DELIVERED)
OK = Attempt(1.0, 200, 1.0, None, "")
RECOVERY_S = 5.0  # how soon after the server answers again the store must answer
CLOSE_BOUND_S = 6.0  # how long closing may take when the server answers nothing


class Relay:
    """A TCP relay to the server: `down()` cuts every connection and closes new ones at
    once (a server that is not there); `blackhole()` swallows what either side sends and
    closes nothing (a server that stopped answering); `up()` relays again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "up"
        self.swallowed = 0  # bytes the client sent into the blackhole
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "down":
                return
            if self.mode == "blackhole":
                await self._pipe(reader, None)
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer, client=False)
            )
        except OSError:
            pass
        finally:
            writer.transport.abort()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, *, client: bool = True
    ) -> None:
        try:
            while data := await src.read(65536):
                if self.mode == "blackhole" or dst is None:
                    self.swallowed += len(data) if client else 0
                    continue
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        if dst is not None and self.mode != "blackhole":
            dst.transport.abort()

    def down(self) -> None:
        self.mode = "down"
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def up(self) -> None:
        self.mode = "up"

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_schema(require_pg(request.node.nodeid)) as url:
        yield url


@pytest.fixture
async def relay(pg_url: str) -> AsyncIterator[tuple[Relay, str]]:
    """A relay to the server, and the URL of the test's schema through it."""
    parts = urlsplit(pg_url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    yield relay, urlunsplit(parts._replace(netloc=netloc))
    await relay.close()


def event(n: int) -> Event:
    return Event(f"evt_{n}", "denoise.completed", f"r{n}", float(n), None, {"n": n})


@pytest.mark.parametrize("wait_ms", [5000, 0], ids=["ended", "ending"])
async def test_the_store_answers_at_once_after_its_connections_are_terminated(
    pg_url: str, wait_ms: int
) -> None:
    """Ended (the server's goodbye already on the socket): each connection is replaced
    before use; still ending: an operation that meets one runs again on another."""
    name = f"outage_{uuid.uuid4().hex[:12]}"
    store = PgStore(f"{pg_url}&application_name={name}", db_clock=False, pool_max=4)
    await store.open()
    try:
        await store.commit_scan(ScanCommit([RecordState("r1", "pending", "t")], [], now=1.0))
        # several operations at once: the pool holds a few connections
        await asyncio.gather(*(store.known_states(["r1"]) for _ in range(8)))
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
            cur = await admin.execute(
                "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (wait_ms, name),
            )
            ended = [row[0] for row in await cur.fetchall()]
        assert ended and all(ended)
        # at once, every kind of operation answers: nothing of the outage shows
        await store.ping()
        done = await store.commit_scan(ScanCommit([], [(event(2), ["a"])], now=2.0))
        assert done.deliveries == 1
        [claimed] = await store.claim_due(now=2.0, limit=1, lease_s=30.0, subscribers=["a"])
        assert await store.finish_attempt(claimed, OK, DONE)
        states = await asyncio.gather(*(store.known_states(["r1"]) for _ in range(8)))
        assert all(found == {"r1": RecordState("r1", "pending", "t")} for found in states)
    finally:
        await store.close()


async def test_the_store_answers_again_within_seconds_of_an_outage_ending(
    relay: tuple[Relay, str],
) -> None:
    proxy, url = relay
    store = PgStore(url, db_clock=False, open_timeout_s=2.0)
    await store.open()
    try:
        await store.ping()
        proxy.down()
        with pytest.raises(StoreError):
            await store.ping()
        # down long enough for the pool to give a lost connection up (psycopg_pool's own
        # backoff would by then wait 8 s, then 16 s, … before it tried again)
        deadline = time.monotonic() + 4 * RECONNECT_S
        while store.reconnects_failed == 0:
            assert time.monotonic() < deadline, "the pool never gave up a lost connection"
            await asyncio.sleep(0.05)
        proxy.up()
        back = time.monotonic()
        while True:
            with contextlib.suppress(StoreError):
                await store.ping()
                break
            assert time.monotonic() - back < RECOVERY_S, "still not answering"
            await asyncio.sleep(0.05)
        assert await store.get_meta("nothing") is None
    finally:
        await store.close()


async def test_close_returns_promptly_when_the_server_stops_answering(
    relay: tuple[Relay, str],
) -> None:
    proxy, url = relay
    store = PgStore(url, db_clock=False)
    await store.open()
    await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=1.0))
    [claimed] = await store.claim_due(now=1.0, limit=1, lease_s=30.0, subscribers=["a"])
    proxy.blackhole()
    finishing = asyncio.create_task(store.finish_attempt(claimed, OK, DONE))
    deadline = time.monotonic() + 10.0
    while proxy.swallowed == 0:  # the attempt's batch is on its way to nowhere
        assert time.monotonic() < deadline, "the attempt was never sent"
        await asyncio.sleep(0.02)
    started = time.monotonic()
    await asyncio.wait_for(store.close(), CLOSE_BOUND_S)
    assert time.monotonic() - started < CLOSE_BOUND_S
    with pytest.raises(StoreError, match="closed"):
        await finishing


async def settings_of(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The libpq parameters and the timeouts of a connection of a store's pool at `url`."""
    pool = Pool(url, size=1, open_timeout_s=5.0, db_clock=False)
    await pool.open()
    try:

        async def look(conn: Conn) -> tuple[dict[str, str], dict[str, str]]:
            cur = await conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('statement_timeout', 'idle_in_transaction_session_timeout', 'jit')"
            )
            return conn.info.get_parameters(), {k: v for k, v in await cur.fetchall()}

        return await pool.read("looking", look)
    finally:
        await pool.close()


async def test_every_connection_is_bounded_unless_the_url_says_otherwise(pg_url: str) -> None:
    params, session = await settings_of(pg_url)
    assert {k: params.get(k) for k in NETWORK_DEFAULTS} == NETWORK_DEFAULTS
    assert session == {
        "statement_timeout": "30000",
        "idle_in_transaction_session_timeout": "60000",
        "jit": "off",
    }
    own = f"{pg_url}%20-cstatement_timeout%3D5s&keepalives_idle=60&tcp_user_timeout=9000"
    params, session = await settings_of(own)
    assert (params["keepalives_idle"], params["tcp_user_timeout"]) == ("60", "9000")
    assert params["keepalives_count"] == "3"
    assert session["statement_timeout"] == "5000"
    assert session["idle_in_transaction_session_timeout"] == "60000"
