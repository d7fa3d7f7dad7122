"""The bridge's reports on itself: `bridge.subscriber_disabled` when it disables an endpoint,
`bridge.delivery_dead_lettered` when a delivery fails for good.

Reports are ordinary events (stored, delivered through the outbox, retried, in the pull
feed), made here as pure functions of what happened. Their ids are digests of the subject,
the type and the occurrence, so the same occurrence recorded twice (two writers, a retried
write) is one event and a later one another. They go only to subscribers that list their
type exactly, and a delivery of a `bridge.*` event that dead-letters reports nothing: a
report about a report is never made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bridge.config import SubscriberConfig
from bridge.deliver.routing import route
from bridge.models import (
    DEAD_LETTERED,
    SUBSCRIBER_DISABLED,
    Attempt,
    Delivery,
    Event,
    Report,
    event_id,
    iso_utc,
)
from bridge.redact import redact_text, redact_url, scrub
from bridge.store.base import SubscriberHealth

ERROR_CHARS = 1000  # of `last_error`, as stored with an attempt
REASON_CHARS = 500
TITLES = {
    SUBSCRIBER_DISABLED: "⚠️ Subscriber disabled",
    DEAD_LETTERED: "❌ Delivery failed for good",
}


def reportable(event_type: str) -> bool:
    """Whether a delivery of an event of this type may be reported when it dead-letters:
    never a `bridge.*` one (a report about a report would loop)."""
    return not event_type.startswith("bridge.")


def disabled_event(sub: SubscriberConfig, health: SubscriberHealth) -> Event:
    """`bridge.subscriber_disabled` for `sub`, disabled by the bridge as `health` says
    (its `disabled_at` is set). The id is a digest of (subscriber, type, disabled_at)."""
    if health.disabled_at is None:
        raise ValueError(f"subscriber {sub.id!r} is not disabled")
    disabled_at = health.disabled_at
    data: dict[str, Any] = {
        "subscriber": sub.id,
        "url": redact_url(sub.url),
        "reason": _clean(health.reason or "disabled by the bridge", REASON_CHARS, sub.url),
        "disabled_at": iso_utc(disabled_at),
        "failing_since": None if health.failing_since is None else iso_utc(health.failing_since),
    }
    return Event(
        id=event_id(f"subscriber:{sub.id}\x00{disabled_at!r}", SUBSCRIBER_DISABLED),
        type=SUBSCRIBER_DISABLED,
        record_id=f"subscriber:{sub.id}",
        occurred_at=disabled_at,
        previous_status=None,
        data=data,
    )


def dead_lettered_event(delivery: Delivery, attempt: Attempt, *, url: str) -> Event:
    """`bridge.delivery_dead_lettered` for `delivery`, whose `attempt` (its last: number
    `delivery.attempts + 1`) failed it for good; `url` is its subscriber's, whose secret
    parts are hidden from the error text. The id is a digest of (delivery, type, attempts)."""
    attempts = delivery.attempts + 1
    data: dict[str, Any] = {
        "delivery_id": delivery.id,
        "subscriber": delivery.subscriber_id,
        "event_id": delivery.event.id,
        "event_type": delivery.event.type,
        "record_id": delivery.event.record_id,
        "attempts": attempts,
        "last_status_code": attempt.status_code,
        "last_error": None if attempt.error is None else _clean(attempt.error, ERROR_CHARS, url),
    }
    return Event(
        id=event_id(f"delivery:{delivery.id}\x00{attempts}", DEAD_LETTERED),
        type=DEAD_LETTERED,
        record_id=f"delivery:{delivery.id}",
        occurred_at=attempt.attempted_at,
        previous_status=None,
        data=data,
    )


def subscriber_disabled(
    sub: SubscriberConfig, health: SubscriberHealth, subscribers: Sequence[SubscriberConfig]
) -> Report:
    """The report of the bridge disabling `sub`, to the subscribers that list its type."""
    return Report(disabled_event(sub, health), tuple(route(SUBSCRIBER_DISABLED, subscribers)))


def dead_lettered(
    delivery: Delivery,
    attempt: Attempt,
    *,
    url: str,
    subscribers: Sequence[SubscriberConfig],
) -> Report | None:
    """The report of `delivery` failing for good, to the subscribers that list its type;
    None for a delivery of a `bridge.*` event (no loops)."""
    if not reportable(delivery.event.type):
        return None
    event = dead_lettered_event(delivery, attempt, url=url)
    return Report(event, tuple(route(DEAD_LETTERED, subscribers)))


def _clean(text: str, limit: int, url: str) -> str:
    """One line of at most `limit` characters, no URL path, query or user-info in it."""
    line = " ".join(scrub(redact_text(text), url).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- rendering help for the formats (pure functions of the stored event) ---


def _text(data: Mapping[str, Any], key: str, default: str = "—") -> str:
    value = data.get(key)
    return default if value is None or value == "" else str(value)


def last_answer(data: Mapping[str, Any]) -> str:
    """What the last attempt of a dead letter got: its error, else its status code."""
    error = data.get("last_error")
    if error:
        return str(error)
    code = data.get("last_status_code")
    return f"HTTP {code}" if code is not None else "no answer"


def headline(event: Event) -> str:
    """The one line people read first, e.g. `⚠️ munsit-bridge disabled subscriber X: …`."""
    data = event.data
    if event.type == SUBSCRIBER_DISABLED:
        return (
            f"⚠️ munsit-bridge disabled subscriber {_text(data, 'subscriber')}: "
            f"{_text(data, 'reason', 'no reason given')}"
        )
    attempts = data.get("attempts")
    times = "1 attempt" if attempts == 1 else f"{_text(data, 'attempts', '?')} attempts"
    return (
        f"❌ Delivery {_text(data, 'delivery_id', '?')} of {_text(data, 'event_id', '?')} "
        f"to {_text(data, 'subscriber')} failed for good after {times}: {last_answer(data)}"
    )


def facts(event: Event) -> list[tuple[str, str]]:
    """The report's facts as (label, value), for chat messages."""
    data = event.data
    if event.type == SUBSCRIBER_DISABLED:
        return [
            ("Subscriber", _text(data, "subscriber")),
            ("Endpoint", _text(data, "url")),
            ("Reason", _text(data, "reason")),
            ("Disabled at", _text(data, "disabled_at")),
            ("Failing since", _text(data, "failing_since")),
        ]
    return [
        ("Subscriber", _text(data, "subscriber")),
        ("Delivery", _text(data, "delivery_id")),
        ("Event", f"{_text(data, 'event_type')} {_text(data, 'event_id')}"),
        ("Record", _text(data, "record_id")),
        ("Attempts", _text(data, "attempts")),
        ("Last answer", last_answer(data)),
    ]


