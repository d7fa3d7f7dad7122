"""Sample events for `check`: one of every type a subscriber gets, from an account it gets
events of, built the way the bridge builds the real ones. A body template is rendered
against each, so a template that fails only on `denoise.failed` (or on a report) fails
`check` too, not the first real delivery."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.config import SubscriberConfig
from bridge.deliver.reports import dead_lettered_event, disabled_event
from bridge.deliver.routing import wants
from bridge.deliver.sendtest import sample_event
from bridge.detect.progress import progress_event_id
from bridge.examples import EXAMPLE, RECORD, RECORD_ID
from bridge.models import (
    COMPLETED,
    CREATED,
    DEAD_LETTERED,
    FAILED_EVENT,
    PROGRESS,
    SUBSCRIBER_DISABLED,
    TEST,
    Attempt,
    Delivery,
    Event,
    event_id,
    record_key,
)
from bridge.store.base import SubscriberHealth

AT = EXAMPLE.occurred_at


def _record_event(event_type: str, key: str, previous: str | None = "pending") -> Event:
    data: dict[str, object] = dict(RECORD)
    if event_type == CREATED:
        data |= {"status": "pending", "audio_url": None}
        previous = None
    elif event_type == FAILED_EVENT:
        data |= {"status": "failed", "audio_url": None, "error": "unsupported audio codec"}
    elif event_type == PROGRESS:
        data = {"id": RECORD_ID, "status": "pending", "stage": "processing", "pct": 42}
        return Event(progress_event_id(key, 42), PROGRESS, key, AT, "pending", data)
    return Event(event_id(key, event_type), event_type, key, AT, previous, data)


def samples(sub: SubscriberConfig, account_ids: Sequence[str]) -> list[Event]:
    """A sample of every event type `sub` gets (its `events`), its `denoise.*` ones from the
    first account it gets events of."""
    account = (sub.accounts or list(account_ids))[0]
    key = record_key(account, RECORD_ID)
    out: list[Event] = []
    for event_type in (CREATED, COMPLETED, FAILED_EVENT, PROGRESS):
        if wants(sub.events, event_type):
            out.append(_record_event(event_type, key))
            if event_type in (COMPLETED, FAILED_EVENT):  # a record first seen finished
                out.append(_record_event(event_type, key, previous=None))
    if wants(sub.events, TEST):
        out.append(sample_event(AT))
    if wants(sub.events, SUBSCRIBER_DISABLED):
        health = SubscriberHealth(AT - 432000, AT, "failing for 432000 s (5 days)")
        out.append(disabled_event(sub, health))
    if wants(sub.events, DEAD_LETTERED):
        delivery = Delivery(42, out[0] if out else EXAMPLE, sub.id, 7, "")
        attempt = Attempt(AT, 503, 812.0, "503 Service Unavailable", "")
        out.append(dead_lettered_event(delivery, attempt, url=sub.url))
    return out
