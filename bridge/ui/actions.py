"""The dashboard's forms: each one operation of `host.ops`, its outcome shown on the page
the form is on (an error with its status code: 400, 404, 409)."""

from __future__ import annotations

import structlog
from aiohttp import web

from bridge.errors import RequestError
from bridge.params import parse_event_type, parse_filter, parse_id, parse_time
from bridge.ui import pages
from bridge.ui.render import host, redirect

log = structlog.get_logger("bridge.ui")

VIA = "the dashboard"


async def subscriber_action(request: web.Request) -> web.Response:
    """Enable, disable or send a test event to a subscriber."""
    ops = host(request).ops
    sid, action = request.match_info["id"], request.match_info["action"]
    if action == "test":
        answer = await ops.send_test(sid)
        code = answer["status_code"]
        outcome = f"answered {code}" if code is not None else f"failed: {answer['error']}"
        notice = f"Test event to {sid}: {'ok, ' if answer['ok'] else ''}{outcome}"
    else:
        await ops.set_enabled(sid, action == "enable", via=VIA)
        notice = f"Subscriber {sid} {action}d"
    return await pages.subscribers(request, notice)


async def retry(request: web.Request) -> web.Response:
    """Send one delivery again now."""
    delivery_id = parse_id(request.match_info["id"], "id")
    done = await host(request).ops.retry(delivery_id)
    notice = f"Delivery {delivery_id} queued to be sent again (was {done['was']})"
    return await pages.delivery(request, notice)


async def retry_failed(request: web.Request) -> web.Response:
    """Send again every failed delivery the form's filter matches, then show that filter's
    deliveries (a redirect: the URL keeps the filter) saying how many were queued."""
    form = await request.post()
    raw = pages.raw_fields(form.get)
    try:
        where = parse_filter(lambda key: raw[key] or None)
    except RequestError as exc:
        return await pages.deliveries_page(request, None, raw, error=str(exc), status=400)
    try:
        done = await host(request).ops.retry_failed(where)
    except RequestError as exc:
        return await pages.deliveries_page(request, where, raw, error=str(exc), status=exc.status)
    fields = pages.filter_fields(where, raw)
    return redirect(pages.deliveries_url(fields, retried=done["retried"]))


async def replay(request: web.Request) -> web.Response:
    """Queue stored events since a time again, for one subscriber or all, one type or all."""
    form = await request.post()
    since, subscriber, event_type = (
        str(form.get(k) or "").strip() for k in ("since", "subscriber", "type")
    )
    try:
        if not since:
            raise RequestError("since: required (an ISO 8601 time)")
        result = await host(request).ops.replay(
            since=parse_time(since, "since"),
            subscriber=subscriber or None,
            event_type=parse_event_type(event_type),
        )
    except RequestError as exc:
        return await pages.events(request, error=str(exc), status=exc.status)
    notice = f"Replayed {result.events} events: {result.deliveries} deliveries queued"
    return await pages.events(request, notice=notice)
