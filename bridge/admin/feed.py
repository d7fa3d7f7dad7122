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

from bridge.clock import sleep_or_event
from bridge.deliver.formats import standard_body
from bridge.errors import RequestError
from bridge.models import EVENT_TYPES, Event
from bridge.params import parse_limit
from bridge.service import Service
from bridge.store.base import FeedPage

MAX_WAIT_S = 30.0
HEARTBEAT_S = 15.0
STREAM_PAGE = 100
_CURSOR = re.compile(r"^c_(0|[1-9a-z][0-9a-z]{0,12})$")
_WAIT = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3})?$")


def encode(seq: int) -> str:
    digits = ""
    while True:
        seq, rest = divmod(seq, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
        if seq == 0:
            return f"c_{digits}"


def decode(raw: str, name: str) -> int:
    """A cursor's seq, or a `RequestError` naming the parameter (strict: one spelling)."""
    if _CURSOR.match(raw) is None:
        raise RequestError(f"{name}: {raw[:100]!r} is not a feed cursor (pass back a `next`)")
    return int(raw[2:], 36)


def _event_type(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw not in EVENT_TYPES:
        raise RequestError(f"type: unknown event type {raw!r} (one of {', '.join(EVENT_TYPES)})")
    return raw


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


def _too_old(after: int | None, page: FeedPage) -> None:
    if after is not None and after < page.purged_up_to:
        raise web.HTTPGone(
            text=f"cursor {encode(after)} is older than the retained events (retention deleted "
            f"events up to {encode(page.purged_up_to)}); start again without after"
        )


def item(seq: int, event: Event) -> dict[str, object]:
    return {**standard_body(event), "cursor": encode(seq)}


def _service(request: web.Request) -> Service:
    from bridge.admin.app import SERVICE

    return request.app[SERVICE]


async def feed(request: web.Request) -> web.Response:
    """`GET /api/feed?after=&limit=&type=&wait_s=`."""
    _only(request, "after", "limit", "type", "wait_s")
    service = _service(request)
    raw_after = request.query.get("after") or None
    after = decode(raw_after, "after") if raw_after is not None else None
    limit = parse_limit(request.query.get("limit"))
    event_type = _event_type(request.query.get("type"))
    wait_s = _wait_s(request.query.get("wait_s"))
    clock = service.clock
    deadline = clock.monotonic() + wait_s
    while True:
        changed = service.feed.changed()  # before the read: a store meanwhile still wakes us
        page = await service.store.events_after(after_seq=after, limit=limit, event_type=event_type)
        _too_old(after, page)
        left = deadline - clock.monotonic()
        if page.events or left <= 0 or service.feed.closed:
            break
        await sleep_or_event(clock, left, changed)
    events = [item(seq, e) for seq, e in page.events]
    last = page.events[-1][0] if page.events else after or 0
    return web.json_response({"events": events, "next": encode(last)})


async def stream(request: web.Request) -> web.StreamResponse:
    """`GET /api/stream?after=&type=` (or `Last-Event-ID`): SSE, a heartbeat every 15 s."""
    _only(request, "after", "type")
    service = _service(request)
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or None
    name = "Last-Event-ID" if request.headers.get("Last-Event-ID") else "after"
    after = decode(raw, name) if raw is not None else None
    event_type = _event_type(request.query.get("type"))
    changed = service.feed.changed()
    page = await service.store.events_after(
        after_seq=after, limit=STREAM_PAGE, event_type=event_type
    )
    _too_old(after, page)
    if after is None:  # from the moment it connects
        after, page = page.newest_seq, FeedPage([], page.newest_seq, page.purged_up_to)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):  # the client went away
        await _send(service, response, page, after, event_type, changed)
    return response


async def _send(
    service: Service,
    response: web.StreamResponse,
    page: FeedPage,
    after: int,
    event_type: str | None,
    changed: asyncio.Event,
) -> None:
    """Write the events past `after` as they are stored, and the heartbeats, until shutdown."""
    clock = service.clock
    beat_at = clock.monotonic() + HEARTBEAT_S
    while not service.feed.closed:
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
        changed = service.feed.changed()
        page = await service.store.events_after(
            after_seq=after, limit=STREAM_PAGE, event_type=event_type
        )
