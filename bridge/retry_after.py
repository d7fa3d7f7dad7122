"""`Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP date, as seconds from now.
Whatever a receiver sends, these return a number or None, never raise."""

from __future__ import annotations

import json
import math
import re
from email.utils import parsedate_to_datetime

_DELAY_SECONDS = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() accepts '²' and '٣'


def body_retry_after(body: bytes) -> float | None:
    """Discord's 429 JSON body: `{"retry_after": <seconds, float>, ...}`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    value = data.get("retry_after") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float: forever
        return math.inf
    return seconds if seconds >= 0 else None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """`Retry-After` as seconds from `now`: delay-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)  # a long run of digits is inf; the policy caps it
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
