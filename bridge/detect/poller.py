"""The polling loop: scan, diff, and commit state, events and deliveries in one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from bridge.clock import Clock, sleep_or_event
from bridge.config import SubscriberConfig, UpstreamConfig
from bridge.deliver.routing import route
from bridge.detect.diff import Change, build_events, diff
from bridge.detect.scan import ListPages, scan
from bridge.errors import StoreError, UpstreamAuthError, UpstreamError
from bridge.models import Event
from bridge.store.base import ScanCommit, Store

log = structlog.get_logger("bridge.poll")


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one completed poll saw and recorded."""

    baseline: bool
    pages: int
    records_seen: int
    changes: list[Change]
    events: list[Event]
    deliveries: int


class Poller:
    """Turns the Munsit list into stored events. `tick()` is one poll; `run()` loops it."""

    def __init__(
        self,
        client: ListPages,
        store: Store,
        *,
        upstream: UpstreamConfig,
        subscribers: Sequence[SubscriberConfig],
        clock: Clock,
        on_poll: Callable[[PollResult], None] | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._upstream = upstream
        self._subscribers = list(subscribers)
        self._clock = clock
        self._on_poll = on_poll
        self.last_success_at: float | None = None
        self.last_error: str | None = None

    async def tick(self) -> PollResult:
        """One poll. Raises on upstream or store errors, having changed nothing."""
        baseline = not await self._store.baseline_done()
        result = await scan(self._client, self._store, page_size=self._upstream.page_size)
        changes = diff(
            result.previous, result.rows, announce_new=not baseline or self._upstream.backfill
        )
        now = self._clock.now()
        events = build_events(changes, now=now)
        for record_id in result.vanished:
            log.warning("pending record is gone from the Munsit list", record_id=record_id)
        deliveries = await self._store.commit_scan(
            ScanCommit(
                states=[c.state for c in changes],
                events=[(e, route(e.type, self._subscribers)) for e in events],
                now=now,
                baseline=baseline,
                removed=result.vanished,
            )
        )
        self.last_success_at = now
        self.last_error = None
        poll = PollResult(baseline, result.pages, len(result.rows), changes, events, deliveries)
        log.info(
            "baseline recorded" if baseline else "poll",
            pages=result.pages,
            records_seen=len(result.rows),
            changes=len(changes),
            events=len(events),
        )
        if self._on_poll is not None:
            self._on_poll(poll)
        return poll

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `poll_interval_s` until `stop` is set; failures are logged and retried
        at the next interval, never fatal to the service."""
        while not stop.is_set():
            try:
                await self.tick()
            except UpstreamAuthError as exc:
                self.last_error = str(exc)
                log.error("poll failed: API key rejected", error=str(exc))
            except (UpstreamError, StoreError) as exc:
                self.last_error = str(exc)
                log.warning("poll failed, will try again", error=str(exc))
            await sleep_or_event(self._clock, self._upstream.poll_interval_s, stop)
