"""Retry policy, pure: classify an attempt and compute when the next one is due."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from bridge.models import DeliveryState
from bridge.store.base import AttemptOutcome, SubscriberHealth

MAX_RETRY_AFTER_S = 3600.0


def is_success(status_code: int | None) -> bool:
    """Any 2xx. Redirects are never followed, so 3xx is a failure like every other code."""
    return status_code is not None and 200 <= status_code < 300


def disable_reason(status_code: int | None, *, failing_for_s: float, limit_s: float) -> str | None:
    """Why a failing endpoint is to be disabled now, if it is: 410 Gone at once, any other
    failure once it has lasted `limit_s` without a single success."""
    if status_code == 410:
        return "the endpoint answered 410 Gone"
    if failing_for_s >= limit_s:
        return f"failing continuously for {failing_for_s:.0f} s (delivery.disable_after_s)"
    return None


def health_after(
    health: SubscriberHealth, status_code: int | None, *, now: float, limit_s: float
) -> SubscriberHealth:
    """An endpoint's health once an attempt made at `now` got `status_code`: a success ends
    its failure run, a failure starts or extends one and may disable it (`disable_reason`)."""
    if is_success(status_code):
        return health if health.failing_since is None else replace(health, failing_since=None)
    since = health.failing_since if health.failing_since is not None else now
    updated = replace(health, failing_since=since)
    reason = disable_reason(status_code, failing_for_s=now - since, limit_s=limit_s)
    if reason is not None and health.disabled_at is None:
        updated = replace(updated, disabled_at=now, reason=reason)
    return updated


def retry_delay_s(
    attempts_done: int,
    schedule_s: Sequence[float],
    jitter: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Delay after attempt number `attempts_done` (1-based), ± `jitter`; None when exhausted."""
    if attempts_done < 1 or attempts_done > len(schedule_s):
        return None
    base = schedule_s[attempts_done - 1]
    return base * (1 + jitter * (2 * rand() - 1))


def decide(
    status_code: int | None,
    *,
    attempts_done: int,
    now: float,
    schedule_s: Sequence[float],
    jitter: float,
    rand: Callable[[], float] = random.random,
    retry_after_s: float | None = None,
) -> AttemptOutcome:
    """Where a delivery stands after its `attempts_done`-th attempt got `status_code`
    (None: no response: timeout, connection or TLS error). On 429 and 503 a `Retry-After`
    longer than the scheduled delay wins, capped at an hour."""
    if is_success(status_code):
        return AttemptOutcome(DeliveryState.DELIVERED)
    delay = retry_delay_s(attempts_done, schedule_s, jitter, rand)
    if delay is None:
        return AttemptOutcome(DeliveryState.FAILED)
    if status_code in (429, 503) and retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return AttemptOutcome(DeliveryState.PENDING, next_attempt_at=now + delay)
