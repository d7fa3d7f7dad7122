"""The admin app: `/healthz`, `/readyz`, `/metrics` and the operator's API under `/api`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

import bridge.ui
from bridge.admin import feed, views
from bridge.admin.guard import api_guard
from bridge.admin.health import poll_error_kind, readiness
from bridge.admin.openapi import document
from bridge.deliver.sendtest import send_test
from bridge.errors import BridgeError, RequestError, StoreError
from bridge.metrics import CONTENT_TYPE
from bridge.models import EVENT_TYPES, DeliveryState
from bridge.params import parse_limit, parse_state
from bridge.redact import redact_text
from bridge.replay import parse_since, replay
from bridge.service import Service

log = structlog.get_logger("bridge.admin")

SERVICE = web.AppKey("service", Service)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


READYZ_STORE_TIMEOUT_S = 2.0  # /readyz says the store does not answer after this long


def create_app(service: Service) -> web.Application:
    """The admin application over a running (entered) `Service`."""
    app = web.Application(middlewares=[_errors, api_guard(lambda: service.settings.admin)])
    app[SERVICE] = service
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
        return error(400, str(exc))
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
    service = request.app[SERVICE]
    store_error: str | None = None
    try:
        await asyncio.wait_for(service.store.ping(), timeout=READYZ_STORE_TIMEOUT_S)
    except BridgeError as exc:
        store_error = redact_text(str(exc))
    except TimeoutError:
        store_error = f"no answer within {READYZ_STORE_TIMEOUT_S:.0f} s"
    role = service.role
    body: dict[str, object] = {"role": role, "replica": service.settings.store.replica_id}
    if role == "leader":
        poller = service.poller
        last_poll = poller.last_success_at
        reasons = readiness(
            now=service.clock.now(),
            store_error=store_error,
            auth_failed=poller.auth_failed,
            last_success_at=last_poll,
            last_error_kind=poll_error_kind(poller.last_error),
            interval_s=poller.base_interval_s(),
            failing=service.failing,
        )
    else:
        reasons, last_poll, body["leader"] = await _follower(service, store_error)
    body |= {"ready": not reasons, "reasons": reasons, "last_poll_success_at": views.iso(last_poll)}
    return web.json_response(body, status=503 if reasons else 200)


async def _follower(
    service: Service, store_error: str | None
) -> tuple[list[str], float | None, str | None]:
    """A follower is ready while the store answers and the leader's last successful poll,
    which it records with each lease renewal, is recent: within 3 of the longest poll
    interval (the leader's pending records are not this replica's to know), plus how often
    it is recorded. Returns the reasons, that poll's time and the leader's name."""
    if store_error is not None:
        return [f"store unreachable: {store_error}"], None, None
    try:
        leader = await asyncio.wait_for(service.leader_state(), READYZ_STORE_TIMEOUT_S)
    except TimeoutError:
        leader = None
    if leader is None:
        reason = f"store unreachable: no answer within {READYZ_STORE_TIMEOUT_S:.0f} s"
        return [reason], None, None
    up = service.settings.upstream
    reasons = readiness(
        now=service.clock.now(),
        store_error=None,
        auth_failed=False,
        last_success_at=leader.last_poll_at,
        last_error_kind=None,
        interval_s=max(up.poll_interval_s, up.idle_poll_interval_s),
        failing=service.failing,
        recorded_every_s=service.settings.store.leader_lease_s / 3,
    )
    return reasons, leader.last_poll_at, leader.replica


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    await service.refresh_gauges()
    return web.Response(body=service.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


# --- parameters -----------------------------------------------------------------------


def _only(request: web.Request, *allowed: str) -> None:
    """400 for a query parameter the route does not know (a typo must not pass silently)."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown parameter (expected {', '.join(allowed)})")


def _digits(raw: str) -> bool:
    """ASCII digits only: `str.isdigit` also passes `²`, which `int()` rejects."""
    return raw.isascii() and raw.isdigit()


def _int_param(raw: str, name: str) -> int:
    if not _digits(raw) or len(raw) > 18 or int(raw) < 1:
        raise RequestError(f"{name}: {raw!r} is not a delivery id (a positive integer)")
    return int(raw)