def zapier_fields(event: Event) -> dict[str, Any]:
    """Flat scalar keys for Zapier: the usual `event_id`, `event_type`, `occurred_at`,
    `record_id`, `status`, `previous_status`, a `message`, then the report's own data (a
    dead letter's event, type and record as `failed_event_id`, `failed_event_type` and
    `failed_record_id`, since the first three names are the report's own)."""
    data = event.data
    disabled = event.type == SUBSCRIBER_DISABLED
    body: dict[str, Any] = {
        "event_id": event.id,
        "event_type": event.type,
        "occurred_at": iso_utc(event.occurred_at),
        "record_id": event.record_id,
        "status": "disabled" if disabled else "failed",
        "previous_status": event.previous_status,
        "message": headline(event),
    }
    renamed = {"event_id": "failed_event_id", "event_type": "failed_event_type"}
    renamed["record_id"] = "failed_record_id"
    keys = (
        ("subscriber", "url", "reason", "disabled_at", "failing_since")
        if disabled
        else (
            "delivery_id",
            "subscriber",
            "event_id",
            "event_type",
            "record_id",
            "attempts",
            "last_status_code",
            "last_error",
        )
    )
    for key in keys:
        value = data.get(key)
        body[renamed.get(key, key)] = (
            value if value is None or isinstance(value, str | int | float | bool) else str(value)
        )
    return body
