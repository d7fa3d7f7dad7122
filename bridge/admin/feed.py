"""The pull side (CONTRACT §5): `GET /api/feed` (pages, long polls) and `GET /api/stream`
(Server-Sent Events).

A cursor is `c_` and the event's store seq in base 36: opaque to clients, the same in every
replica and after a restart (the seq is the store's, in the order events were stored). A
cursor below the highest seq retention deleted may have missed events: 410. Waiting takes a
`FeedSignal` event before reading the store, so an event stored meanwhile still wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from aiohttp import web

from bridge.admin.host import HOST, Host
from bridge.clock import sleep_or_event
from bridge.deliver.formats import standard_body
from bridge.errors import GoneError, RequestError
from bridge.models import Event
from bridge.ops.feed import decode, encode
from bridge.params import parse_event_type, parse_limit
from bridge.store.base import FeedPage

MAX_WAIT_S = 30.0
HEARTBEAT_S = 15.0
STREAM_PAGE = 100
_WAIT = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3})?$")


def _wait_s(raw: str | None) -> float:
    if raw is None:
        return 0.0
    if _WAIT.match(raw) is None or float(raw) > MAX_WAIT_S:
        raise RequestError(f"wait_s: {raw!r} is not a number of seconds from 0 to 30")
    return float(raw)


def _only(request: web.Request, *allowed: str) -> None:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown parameter (expected {', '.join(allowed)})")


def floor(page: FeedPage) -> int:
    """Where a reader with no cursor stands: past every event stored, and past every one
    retention deleted (when it deleted them all, the newest stored seq alone would be
    older than the retained events)."""
    return max(page.newest_seq, page.purged_up_to)


def item(seq: int, event: Event) -> dict[str, object]:
    return {**standard_body(event), "cursor": encode(seq)}


async def feed(request: web.Request) -> web.Response:
    """`GET /api/feed?after=&limit=&type=&wait_s=`."""
    _only(request, "after", "limit", "type", "wait_s")
    host = request.app[HOST]
    raw_after = request.query.get("after") or None
    after = decode(raw_after, "after") if raw_after is not None else None
    limit = parse_limit(request.query.get("limit"))
    event_type = parse_event_type(request.query.get("type"))
    wait_s = _wait_s(request.query.get("wait_s"))
    clock = host.clock
    deadline = clock.monotonic() + wait_s
    while True:
        changed = host.feed.changed()  # before the read: a store meanwhile still wakes us
        page = await host.ops.feed(after=after, limit=limit, event_type=event_type)
        left = deadline - clock.monotonic()
        if page.events or left <= 0 or host.feed.closed:
            break
        await sleep_or_event(clock, left, changed)
    events = [item(seq, e) for seq, e in page.events]
    # nothing (yet): the client's cursor back, or one no older than what retention deleted
    last = page.events[-1][0] if page.events else after or floor(page)
    return web.json_response({"events": events, "next": encode(last)})


async def stream(request: web.Request) -> web.StreamResponse:
    """`GET /api/stream?after=&type=` (or `Last-Event-ID`): SSE, a heartbeat every 15 s."""
    _only(request, "after", "type")
    host = request.app[HOST]
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or None
    name = "Last-Event-ID" if request.headers.get("Last-Event-ID") else "after"
    after = decode(raw, name) if raw is not None else None
    event_type = parse_event_type(request.query.get("type"))
    changed = host.feed.changed()
    page = await host.ops.feed(after=after, limit=STREAM_PAGE, event_type=event_type)
    if after is None:  # from the moment it connects
        after, page = floor(page), FeedPage([], page.newest_seq, page.purged_up_to)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    # the client went away, or retention overtook a slow reader (it reconnects: 410)
    with contextlib.suppress(ConnectionResetError, GoneError):
        await _send(host, response, page, after, event_type, changed)
    return response


async def _send(
    host: Host,
    response: web.StreamResponse,
    page: FeedPage,
    after: int,
    event_type: str | None,
    changed: asyncio.Event,
) -> None:
    """Write the events past `after` as they are stored, and the heartbeats, until shutdown."""
    clock = host.clock
    beat_at = clock.monotonic() + HEARTBEAT_S
    while not host.feed.closed:
        for seq, event in page.events:
            data = json.dumps(standard_body(event), separators=(",", ":"))
            await response.write(
                f"id: {encode(seq)}\nevent: {event.type}\ndata: {data}\n\n".encode()
            )
            after = seq
        if len(page.events) < STREAM_PAGE:  # caught up: wait for a store or the heartbeat
            left = beat_at - clock.monotonic()
            if left <= 0:
                await response.write(b": keep-alive\n\n")
                beat_at = clock.monotonic() + HEARTBEAT_S
                left = HEARTBEAT_S
            await sleep_or_event(clock, left, changed)
        changed = host.feed.changed()
        page = await host.ops.feed(after=after, limit=STREAM_PAGE, event_type=event_type)
