"""Request bodies: a pure function of the event and the subscriber's format."""

from __future__ import annotations

import json
from typing import Any

from bridge.models import Event, iso_utc

SUPPORTED_FORMATS = frozenset({"standard"})


def standard_body(event: Event) -> dict[str, Any]:
    """The `standard` body of CONTRACT §3: the Munsit record exactly as last fetched."""
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": iso_utc(event.occurred_at),
        "previous_status": event.previous_status,
        "data": dict(event.data),
    }


def render(event: Event, fmt: str) -> str:
    """The request body as text (signed and sent as UTF-8)."""
    if fmt != "standard":
        raise ValueError(f"format {fmt!r} is not available in this version")
    return json.dumps(standard_body(event), ensure_ascii=False, separators=(",", ":"))
