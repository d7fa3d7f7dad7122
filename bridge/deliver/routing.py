"""Which subscribers an event goes to: their `events` lists, exact types or globs."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from bridge.config import SubscriberConfig
from bridge.models import PROGRESS, REPORTS, TEST, split_key

# sent only to subscribers that name them exactly: no glob (`denoise.*`, `bridge.*`, `*`)
EXPLICIT_ONLY = frozenset({PROGRESS, TEST, *REPORTS})


def wants(patterns: Sequence[str], event_type: str) -> bool:
    """Exact or glob match; `denoise.progress`, `bridge.test` and the bridge's reports on
    itself (`bridge.subscriber_disabled`, `bridge.delivery_dead_lettered`) only when listed
    exactly."""
    if event_type in EXPLICIT_ONLY:
        return event_type in patterns
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def route(event_type: str, subscribers: Sequence[SubscriberConfig]) -> list[str]:
    """Ids of the subscribers that asked for `event_type` (enabled or not: a disabled
    subscriber's deliveries wait for it)."""
    return [s.id for s in subscribers if wants(s.events, event_type)]


def takes(sub: SubscriberConfig, account: str) -> bool:
    """Whether `sub` gets the events of Munsit account `account` (`accounts`; none: all)."""
    return sub.accounts is None or account in sub.accounts


def for_account(subscribers: Sequence[SubscriberConfig], account: str) -> list[SubscriberConfig]:
    """The subscribers that get `account`'s events."""
    return [s for s in subscribers if takes(s, account)]


def route_stored(
    event_type: str, record_id: str, subscribers: Sequence[SubscriberConfig]
) -> list[str]:
    """`route` for a stored event (a replay): a `denoise.*` event only to the subscribers
    that get its account's events; the bridge's own to any that list them."""
    if event_type.startswith("denoise."):
        subscribers = for_account(subscribers, split_key(record_id)[0])
    return route(event_type, subscribers)
