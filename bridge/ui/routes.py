"""The dashboard's routes and the middleware that guards them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jinja2
import structlog
from aiohttp import web

from bridge.admin import views
from bridge.admin.health import poll_error_kind, readiness
from bridge.config import SubscriberConfig
from bridge.deliver.sendtest import send_test
from bridge.errors import BridgeError, RequestError, StoreError
from bridge.models import EVENT_TYPES, DeliveryState
from bridge.params import parse_state
from bridge.redact import redact_text
from bridge.replay import parse_since, replay
from bridge.service import Service
from bridge.ui.chart import per_minute
from bridge.ui.session import COOKIE, SESSION_S, Handler, Sessions, is_https, refusal, token_matches

log = structlog.get_logger("bridge.ui")

HERE = Path(__file__).parent
STATIC = {"ui.css": "text/css", "ui.js": "text/javascript"}
PAGE = 50  # deliveries and events a page
CHART_DELIVERIES = 1000  # the chart counts the attempts of the latest this many deliveries
SEARCH_EVENTS = 1000  # a record id is searched among the latest this many events
PUBLIC = frozenset({"/ui/login"})
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

SERVICE = web.AppKey("ui_service", Service)  # the admin app's Service, under our own key
SESSIONS = web.AppKey("ui_sessions", Sessions)
TEMPLATES = web.AppKey("ui_templates", jinja2.Environment)


def templates() -> jinja2.Environment:
    """The pages' templates, every value escaped."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = lambda ts: views.iso(ts) or "—"
    return env


def setup(app: web.Application) -> None:
    """Add the dashboard to the admin app `create_app` built (before it starts)."""
    from bridge.admin import app as admin_app  # here: app.py may import this module

    app[SERVICE] = app[admin_app.SERVICE]
    app[TEMPLATES] = templates()
    app[SESSIONS] = Sessions()
    app.middlewares.insert(0, ui_guard)
    r = app.router
    r.add_get("/ui", to_overview)
    r.add_get("/ui/", overview)
    r.add_get("/ui/login", login_form)
    r.add_post("/ui/login", login)
    r.add_post("/ui/logout", logout)
    r.add_get("/ui/static/{name}", static)
    r.add_get("/ui/subscribers", subscribers)
    r.add_post("/ui/subscribers/{id}/{action:enable|disable|test}", subscriber_action)
    r.add_get("/ui/deliveries", deliveries)
    r.add_get("/ui/deliveries/{id}", delivery)
    r.add_post("/ui/deliveries/{id}/retry", retry)
    r.add_get("/ui/events", events)
    r.add_post("/ui/replay", post_replay)


async def to_overview(request: web.Request) -> web.Response:
    return _redirect("/ui/")


# --- guard ----------------------------------------------------------------------------


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _logged_in(request: web.Request) -> bool:
    admin = request.app[SERVICE].settings.admin
    return admin.token is None or request.app[SESSIONS].valid(request.cookies.get(COOKIE))


