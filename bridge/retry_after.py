"""`Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP date, as seconds from now."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime


def body_retry_after(body: bytes) -> float | None:
    """Discord's 429 JSON body: `{"retry_after": <seconds, float>, ...}`."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("retry_after") if isinstance(data, dict) else None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """`Retry-After` as seconds from `now`: delay-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
