"""The operator's parameters, read the same way by the admin API, the dashboard and the
commands: each a `RequestError` naming the parameter when it is wrong."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from bridge.errors import RequestError
from bridge.models import EVENT_TYPES, DeliveryFilter, DeliveryState

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# `…T10:00:00 01:00`: a `+01:00` offset whose `+` a query string turned into a space
_PLUS_AS_SPACE = re.compile(r"^(.*\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)$")
FILTER_KEYS = ("state", "subscriber", "type", "record", "since", "until")


def parse_state(raw: str | None) -> DeliveryState | None:
    """`--state` / `?state=`: a delivery state, or None (all) when not given."""
    if not raw:
        return None
    if raw not in DeliveryState.__members__.values():
        choices = "|".join(s.value for s in DeliveryState)
        raise RequestError(f"state: {raw!r} is not one of {choices}")
    return DeliveryState(raw)


def parse_limit(raw: str | None) -> int:
    """`--limit` / `?limit=`: 1 to `MAX_LIMIT`, `DEFAULT_LIMIT` when not given."""
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise RequestError(f"limit: {raw!r} is not an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def parse_event_type(raw: str | None, name: str = "type") -> str | None:
    """An event type, or None (all) when not given."""
    if not raw:
        return None
    if raw not in EVENT_TYPES:
        raise RequestError(f"{name}: unknown event type {raw!r} (one of {', '.join(EVENT_TYPES)})")
    return raw


def parse_id(raw: str, name: str) -> int:
    """A delivery id: ASCII digits only (`str.isdigit` also passes `²`), positive."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise RequestError(f"{name}: {raw[:100]!r} is not a delivery id (a positive integer)")
    return int(raw)


def parse_time(text: str, name: str = "since") -> float:
    """ISO 8601 (`2026-11-24`, `2026-11-24T10:00:00Z`, any offset) as unix seconds; a time
    without an offset is UTC."""
    text = _PLUS_AS_SPACE.sub(r"\1+\2", text.strip())
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(
            f"{name}: {text[:100]!r} is not an ISO 8601 time (e.g. 2026-11-24T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_record(raw: str | None) -> str | None:
    if not raw or not raw.strip():
        return None
    if len(raw) > 256:
        raise RequestError("record: a record id is at most 256 characters")
    return raw.strip()


def parse_filter(get: Callable[[str], str | None]) -> DeliveryFilter:
    """A delivery filter from `state`, `subscriber`, `type`, `record`, `since`, `until`
    (each optional; empty means all; `until` at or before `since` matches nothing), read
    through `get` (a query string, a form, flags)."""
    since_raw, until_raw = get("since"), get("until")
    since = parse_time(since_raw, "since") if since_raw else None
    until = parse_time(until_raw, "until") if until_raw else None
    return DeliveryFilter(
        state=parse_state(get("state")),
        subscriber=get("subscriber") or None,
        event_type=parse_event_type(get("type")),
        record_id=parse_record(get("record")),
        since=since,
        until=until,
    )
