"""The admin app: `/healthz`, `/readyz`, `/metrics` and the operator's API under `/api`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

import bridge.ui
from bridge.admin import feed
from bridge.admin.guard import api_guard
from bridge.admin.host import HOST, Host
from bridge.admin.openapi import document
from bridge.errors import RequestError, StoreError
from bridge.metrics import CONTENT_TYPE
from bridge.ops.core import Operations
from bridge.params import (
    FILTER_KEYS,
    parse_event_type,
    parse_filter,
    parse_id,
    parse_limit,
    parse_record,
    parse_time,
)
from bridge.redact import redact_text

log = structlog.get_logger("bridge.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(host: Host) -> web.Application:
    """The admin application over a running bridge."""
    app = web.Application(middlewares=[_errors, api_guard(lambda: host.settings.admin)])
    app[HOST] = host
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/subscribers", list_subscribers)
    app.router.add_post("/api/subscribers/{id}/enable", enable_subscriber)
    app.router.add_post("/api/subscribers/{id}/disable", disable_subscriber)
    app.router.add_post("/api/subscribers/{id}/test", test_subscriber)
    app.router.add_get("/api/events", list_events)
    app.router.add_get("/api/deliveries", list_deliveries)
    app.router.add_get("/api/deliveries/{id}", get_delivery)
    app.router.add_post("/api/deliveries/{id}/retry", retry_delivery)
    app.router.add_post("/api/retry", retry_failed)
    app.router.add_post("/api/replay", post_replay)
    app.router.add_get("/api/feed", feed.feed)
    app.router.add_get("/api/stream", feed.stream)
    bridge.ui.setup(app)  # the dashboard under /ui/
    return app


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON `{"error": …}` with its status code."""
    try:
        return await handler(request)
    except RequestError as exc:
        return error(exc.status, str(exc))
    except StoreError as exc:
        message = redact_text(str(exc))
        log.error("admin request failed: store", path=request.path, error=message)
        return error(503, f"store unavailable: {message}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error(exc.status, exc.text or exc.reason)
        if "Allow" in exc.headers:  # 405 lists the methods the route supports
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:  # a bug: still JSON, logged with its traceback, no details leaked
        log.exception("admin request crashed", path=request.path)
        return error(500, "internal error (logged)")


# --- health and metrics ---------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    body = await request.app[HOST].readiness()
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    text = await request.app[HOST].metrics_text()
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


# --- parameters -----------------------------------------------------------------------


def _only(request: web.Request, *allowed: str) -> None:
    """400 for a query parameter the route does not know (a typo must not pass silently)."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown parameter (expected {', '.join(allowed)})")


# in a JSON body an empty subscriber or record names none in particular (as null does); an
# empty type, state or time is a mistake
EMPTY_MEANS_ALL = frozenset({"subscriber", "record"})
TIMES = ("since", "until")


def _query(request: web.Request, *allowed: str) -> dict[str, str]:
    """The query's parameters, `allowed` ones only; an empty value means all, but an empty
    time is a mistake (a time range left open is left out)."""
    _only(request, *allowed)
    for key in TIMES:
        if request.query.get(key) == "":
            raise RequestError(f"{key}: must not be empty (an ISO 8601 time, or leave it out)")
    return dict(request.query)


def _ops(request: web.Request) -> Operations:
    return request.app[HOST].ops


async def _json_object(
    request: web.Request, keys: frozenset[str], example: str, *, required: str | None = None
) -> dict[str, Any]:
    """A JSON object body of string (or null) values under `keys` only. Without a `required`
    key an empty body means `{}`."""
    try:
        body: Any = json.loads(await request.read() or (b"null" if required else b"{}"))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise RequestError(f"body: not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(f"body: expected a JSON object like {example}")
    unknown = sorted(set(body) - keys)
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown key (expected {', '.join(sorted(keys))})")
    for key, value in body.items():
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{key}: expected a string")
        if value == "" and key not in EMPTY_MEANS_ALL and key != required:
            raise RequestError(f"{key}: must not be empty (leave it out or null for all)")
    if required is not None and not body.get(required):
        raise RequestError(f"{required}: required (an ISO 8601 time)")
    return body


# --- subscribers ----------------------------------------------------------------------


async def list_subscribers(request: web.Request) -> web.Response:
    return web.json_response({"subscribers": await _ops(request).subscribers()})


async def enable_subscriber(request: web.Request) -> web.Response:
    sid = request.match_info["id"]
    return web.json_response(await _ops(request).set_enabled(sid, True, via="the admin API"))


async def disable_subscriber(request: web.Request) -> web.Response:
    sid = request.match_info["id"]
    return web.json_response(await _ops(request).set_enabled(sid, False, via="the admin API"))


async def test_subscriber(request: web.Request) -> web.Response:
    return web.json_response(await _ops(request).send_test(request.match_info["id"]))


# --- events and deliveries ------------------------------------------------------------


async def list_events(request: web.Request) -> web.Response:
    q = _query(request, "type", "limit", "before", "record")
    page = await _ops(request).events(
        event_type=parse_event_type(q.get("type")),
        limit=parse_limit(q.get("limit")),
        before=q.get("before") or None,
        record_id=parse_record(q.get("record")),
    )
    return web.json_response(page)


async def list_deliveries(request: web.Request) -> web.Response:
    q = _query(request, *FILTER_KEYS, "limit", "before")
    before = q.get("before") or None
    page = await _ops(request).deliveries(
        parse_filter(q.get),
        limit=parse_limit(q.get("limit")),
        before=parse_id(before, "before") if before else None,
    )
    return web.json_response(page)


async def get_delivery(request: web.Request) -> web.Response:
    delivery_id = parse_id(request.match_info["id"], "id")
    return web.json_response(await _ops(request).delivery(delivery_id))


async def retry_delivery(request: web.Request) -> web.Response:
    delivery_id = parse_id(request.match_info["id"], "id")
    return web.json_response(await _ops(request).retry(delivery_id))


async def retry_failed(request: web.Request) -> web.Response:
    """`POST /api/retry` `{"state" (failed or null), "subscriber", "type", "record",
    "since", "until"}`:
    every dead letter the filter matches, sent again."""
    keys = frozenset(FILTER_KEYS)
    body = await _json_object(request, keys, '{"subscriber": "backend"}')
    return web.json_response(await _ops(request).retry_failed(parse_filter(body.get)))


async def post_replay(request: web.Request) -> web.Response:
    example = '{"since": "2026-11-24T00:00:00Z"}'
    body = await _json_object(request, REPLAY_KEYS, example, required="since")
    result = await _ops(request).replay(
        since=parse_time(body["since"]),
        subscriber=body.get("subscriber") or None,
        event_type=parse_event_type(body.get("type")),
    )
    return web.json_response({"events": result.events, "deliveries": result.deliveries})


REPLAY_KEYS = frozenset({"since", "subscriber", "type"})
