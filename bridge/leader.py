"""Which replica polls Munsit, when several share a store: the holder of the poller's lease.

Every replica delivers; only the leader polls and holds the progress streams. The lease is
a row in the store, taken when free or run out and renewed every third of its length, by
the database's clock. A leader that cannot renew (the store does not answer, or answers
that another replica holds the lease) stops polling once two thirds of the lease have
passed since its last successful renewal was sent: before the lease can run out and pass
to another replica, so two never poll at once. A clean shutdown gives the lease up, so
another replica takes over at its next renewal rather than when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from bridge.clock import Clock, sleep_or_event
from bridge.errors import StoreError
from bridge.redact import describe
from bridge.store.base import LeaderStore

log = structlog.get_logger("bridge.leader")

RENEWALS_PER_LEASE = 3
STEP_DOWN_AFTER = 2 / 3  # of the lease since the last good renewal was sent


class Leadership:
    """Run `polling` while this replica holds the poller's lease, and only then.

    `polling` runs until cancelled; `last_poll_at` is recorded with each renewal, so that
    followers can tell whether the leader's polls succeed."""

    def __init__(
        self,
        store: LeaderStore,
        *,
        replica: str,
        lease_s: float,
        clock: Clock,
        polling: Callable[[], Coroutine[Any, Any, None]],
        last_poll_at: Callable[[], float | None],
        on_change: Callable[[bool], None] = lambda _leader: None,
    ) -> None:
        self._store = store
        self.replica = replica
        self.lease_s = lease_s
        self._clock = clock
        self._polling = polling
        self._last_poll_at = last_poll_at
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._renewed_at: float | None = None  # when the last good renewal was sent
        self._failing = False

    @property
    def is_leader(self) -> bool:
        return self._task is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Take or renew the lease every `lease_s / 3` until `stop` is set; give it up then."""
        every = self.lease_s / RENEWALS_PER_LEASE
        try:
            while not stop.is_set():
                sent = self._clock.now()
                await self._renew(sent, timeout_s=every)
                await sleep_or_event(self._clock, max(0.0, sent + every - self._clock.now()), stop)
        finally:
            await self._step_down(None)
            await self._resign()

    async def _renew(self, sent: float, *, timeout_s: float) -> None:
        try:
            held = await asyncio.wait_for(
                self._store.hold_leadership(
                    self.replica, self.lease_s, last_poll_at=self._last_poll_at()
                ),
                timeout=timeout_s,
            )
        except (StoreError, TimeoutError) as exc:
            if not self._failing:
                log.warning("cannot renew the poller's lease", error=describe(exc))
            self._failing = True
            deadline = (self._renewed_at or sent) + self.lease_s * STEP_DOWN_AFTER
            if self.is_leader and self._clock.now() >= deadline:
                await self._step_down("the poller's lease could not be renewed in time")
            return
        if self._failing:
            log.info("the poller's lease answers again")
        self._failing = False
        if not held:
            await self._step_down("another replica holds the poller's lease")
            return
        self._renewed_at = sent
        if self._task is None:
            self._task = asyncio.create_task(self._polling())
            log.info("leader: this replica polls Munsit", lease_s=self.lease_s)
            self._on_change(True)

    async def _step_down(self, reason: str | None) -> None:
        """Stop polling (None: the service is stopping, the lease is given up next)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._renewed_at = None
        if reason is None:
            log.info("stopped polling, giving the poller's lease up")
        else:
            log.warning("follower: this replica stopped polling", reason=reason)
        self._on_change(False)

    async def _resign(self) -> None:
        with contextlib.suppress(StoreError, TimeoutError):
            await asyncio.wait_for(self._store.resign(self.replica), timeout=2.0)
