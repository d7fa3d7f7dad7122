"""The dashboard's pages: each reads the running bridge through `host.ops` (and the overview
its readiness), nothing else."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from bridge.errors import RequestError
from bridge.models import (
    ALL_DELIVERIES,
    EVENT_TYPES,
    REPORTS,
    SUBSCRIBER_DISABLED,
    DeliveryFilter,
    DeliveryState,
)
from bridge.ops.feed import encode
from bridge.params import FILTER_KEYS, parse_event_type, parse_filter, parse_id, parse_record
from bridge.ui.chart import attempts_of, per_minute
from bridge.ui.render import host, render

PAGE = 50  # deliveries and events a page
CHART_DELIVERIES = 1000  # the chart counts the attempts of the latest this many deliveries
REPORTS_SHOWN = 8  # the bridge's latest reports on the overview


async def live(request: web.Request) -> dict[str, str]:
    """What a page that updates itself needs: the stream's cursor as the page was read (so
    an event stored meanwhile is not missed) and the event types to listen to."""
    page = await host(request).ops.feed(after=None, limit=1)
    return {"after": encode(page.newest_seq), "types": " ".join(EVENT_TYPES)}


# --- overview -------------------------------------------------------------------------


def _report_line(event: Mapping[str, Any]) -> dict[str, Any]:
    data = event.get("data") or {}
    href = None
    if event["type"] == SUBSCRIBER_DISABLED:
        text = f"Subscriber {data.get('subscriber', '?')} disabled: {data.get('reason', '')}"
    else:  # bridge.delivery_dead_lettered
        outcome = data.get("last_status_code") or data.get("last_error") or "no answer"
        text = (
            f"Delivery {data.get('delivery_id', '?')} to {data.get('subscriber', '?')} failed "
            f"for good after {data.get('attempts', '?')} attempts ({outcome})"
        )
        if isinstance(data.get("delivery_id"), int):
            href = f"/ui/deliveries/{data['delivery_id']}"
    return {"timestamp": event["timestamp"], "type": event["type"], "text": text, "href": href}


async def _reports(request: web.Request) -> list[dict[str, Any]]:
    """The bridge's latest reports on itself, newest first."""
    ops = host(request).ops
    found: list[dict[str, Any]] = []
    for event_type in REPORTS:
        found += (await ops.events(event_type=event_type, limit=REPORTS_SHOWN))["events"]
    found.sort(key=lambda e: str(e["timestamp"]), reverse=True)
    return [_report_line(e) for e in found[:REPORTS_SHOWN]]


async def overview(request: web.Request) -> web.Response:
    bridge = host(request)
    ready = await bridge.readiness()
    status = await bridge.ops.status()
    recent = await bridge.ops.deliveries(ALL_DELIVERIES, limit=CHART_DELIVERIES, with_attempts=True)
    return render(
        request,
        "overview.html",
        title="Overview",
        ready=ready,
        summary=status,
        reports=await _reports(request),
        chart=per_minute(attempts_of(recent["deliveries"]), bridge.clock.now()),
        live=await live(request),
    )


# --- subscribers ----------------------------------------------------------------------


async def subscribers(request: web.Request, notice: str | None = None) -> web.Response:
    return render(
        request,
        "subscribers.html",
        title="Subscribers",
        subscribers=await host(request).ops.subscribers(),
        notice=notice,
        live=await live(request),
    )


# --- deliveries -----------------------------------------------------------------------


def _local(ts: float | None) -> str:
    """A time as a `datetime-local` input shows it (UTC, no offset)."""
    if ts is None:
        return ""
    when = datetime.fromtimestamp(ts, UTC)
    return when.strftime("%Y-%m-%dT%H:%M" if when.second == 0 else "%Y-%m-%dT%H:%M:%S")


def filter_fields(where: DeliveryFilter, raw: Mapping[str, str]) -> dict[str, str]:
    """The filter as form fields and query parameters: empty ones left out of the URL."""
    return {
        "state": where.state.value if where.state is not None else "",
        "subscriber": where.subscriber or "",
        "type": where.event_type or "",
        "record": where.record_id or "",
        "since": _local(where.since) if where.since is not None else raw.get("since", ""),
        "until": _local(where.until) if where.until is not None else raw.get("until", ""),
    }


