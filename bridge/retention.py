"""Retention: old delivered deliveries, their attempts and events are deleted in the
background, a small batch per transaction, so the store stays the size of its window."""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from bridge.clock import Clock, sleep_or_event
from bridge.errors import StoreError

log = structlog.get_logger("bridge.retention")

DAY_S = 86400.0
SWEEP_INTERVAL_S = 3600.0  # between sweeps
BATCH = 500  # rows a transaction deletes at most
MAX_BATCHES = 10_000  # per sweep: the rest waits for the next one


class Purging(Protocol):
    async def purge(self, *, now: float, retention_s: float, batch: int) -> int:
        """Delete up to `batch` expired rows; how many went."""
        ...


class Retention:
    """`sweep()` deletes everything expired, batch by batch; `run()` sweeps every hour."""

    def __init__(self, store: Purging, *, retention_days: float, clock: Clock) -> None:
        self._store = store
        self._retention_s = retention_days * DAY_S
        self._clock = clock

    async def sweep(self) -> int:
        deleted = 0
        for _ in range(MAX_BATCHES):
            n = await self._store.purge(
                now=self._clock.now(), retention_s=self._retention_s, batch=BATCH
            )
            deleted += n
            if n < BATCH:
                break
            await asyncio.sleep(0)  # let deliveries take the write lock between batches
        if deleted:
            log.info("old deliveries and events deleted", rows=deleted)
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("retention sweep failed, will try again", error=str(exc))
            await sleep_or_event(self._clock, SWEEP_INTERVAL_S, stop)
