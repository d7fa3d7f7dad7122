"""Which subscribers an event goes to: their `events` lists, exact types or globs."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from bridge.config import SubscriberConfig
from bridge.models import PROGRESS, TEST


def wants(patterns: Sequence[str], event_type: str) -> bool:
    """Exact or glob match; `denoise.progress` and `bridge.test` only when listed exactly."""
    if event_type in (PROGRESS, TEST):
        return event_type in patterns
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def route(event_type: str, subscribers: Sequence[SubscriberConfig]) -> list[str]:
    """Ids of the subscribers that asked for `event_type` (enabled or not: a disabled
    subscriber's deliveries wait for it)."""
    return [s.id for s in subscribers if wants(s.events, event_type)]