def _event_type(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in EVENT_TYPES:
        raise RequestError(f"type: unknown event type {raw!r} (one of {', '.join(EVENT_TYPES)})")
    return raw


def _not_empty(raw: Any, key: str) -> Any:
    """A JSON body names a filter or leaves it out (null): an empty string is a mistake."""
    if raw == "":
        raise RequestError(f"{key}: must not be empty (leave it out or null for all)")
    return raw


def _subscriber(request: web.Request) -> Any:
    service = request.app[SERVICE]
    sid = request.match_info["id"]
    sub = next((s for s in service.settings.subscribers if s.id == sid), None)
    if sub is None:
        raise web.HTTPNotFound(text=f"no subscriber {sid!r}")
    return sub


# --- subscribers ----------------------------------------------------------------------


async def _subscriber_json(service: Service, sid: str) -> dict[str, Any]:
    sub = next(s for s in service.settings.subscribers if s.id == sid)
    counts = (await service.store.counts_by_subscriber()).get(sid)
    return views.subscriber(sub, service.dispatcher.health(sid), counts)


async def list_subscribers(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    counts = await service.store.counts_by_subscriber()
    subs = [
        views.subscriber(s, service.dispatcher.health(s.id), counts.get(s.id))
        for s in service.settings.subscribers
    ]
    return web.json_response({"subscribers": subs})


async def enable_subscriber(request: web.Request) -> web.Response:
    service, sub = request.app[SERVICE], _subscriber(request)
    if not sub.enabled:
        raise web.HTTPConflict(
            text=f"subscriber {sub.id!r} is paused in the configuration (enabled = false); "
            "set enabled = true and restart"
        )
    if service.dispatcher.health(sub.id).disabled_at is not None:
        await service.dispatcher.set_enabled(sub.id, True, reason="enabled through the admin API")
    return web.json_response(await _subscriber_json(service, sub.id))


async def disable_subscriber(request: web.Request) -> web.Response:
    service, sub = request.app[SERVICE], _subscriber(request)
    if service.dispatcher.health(sub.id).disabled_at is None:
        await service.dispatcher.set_enabled(sub.id, False, reason="disabled through the admin API")
    return web.json_response(await _subscriber_json(service, sub.id))


async def test_subscriber(request: web.Request) -> web.Response:
    service, sub = request.app[SERVICE], _subscriber(request)
    attempt = await send_test(sub, service.settings.delivery)
    ok = attempt.status_code is not None and 200 <= attempt.status_code < 300
    return web.json_response({"subscriber": sub.id, "ok": ok, **views.attempt(attempt)})


# --- events and deliveries ------------------------------------------------------------


async def list_events(request: web.Request) -> web.Response:
    _only(request, "type", "limit", "before")
    service, limit = request.app[SERVICE], parse_limit(request.query.get("limit"))
    before = request.query.get("before") or None
    events = await service.store.list_events(
        event_type=_event_type(request.query.get("type")), limit=limit, before=before
    )
    if events is None:
        raise web.HTTPNotFound(text=f"before: no stored event {before!r}")
    next_before = events[-1].id if len(events) == limit else None
    return web.json_response(
        {"events": [views.event(e) for e in events], "next_before": next_before}
    )


async def list_deliveries(request: web.Request) -> web.Response:
    _only(request, "state", "subscriber", "limit", "before")
    service, limit = request.app[SERVICE], parse_limit(request.query.get("limit"))
    state = parse_state(request.query.get("state"))
    raw_before = request.query.get("before") or None
    found = await service.store.list_deliveries(
        state=state,
        subscriber=request.query.get("subscriber") or None,
        limit=limit,
        before=_int_param(raw_before, "before") if raw_before else None,
    )
    next_before = found[-1].id if len(found) == limit else None
    return web.json_response(
        {
            "deliveries": [views.delivery(d, with_attempts=False) for d in found],
            "next_before": next_before,
        }
    )


async def get_delivery(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    delivery_id = _int_param(request.match_info["id"], "id")
    found = await service.store.get_delivery(delivery_id)
    if found is None:
        raise web.HTTPNotFound(text=f"no delivery {delivery_id}")
    return web.json_response(views.delivery(found, with_attempts=True))


async def retry_delivery(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    delivery_id = _int_param(request.match_info["id"], "id")
    was = await service.store.retry(delivery_id, now=service.clock.now())
    if was is None:
        raise web.HTTPNotFound(text=f"no delivery {delivery_id}")
    if was is DeliveryState.DELIVERED:
        raise web.HTTPConflict(
            text=f"delivery {delivery_id} was delivered; use POST /api/replay to send its "
            "event again"
        )
    if was is DeliveryState.ORPHANED:
        raise web.HTTPConflict(
            text=f"delivery {delivery_id} is orphaned: its subscriber is no longer configured "
            "(add the subscriber back to send it)"
        )
    service.dispatcher.wake()
    found = await service.store.get_delivery(delivery_id)
    assert found is not None
    return web.json_response(
        {"was": was.value, "delivery": views.delivery(found, with_attempts=False)}
    )


REPLAY_KEYS = frozenset({"since", "subscriber", "type"})


async def post_replay(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        body: Any = json.loads(await request.read() or b"null")
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise RequestError(f"body: not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError('body: expected a JSON object like {"since": "2026-11-24T00:00:00Z"}')
    unknown = sorted(set(body) - REPLAY_KEYS)
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown key (expected since, subscriber, type)")
    for key in REPLAY_KEYS & set(body):
        if body[key] is not None and not isinstance(body[key], str):
            raise RequestError(f"{key}: expected a string")
    if not body.get("since"):
        raise RequestError("since: required (an ISO 8601 time)")
    subscriber = body.get("subscriber") or None
    if subscriber is not None and subscriber not in {s.id for s in service.settings.subscribers}:
        raise web.HTTPNotFound(text=f"subscriber: no subscriber {subscriber!r}")
    result = await replay(
        service.store,
        service.settings.subscribers,
        since=parse_since(body["since"]),
        subscriber=subscriber,
        event_type=_event_type(_not_empty(body.get("type"), "type")),
        now=service.clock.now(),
    )
    service.dispatcher.wake()
    log.info("replay", events=result.events, deliveries=result.deliveries)
    return web.json_response({"events": result.events, "deliveries": result.deliveries})
