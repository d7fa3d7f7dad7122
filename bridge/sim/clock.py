"""A clock for tests and simulations: time moves only when told to."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class FakeClock:
    """A clock that moves only when told to; sleepers wake when `advance` passes their deadline."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._mono = 0.0
        self._counter = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, delay_s: float) -> None:
        if delay_s <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + delay_s, next(self._counter), future))
        await future

    def next_wakeup_in(self) -> float | None:
        """Seconds until the earliest waiting sleeper is due, if any."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return max(0.0, self._sleepers[0][0] - self._mono) if self._sleepers else None

    async def advance(self, delta_s: float) -> None:
        """Move time forward, waking every sleeper whose deadline is reached, in order."""
        target = self._mono + delta_s
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now += deadline - self._mono
            self._mono = deadline
            if not future.done():
                future.set_result(None)
            # let the woken task run before waking the next one
            for _ in range(5):
                await asyncio.sleep(0)
        self._now += target - self._mono
        self._mono = target
        for _ in range(5):
            await asyncio.sleep(0)
