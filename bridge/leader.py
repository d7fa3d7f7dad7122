"""Which replica polls Munsit, when several share a store: the holder of the poller's lease.

Every replica delivers; only the leader polls and holds the progress streams. The lease is
a row in the store, taken when free or run out and renewed every third of its length, by
the database's clock. A leader that cannot renew (the store does not answer, answers late,
or says that another replica holds the lease) stops polling once two thirds of the lease
have passed since its last successful renewal was sent: before the lease can run out and
pass to another replica, so two never poll at once. That deadline is kept by this process's
monotonic clock, whatever a renewal in flight is doing (a renewal that hangs is left to
end on its own, never waited for). Followers ask for the lease every second at most, so
one takes over within a second of the lease running out. A clean shutdown gives the lease
up, so another replica takes over at its next try rather than when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from bridge.errors import StoreError
from bridge.redact import describe
from bridge.store.base import LeaderStore

log = structlog.get_logger("bridge.leader")

RENEWALS_PER_LEASE = 3
STEP_DOWN_AFTER = 2 / 3  # of the lease since the last good renewal was sent
FOLLOWER_TRY_S = 1.0  # a follower asks at least this often (or every third of the lease)
RESIGN_TIMEOUT_S = 2.0


class Leadership:
    """Run `polling` while this replica holds the poller's lease, and only then.

    `polling` runs until cancelled; `last_poll_at` is recorded with each renewal, so that
    followers can tell whether the leader's polls succeed. `holder` names this process in
    the lease (unique even when two processes were given the same replica id)."""

    def __init__(
        self,
        store: LeaderStore,
        *,
        holder: str,
        lease_s: float,
        polling: Callable[[], Coroutine[Any, Any, None]],
        last_poll_at: Callable[[], float | None],
        on_change: Callable[[bool], None] = lambda _leader: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.holder = holder
        self.lease_s = lease_s
        self._polling = polling
        self._last_poll_at = last_poll_at
        self._on_change = on_change
        self._mono = monotonic
        self._task: asyncio.Task[None] | None = None
        self._renewal: asyncio.Future[bool] | None = None
        self._renewal_sent = 0.0  # when the renewal in flight was sent (monotonic)
        self._deadline = 0.0  # leading: stop polling at this monotonic time unless renewed
        self._failing = False

    @property
    def is_leader(self) -> bool:
        return self._task is not None

    def _every(self) -> float:
        every = self.lease_s / RENEWALS_PER_LEASE
        return every if self.is_leader else min(every, FOLLOWER_TRY_S)

    async def run(self, stop: asyncio.Event) -> None:
        """Take or renew the lease until `stop` is set; give it up then."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                sent = self._mono()
                next_try = sent + self._every()
                if self._renewal is None:  # one in flight at a time; a hung one is not awaited
                    self._renewal = asyncio.ensure_future(
                        self._store.hold_leadership(
                            self.holder, self.lease_s, last_poll_at=self._last_poll_at()
                        )
                    )
                    self._renewal_sent = sent
                while not stop.is_set():
                    wake = min(next_try, self._deadline) if self.is_leader else next_try
                    timeout = max(0.0, wake - self._mono())
                    waiting: set[asyncio.Future[Any]] = {stopped}
                    if self._renewal is not None:
                        waiting.add(self._renewal)
                    await asyncio.wait(waiting, timeout=timeout, return_when="FIRST_COMPLETED")
                    if self._renewal is not None and self._renewal.done():
                        renewal, self._renewal = self._renewal, None
                        await self._answered(renewal, self._renewal_sent, stop)
                    if self.is_leader and self._mono() >= self._deadline:
                        await self._step_down("the poller's lease could not be renewed in time")
                    if self._mono() >= next_try:
                        break
        finally:
            stopped.cancel()
            await self._step_down(None)
            await self._resign()

    async def _answered(
        self, renewal: asyncio.Future[bool], sent: float, stop: asyncio.Event
    ) -> None:
        exc = renewal.exception()
        if exc is not None:
            if not self._failing:
                log.warning("cannot renew the poller's lease", error=describe(exc))
            self._failing = True
            return
        if self._failing:
            log.info("the poller's lease answers again")
        self._failing = False
        if not renewal.result():
            await self._step_down("another replica holds the poller's lease")
            return
        if stop.is_set():
            return  # the service is stopping: the lease is given up next
        self._deadline = sent + self.lease_s * STEP_DOWN_AFTER
        if self._task is None and self._mono() < self._deadline:  # not an answer too late
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
        if reason is None:
            log.info("stopped polling, giving the poller's lease up")
        else:
            log.warning("follower: this replica stopped polling", reason=reason)
        self._on_change(False)

    async def _resign(self) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:  # never wait for a renewal that hangs
            renewal.cancel()
        with contextlib.suppress(StoreError, TimeoutError):
            await asyncio.wait_for(self._store.resign(self.holder), timeout=RESIGN_TIMEOUT_S)