def deliveries_url(fields: Mapping[str, str], **extra: str | int) -> str:
    """`/ui/deliveries` with the filter (and `extra`) in its query string: shareable."""
    query = {k: v for k, v in fields.items() if v} | {k: str(v) for k, v in extra.items()}
    return "/ui/deliveries" + (f"?{urlencode(query)}" if query else "")


def raw_fields(get: Callable[[str], object]) -> dict[str, str]:
    """The filter's fields as they were sent (a query string or a form)."""
    return {k: v.strip() if isinstance(v := get(k), str) else "" for k in FILTER_KEYS}


def retried_notice(count: int) -> str:
    if count == 0:
        return "No failed delivery matches this filter: none queued"
    many = "deliveries" if count > 1 else "delivery"
    return f"{count} failed {many} matching this filter queued to be sent again"


async def deliveries(request: web.Request) -> web.Response:
    """The deliveries a filter matches (`state`, `subscriber`, `type`, `record`, `since`,
    `until` in the query string), newest first, a page at a time (`before`)."""
    raw = raw_fields(request.query.get)
    notice = None
    if (retried := request.query.get("retried", "")).isascii() and retried.isdigit():
        notice = retried_notice(int(retried))
    try:
        where = parse_filter(lambda key: raw[key] or None)
        before_raw = request.query.get("before", "")
        before = parse_id(before_raw, "before") if before_raw else None
    except RequestError as exc:
        return await deliveries_page(request, None, raw, error=str(exc), status=400)
    return await deliveries_page(request, where, raw, before=before, notice=notice)


async def deliveries_page(
    request: web.Request,
    where: DeliveryFilter | None,
    raw: Mapping[str, str],
    *,
    before: int | None = None,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    """The deliveries page for the filter `where` (None: it could not be read, nothing is
    listed), its form showing `raw`."""
    bridge = host(request)
    fields = filter_fields(where, raw) if where is not None else dict(raw)
    found: dict[str, Any] = {"deliveries": [], "next_before": None}
    if where is not None:
        found = await bridge.ops.deliveries(where, limit=PAGE, before=before)
    next_before = found["next_before"]
    return render(
        request,
        "deliveries.html",
        status,
        title="Deliveries",
        deliveries=found["deliveries"],
        listed=where is not None,
        older=deliveries_url(fields, before=next_before) if next_before else None,
        f=fields,
        filtered=any(fields.values()),
        retry_all=where is not None and where.state in (None, DeliveryState.FAILED),
        states=[s.value for s in DeliveryState],
        subscriber_ids=[s.id for s in bridge.settings.subscribers],
        types=EVENT_TYPES,
        notice=notice,
        error=error,
        live=await live(request),
    )


async def delivery(request: web.Request, notice: str | None = None) -> web.Response:
    delivery_id = parse_id(request.match_info["id"], "id")
    return render(
        request,
        "delivery.html",
        title=f"Delivery {delivery_id}",
        d=await host(request).ops.delivery(delivery_id),
        notice=notice,
    )


# --- events ---------------------------------------------------------------------------


async def events(
    request: web.Request,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    """Stored events newest first, of one type or one record (`type`, `record`), a page at a
    time (`before`, an event id)."""
    bridge = host(request)
    query = request.query
    event_type = parse_event_type(query.get("type"))
    record = parse_record(query.get("record"))
    before = query.get("before") or None
    found = await bridge.ops.events(
        event_type=event_type, record_id=record, limit=PAGE, before=before
    )
    shown = {"type": event_type or "", "record": record or ""}
    older = None
    if found["next_before"]:
        kept = {k: v for k, v in shown.items() if v}
        older = "/ui/events?" + urlencode({**kept, "before": found["next_before"]})
    return render(
        request,
        "events.html",
        status,
        title="Events",
        events=found["events"],
        shown=shown,
        older=older,
        types=EVENT_TYPES,
        subscriber_ids=[s.id for s in bridge.settings.subscribers],
        notice=notice,
        error=error,
        live=await live(request),
    )
