"""The operator's list parameters, read the same way by the admin API and the commands:
`state` and `limit`, or a `RequestError` naming the parameter."""

from __future__ import annotations

from bridge.errors import RequestError
from bridge.models import DeliveryState

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


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
