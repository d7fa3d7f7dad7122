"""JSON shapes of the admin API: pure functions of the stored objects. No secret goes out:
URLs show scheme, host and port, and stored error texts are redacted again on the way out
(rows written before redaction may hold whole URLs)."""

from __future__ import annotations

from typing import Any

from bridge.config import SubscriberConfig
from bridge.deliver.formats import standard_body
from bridge.deliver.sender import EXCERPT_BYTES
from bridge.models import Attempt, DeliveryState, DeliveryView, Event, iso_utc
from bridge.redact import redact_text, redact_url
from bridge.store.base import SubscriberHealth


def iso(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(ts)


def _redacted(text: str | None) -> str | None:
    return None if text is None else redact_text(text)


def subscriber_state(sub: SubscriberConfig, health: SubscriberHealth) -> str:
    if not sub.enabled:
        return "paused"
    return "disabled" if health.disabled_at is not None else "active"


def subscriber(
    sub: SubscriberConfig, health: SubscriberHealth, counts: dict[DeliveryState, int] | None
) -> dict[str, Any]:
    state = subscriber_state(sub, health)
    return {
        "id": sub.id,
        "url": redact_url(sub.url),
        "format": sub.format,
        "events": list(sub.events),
        "state": state,
        "enabled": state == "active",
        "disabled_at": iso(health.disabled_at),
        "disabled_reason": _redacted(health.reason),
        "failing_since": iso(health.failing_since),
        "max_concurrency": sub.max_concurrency,
        "rate_limit_per_s": sub.rate_per_s,
        "deliveries": {s.value: (counts or {}).get(s, 0) for s in DeliveryState},
    }


def event(evt: Event) -> dict[str, Any]:
    return {**standard_body(evt), "record_id": evt.record_id}


def attempt(att: Attempt) -> dict[str, Any]:
    return {
        "attempted_at": iso_utc(att.attempted_at),
        "status_code": att.status_code,
        "latency_ms": round(att.latency_ms, 1),
        "error": _redacted(att.error),
        # redaction may lengthen a bare `http://`; the excerpt stays within its 4 KiB
        "response_excerpt": redact_text(att.response_excerpt)[:EXCERPT_BYTES],
    }


def delivery(view: DeliveryView, *, with_attempts: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": view.id,
        "event_id": view.event_id,
        "event_type": view.event_type,
        "record_id": view.record_id,
        "subscriber": view.subscriber_id,
        "state": view.state.value,
        "attempt_count": view.attempts,
        "next_attempt_at": iso(view.next_attempt_at),
        "created_at": iso(view.created_at),
        "updated_at": iso(view.updated_at),
        "last_attempt": attempt(view.history[-1]) if view.history else None,
    }
    if with_attempts:
        body["attempts"] = [attempt(a) for a in view.history]
    return body
