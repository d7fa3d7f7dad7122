"""Time as a dependency: the service reads and waits on time only through a `Clock`."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol


class Clock(Protocol):
    """Wall time, monotonic time and sleeping, injectable so tests never sleep for real."""

    def now(self) -> float:
        """Unix time in seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, delay_s: float) -> None:
        """Wait `delay_s` seconds of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))


async def sleep_or_event(clock: Clock, delay_s: float | None, *events: asyncio.Event) -> None:
    """Wait `delay_s` of clock time (None: no timer) or until any of `events` is set."""
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(e.wait()) for e in events]
    if delay_s is not None:
        waiters.append(asyncio.create_task(clock.sleep(delay_s)))
    if not waiters:
        return
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