@web.middleware
async def ui_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`/ui` requests are answered here, as HTML, past the API's JSON-only guard; the
    others go on to it."""
    if request.path != "/ui" and not request.path.startswith("/ui/"):
        return await handler(request)
    admin = request.app[SERVICE].settings.admin
    refused = refusal(request, admin)
    response: web.StreamResponse
    if refused is not None:
        response = render(request, "error.html", 403, title="Refused", message=refused)
    elif (
        request.path not in PUBLIC
        and not request.path.startswith("/ui/static/")
        and not _logged_in(request)
    ):
        response = _redirect("/ui/login")
    else:
        response = await _answer(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if not request.path.startswith("/ui/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def _answer(request: web.Request) -> web.StreamResponse:
    try:
        if (exc := request.match_info.http_exception) is not None:
            raise exc
        return await request.match_info.handler(request)
    except RequestError as exc:
        return render(request, "error.html", 400, title="Bad request", message=str(exc))
    except StoreError as exc:
        message = f"store unavailable: {redact_text(str(exc))}"
        log.error("dashboard request failed: store", path=request.path, error=message)
        return render(request, "error.html", 503, title="Store unavailable", message=message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render(request, "error.html", exc.status, title=exc.reason, message=exc.text or "")
    except Exception:
        log.exception("dashboard request crashed", path=request.path)
        return render(request, "error.html", 500, title="Error", message="internal error (logged)")


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    service = request.app[SERVICE]
    template = request.app[TEMPLATES].get_template(name)
    context.setdefault("notice", None)
    context.setdefault("error", None)
    html = template.render(
        path=request.path,
        login_needed=service.settings.admin.token is not None,
        logged_in=_logged_in(request),
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


# --- login ----------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    if request.app[SERVICE].settings.admin.token is None:
        return _redirect("/ui/")
    return render(request, "login.html", title="Log in")


async def login(request: web.Request) -> web.Response:
    admin = request.app[SERVICE].settings.admin
    if admin.token is None:
        return _redirect("/ui/")
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not token_matches(given, admin):
        return render(request, "login.html", 401, title="Log in", error="wrong token")
    response = _redirect("/ui/")
    sessions = request.app[SESSIONS]
    sessions.drop(request.cookies.get(COOKIE))
    response.set_cookie(
        COOKIE,
        sessions.create(),
        max_age=int(SESSION_S),
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
    )
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].drop(request.cookies.get(COOKIE))
    response = _redirect("/ui/login")
    response.del_cookie(COOKIE, path="/ui")
    return response


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound(text=f"no file {name!r}")
    body = (HERE / "static" / name).read_bytes()
    return web.Response(
        body=body,
        content_type=STATIC[name],
        charset="utf-8",
        headers={"Cache-Control": "max-age=300"},
    )


# --- overview -------------------------------------------------------------------------


async def _subscriber_rows(service: Service) -> list[dict[str, Any]]:
    counts = await service.store.counts_by_subscriber()
    return [
        views.subscriber(s, service.dispatcher.health(s.id), counts.get(s.id))
        for s in service.settings.subscribers
    ]


async def _poll_health(service: Service) -> dict[str, Any]:
    store_error: str | None = None
    try:
        await asyncio.wait_for(service.store.ping(), timeout=2.0)
    except BridgeError as exc:
        store_error = redact_text(str(exc))
    except TimeoutError:
        store_error = "no answer within 2 s"
    poller = service.poller
    if service.role != "leader":
        return {"leader": False, "store_error": store_error, "reasons": []}
    reasons = readiness(
        now=service.clock.now(),
        store_error=store_error,
        auth_failed=poller.auth_failed,
        last_success_at=poller.last_success_at,
        last_error_kind=poll_error_kind(poller.last_error),
        interval_s=poller.base_interval_s(),
        failing=service.failing,
    )
    return {
        "leader": True,
        "store_error": store_error,
        "reasons": reasons,
        "last_success_at": poller.last_success_at,
        "last_error": poll_error_kind(poller.last_error),
        "auth_failed": poller.auth_failed,
        "records_pending": len(poller.pending),
    }


async def overview(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    counts = await service.store.count_deliveries()
    recent = await service.store.list_deliveries(limit=CHART_DELIVERIES)
    return render(
        request,
        "overview.html",
        title="Overview",
        role=service.role,
        replica=service.settings.store.replica_id,
        health=await _poll_health(service),
        counts={s.value: counts.get(s, 0) for s in DeliveryState},
        subscribers=await _subscriber_rows(service),
        chart=per_minute(recent, service.clock.now()),
    )


# --- subscribers ----------------------------------------------------------------------


def _find_subscriber(service: Service, sid: str) -> SubscriberConfig:
    sub = next((s for s in service.settings.subscribers if s.id == sid), None)
    if sub is None:
        raise web.HTTPNotFound(text=f"no subscriber {sid!r}")
    return sub


async def subscribers(request: web.Request, notice: str | None = None) -> web.Response:
    service = request.app[SERVICE]
    return render(
        request,
        "subscribers.html",
        title="Subscribers",
        subscribers=await _subscriber_rows(service),
        notice=notice,
    )


async def subscriber_action(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    sub = _find_subscriber(service, request.match_info["id"])
    action = request.match_info["action"]
    disabled = service.dispatcher.health(sub.id).disabled_at is not None
    if action == "test":
        attempt = views.attempt(await send_test(sub, service.settings.delivery))
        code = attempt["status_code"]
        ok = code is not None and 200 <= code < 300
        outcome = f"answered {code}" if code is not None else f"failed: {attempt['error']}"
        notice = f"Test event to {sub.id}: {'ok, ' if ok else ''}{outcome}"
    elif action == "enable":
        if not sub.enabled:
            raise web.HTTPConflict(
                text=f"subscriber {sub.id!r} is paused in the configuration (enabled = false); "
                "set enabled = true and restart"
            )
        if disabled:
            await service.dispatcher.set_enabled(sub.id, True, reason="operator (dashboard)")
        notice = f"Subscriber {sub.id} enabled"
    else:
        if not disabled:
            await service.dispatcher.set_enabled(sub.id, False, reason="operator (dashboard)")
        notice = f"Subscriber {sub.id} disabled"
    return await subscribers(request, notice)


# --- deliveries -----------------------------------------------------------------------


def _positive(raw: str, name: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise RequestError(f"{name}: {raw!r} is not a delivery id (a positive integer)")
    return int(raw)


async def deliveries(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    state_raw = request.query.get("state", "")
    subscriber = request.query.get("subscriber", "")
    before_raw = request.query.get("before", "")
    found = await service.store.list_deliveries(
        state=parse_state(state_raw or None),
        subscriber=subscriber or None,
        limit=PAGE,
        before=_positive(before_raw, "before") if before_raw else None,
    )
    return render(
        request,
        "deliveries.html",
        title="Deliveries",
        deliveries=[views.delivery(d, with_attempts=False) for d in found],
        next_before=found[-1].id if len(found) == PAGE else None,
        state=state_raw,
        subscriber=subscriber,
        states=[s.value for s in DeliveryState],
        subscriber_ids=[s.id for s in service.settings.subscribers],
    )


async def delivery(request: web.Request, notice: str | None = None) -> web.Response:
    service = request.app[SERVICE]
    delivery_id = _positive(request.match_info["id"], "id")
    found = await service.store.get_delivery(delivery_id)
    if found is None:
        raise web.HTTPNotFound(text=f"no delivery {delivery_id}")
    return render(
        request,
        "delivery.html",
        title=f"Delivery {delivery_id}",
        d=views.delivery(found, with_attempts=True),
        notice=notice,
    )


async def retry(request: web.Request) -> web.Response:
    """The same as `POST /api/deliveries/{id}/retry`."""
    service = request.app[SERVICE]
    delivery_id = _positive(request.match_info["id"], "id")
    was = await service.store.retry(delivery_id, now=service.clock.now())
    if was is None:
        raise web.HTTPNotFound(text=f"no delivery {delivery_id}")
    if was is DeliveryState.DELIVERED:
        raise web.HTTPConflict(
            text=f"delivery {delivery_id} was delivered; replay its event to send it again"
        )
    if was is DeliveryState.ORPHANED:
        raise web.HTTPConflict(
            text=f"delivery {delivery_id} is orphaned: its subscriber is no longer configured"
        )
    service.dispatcher.wake()
    return await delivery(request, f"Delivery {delivery_id} queued to be sent again (was {was})")


# --- events and replay ----------------------------------------------------------------


async def events(
    request: web.Request, notice: str | None = None, error: str | None = None
) -> web.Response:
    service = request.app[SERVICE]
    record = request.query.get("record", "").strip()
    if record:  # no store query by record: the latest events, filtered here
        latest = await service.store.list_events(limit=SEARCH_EVENTS) or []
        found = [e for e in latest if record in e.record_id]
    else:
        found = await service.store.list_events(limit=PAGE) or []
    return render(
        request,
        "events.html",
        title="Events",
        events=[views.event(e) for e in found],
        record=record,
        searched=SEARCH_EVENTS,
        types=EVENT_TYPES,
        subscriber_ids=[s.id for s in service.settings.subscribers],
        notice=notice,
        error=error,
    )


async def post_replay(request: web.Request) -> web.Response:
    """The same as `POST /api/replay`, from a form."""
    service = request.app[SERVICE]
    form = await request.post()
    since, subscriber, event_type = (
        str(form.get(k) or "").strip() for k in ("since", "subscriber", "type")
    )
    try:
        if not since:
            raise RequestError("since: required (an ISO 8601 time)")
        if subscriber and subscriber not in {s.id for s in service.settings.subscribers}:
            raise RequestError(f"subscriber: no subscriber {subscriber!r}")
        if event_type and event_type not in EVENT_TYPES:
            raise RequestError(f"type: unknown event type {event_type!r}")
        result = await replay(
            service.store,
            service.settings.subscribers,
            since=parse_since(since),
            subscriber=subscriber or None,
            event_type=event_type or None,
            now=service.clock.now(),
        )
    except RequestError as exc:
        return await events(request, error=str(exc))
    service.dispatcher.wake()
    log.info("replay", events=result.events, deliveries=result.deliveries, via="dashboard")
    notice = f"Replayed {result.events} events: {result.deliveries} deliveries queued"
    return await events(request, notice=notice)
