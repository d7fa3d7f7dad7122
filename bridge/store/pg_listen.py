"""Wake-ups between replicas: PostgreSQL's NOTIFY, on a channel of the store's schema.

A transaction that makes deliveries due at once (a scan that queued some, retry, replay,
release, subscribers restored, a report stored) sends `outbox` on the channel, one that
stores events (a scan, a report) sends `events`, one that changes a subscriber's
health sends `health`, and one that registers a gateway job sends `job:<record id>` (the
record's id as stored, after the `job:` prefix: the leader opens that job's progress
stream); PostgreSQL delivers them when (and only if) it commits. `listen` hands every
payload to its caller unchanged.
Every replica listens on a connection of its own (not one of the pool's: a listening
connection must stay open and idle), reconnecting with a growing pause when it is lost, and
says `reconnected` after each connection, since wake-ups sent meanwhile were missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable

import psycopg
import structlog
from psycopg import sql

from bridge.errors import StoreError
from bridge.redact import describe
from bridge.store.pg_schema import Conn, current_schema
from bridge.store.pg_url import INVALID, network_params, parse, scrubbed

log = structlog.get_logger("bridge.store")

OUTBOX = "outbox"  # deliveries became due without waiting
HEALTH = "health"  # a subscriber's health changed
EVENTS = "events"  # events were stored (the pull feed's long polls and streams)
JOB = "job:"  # + a record id: a job was submitted through the gateway (see `JOB_TARGET`)
RECONNECTED = "reconnected"  # listening (again): wake-ups may have been missed
MAX_CHANNEL_BYTES = 63  # PostgreSQL's identifiers (NAMEDATALEN - 1)
FIRST_PAUSE_S = 1.0
MAX_PAUSE_S = 30.0


def channel_name(schema: str) -> str:
    """`munsit_bridge_<schema>`; when that is too long for an identifier, cut short with a
    digest of the schema's name, so that two long names still differ."""
    name = f"munsit_bridge_{schema}"
    if len(name.encode()) <= MAX_CHANNEL_BYTES:
        return name
    digest = hashlib.sha256(schema.encode()).hexdigest()[:12]
    head = name.encode()[: MAX_CHANNEL_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}_{digest}"


async def notify(conn: Conn, channel: str, payload: str) -> None:
    """Send `payload` when the caller's transaction commits."""
    await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def listen(
    url: str,
    on_notify: Callable[[str], None],
    stop: asyncio.Event,
    *,
    connect_timeout_s: float = 10.0,
) -> None:
    """Call `on_notify` with the payload of each wake-up on the store's channel until `stop`
    is set; connect again after a pause (1 s, doubling up to 30 s) when the connection is
    lost or cannot be made, with a warning saying why."""
    pause = FIRST_PAUSE_S
    while not stop.is_set():
        connecting = asyncio.create_task(_connect(url, connect_timeout_s))
        try:
            conn = await _unless_stopped(connecting, stop)
        except (psycopg.Error, OSError, StoreError) as exc:
            log.warning("cannot listen for wake-ups", error=_why(exc, url), retry_in_s=pause)
        else:
            if conn is None:
                return
            try:
                async with conn:
                    channel = channel_name(await current_schema(conn))
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    pause = FIRST_PAUSE_S
                    on_notify(RECONNECTED)
                    await _until_stopped(conn, on_notify, stop)
                return
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("lost the wake-ups' connection", error=_why(exc, url), retry_in_s=pause)
        if await _wait(stop, pause):
            return
        pause = min(pause * 2, MAX_PAUSE_S)


def _why(exc: BaseException, url: str) -> str:
    """An error as a log line's text, `url`'s credentials hidden; a URL libpq could not
    read is not quoted (its message would quote the password)."""
    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:
        return INVALID
    return scrubbed(describe(exc), url)


async def _connect(url: str, timeout_s: float) -> Conn:
    # a listening connection is idle for long: the kernel probes it, so a dead peer is
    # noticed (the URL's own keepalive settings win)
    return await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=max(1, round(timeout_s)),
        **network_params(parse(url)),
    )


async def _unless_stopped(connecting: asyncio.Task[Conn], stop: asyncio.Event) -> Conn | None:
    """The connection `connecting` makes (or its error); None, with no connection left
    open, when `stop` is set first."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait({connecting})
    if connecting.cancelled():
        return None
    conn = connecting.result()
    if stop.is_set():
        await conn.close()
        return None
    return conn


async def _until_stopped(conn: Conn, on_notify: Callable[[str], None], stop: asyncio.Event) -> None:
    """Hand over wake-ups until `stop` is set (then return at once) or the connection fails
    (then raise)."""

    async def receive() -> None:
        async for item in conn.notifies():
            on_notify(item.payload)

    receiving = asyncio.create_task(receive())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (receiving, stopping):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
    if receiving.done() and not receiving.cancelled():
        receiving.result()  # the connection failed: raise its error
        raise psycopg.OperationalError("the server ended the notifications")
    with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
        await receiving


async def _wait(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait `delay_s` or until `stop` is set; whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
    return stop.is_set()
