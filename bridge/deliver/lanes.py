"""Per-subscriber lanes: concurrency caps and token-bucket rate limits, pure (time is a
parameter), so one slow or throttled endpoint never takes another's slots."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bridge.models import JOB_TARGET

# the one lane of every gateway job's callback (target ids `job:<record id>`): its
# `max_concurrency` caps the callback requests in flight at once
JOB_LANE = JOB_TARGET


def lane_of(target_id: str) -> str:
    """The lane a delivery target's deliveries go through: a subscriber's own, or the
    callbacks' lane for every `job:<record id>`."""
    return JOB_LANE if target_id.startswith(JOB_TARGET) else target_id


def callback_cap(max_in_flight: int) -> int:
    """Callback requests in flight at once at most: half of `delivery.max_in_flight`, at
    least 1, so callbacks and subscribers never take all of each other's slots."""
    return max(1, max_in_flight // 2)


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_s` tokens a second, holding at most `max(1, rate_per_s)`; None = unlimited."""

    rate_per_s: float | None
    tokens: float = 0.0
    updated_at: float | None = None

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate_per_s or 1.0)

    def _refill(self, now: float) -> None:
        if self.rate_per_s is None:
            return
        if self.updated_at is None:
            self.tokens = self.capacity
        else:
            elapsed = max(0.0, now - self.updated_at)
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        self.updated_at = now

    def available(self, now: float) -> int:
        """Whole requests that may start now."""
        if self.rate_per_s is None:
            return 1_000_000
        self._refill(now)
        return math.floor(self.tokens + 1e-9)

    def take(self, now: float) -> None:
        if self.rate_per_s is not None:
            self._refill(now)
            self.tokens -= 1

    def wait_s(self, now: float) -> float:
        """Seconds until the next whole token (0 when one is there)."""
        if self.rate_per_s is None:
            return 0.0
        self._refill(now)
        return max(0.0, (1 - self.tokens) / self.rate_per_s)


@dataclass(slots=True)
class Lane:
    """One subscriber's share of the dispatcher."""

    subscriber_id: str
    max_concurrency: int
    bucket: TokenBucket
    in_flight: int = 0

    def room(self, now: float, free: int) -> int:
        """How many deliveries this lane may start now, with `free` global slots left."""
        return max(0, min(free, self.max_concurrency - self.in_flight, self.bucket.available(now)))
