"""Replay: send stored events again, with their original ids, to the subscribers they match."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from bridge.config import SubscriberConfig
from bridge.deliver.routing import route
from bridge.errors import RequestError
from bridge.models import EVENT_TYPES, Replayed
from bridge.store.base import OperationsStore


def parse_since(text: str) -> float:
    """ISO 8601 (`2026-11-24`, `2026-11-24T10:00:00Z`, with any offset) as unix seconds;
    a time without an offset is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(
            f"since: {text!r} is not an ISO 8601 time (e.g. 2026-11-24T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def replay(
    store: OperationsStore,
    subscribers: Sequence[SubscriberConfig],
    *,
    since: float,
    subscriber: str | None,
    event_type: str | None,
    now: float,
) -> Replayed:
    """Re-enqueue stored events since `since`, optionally of one subscriber and one type."""
    if subscriber is not None and subscriber not in {s.id for s in subscribers}:
        known = ", ".join(s.id for s in subscribers) or "none"
        raise RequestError(f"subscriber: no subscriber {subscriber!r} (known: {known})")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise RequestError(
            f"type: unknown event type {event_type!r} (one of {', '.join(EVENT_TYPES)})"
        )
    chosen = [s for s in subscribers if subscriber is None or s.id == subscriber]
    return await store.replay(
        since=since,
        event_type=event_type,
        targets=lambda etype: route(etype, chosen),
        now=now,
    )


def summary(result: Replayed, subscriber: str | None) -> str:
    """One line for people: what was queued and why the other events went nowhere."""
    parts = [f"replayed {result.events} stored events: {result.deliveries} deliveries queued"]
    if result.already_pending:
        parts.append(f"{result.already_pending} deliveries already pending (left as they are)")
    if result.unmatched and subscriber:
        parts.append(f"{result.unmatched} events match none of subscriber {subscriber}'s events")
    elif result.unmatched:
        parts.append(f"{result.unmatched} events match no subscriber's events")
    text = "; ".join(parts)
    if result.deliveries:
        text += " (a running bridge sends them within a minute)"
    return text
