"""Progress streams: hold `GET /denoise/{id}/progress` open for pending records, so a finished
job triggers a scan at once and `processing` messages become throttled `denoise.progress`
events. An accelerator only: polling alone stays correct without it.

A stream that ends without a terminal message (closed, dropped, refused, unreadable) is
reopened after a wait that doubles from 1 s up to a minute, stretched by up to half again at
random; it starts over only after a stream that stayed open that long.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from bridge.clock import Clock
from bridge.config import SubscriberConfig
from bridge.deliver.routing import route
from bridge.errors import UpstreamAuthError, UpstreamError, UpstreamNotFound
from bridge.models import PENDING, PROGRESS, Event, RecordState, split_key
from bridge.store.base import DetectionStore, ScanCommit

log = structlog.get_logger("bridge.progress")

MIN_STEP_PCT = 10
MIN_GAP_S = 5.0
FIRST_REOPEN_S = 1.0
MAX_BACKOFF_S = 60.0
REOPEN_JITTER = 0.5  # each wait is stretched by up to this fraction, at random


class ProgressSource(Protocol):
    def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(slots=True)
class _Last:
    pct: int
    at: float


def progress_event_id(record_id: str, pct: int) -> str:
    """Stable per (record, percentage): a replayed message never makes a second event."""
    digest = hashlib.sha256(f"{record_id}\x00{PROGRESS}\x00{pct}".encode()).hexdigest()
    return f"evt_{digest[:32]}"


def should_emit(last: _Last | None, pct: int, now: float) -> bool:
    """Throttle: the first message, then when pct moved ≥ 10 points or 5 s passed."""
    if last is None:
        return True
    return pct >= last.pct + MIN_STEP_PCT or (pct > last.pct and now - last.at >= MIN_GAP_S)


def reopen_delay_s(ends: int, rand: float) -> float:
    """The wait before reopening a stream after `ends` (≥ 1) unfinished streams in a row:
    1 s, 2 s, 4 s … capped at `MAX_BACKOFF_S`, times 1 to 1.5 (`rand` in [0, 1))."""
    doublings = min(max(ends, 1) - 1, 16)
    return min(MAX_BACKOFF_S, FIRST_REOPEN_S * 2.0**doublings) * (1 + REOPEN_JITTER * rand)


def percentage(value: object) -> int | None:
    """A progress message's `pct` as a whole percentage, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value) if 0 <= value <= 100 else None


class ProgressWatcher:
    """Keeps at most `max_streams` streams open, for the newest pending records: first the
    jobs submitted through the gateway (`watch`, newest first), then the records polls found
    pending (newest first).

    A watched-by-request record keeps its stream until the stream reports done or error,
    or until a poll has listed it as pending (from then on it is a pending record like any
    other: a later `update` that no longer lists it stops it) or names it `finished`: an
    update from a poll that ran before the job existed does not stop it.
    `always_progress`: `processing` messages become `denoise.progress` events even when no
    subscriber lists that type (a gateway job's callback may ask for it: the store routes
    the event to `job:<record id>` when its callback lists the type)."""

    def __init__(
        self,
        source: ProgressSource,
        store: DetectionStore,
        *,
        subscribers: Sequence[SubscriberConfig],
        max_streams: int,
        clock: Clock,
        on_finished: Callable[[str], None],
        on_event: Callable[[], None],
        rand: Callable[[], float] = random.random,
        on_crash: Callable[[str], None] = lambda _record_id: None,
        always_progress: bool = False,
    ) -> None:
        self._on_crash = on_crash  # a stream that crashed is opened again at the next poll
        self._source = source
        self._store = store
        self._subscribers = list(subscribers)
        self._max = max_streams
        self._clock = clock
        self._on_finished = on_finished
        self._on_event = on_event
        self._rand = rand
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._gave_up: set[str] = set()
        self._last: dict[str, _Last] = {}
        self._wants_progress = always_progress or any(route(PROGRESS, self._subscribers))
        # opened by `watch` and not listed by a poll yet, newest last
        self._requested: dict[str, None] = {}
        self._pending: list[str] = []  # the last update's pending ids, newest first

    @property
    def watching(self) -> set[str]:
        return set(self._tasks)

    def watch(self, record_id: str) -> None:
        """Open the progress stream of a job just submitted through the gateway now, before
        any poll has seen the record: it finishes within a second of Munsit finishing it."""
        self._gave_up.discard(record_id)
        self._requested.pop(record_id, None)
        self._requested[record_id] = None
        self._apply()

    def update(self, pending: Sequence[RecordState], *, finished: Iterable[str] = ()) -> None:
        """Watch the newest pending records (newest first), stop watching the others. A
        record watched by request stays until a poll lists it as pending (a pending record
        like any other from then on), or until it is among `finished` (ids this poll saw
        done or failed): a poll that ran before the job existed does not stop it."""
        pending_ids = {p.id for p in pending}
        for record_id in [*finished, *(r for r in self._requested if r in pending_ids)]:
            self._requested.pop(record_id, None)
        self._pending = [p.id for p in pending]
        self._gave_up &= pending_ids | set(self._requested)
        for record_id in [r for r in self._last if r not in pending_ids | set(self._requested)]:
            del self._last[record_id]
        self._apply()

    def _apply(self) -> None:
        """Open and close streams so that the wanted ones are open: the requested records
        newest first, then the pending ones, `max_streams` at most."""
        requested = list(reversed(self._requested))
        order = [*requested, *(r for r in self._pending if r not in self._requested)]
        wanted = [r for r in order if r not in self._gave_up][: self._max]
        for record_id, task in list(self._tasks.items()):
            if record_id not in wanted:
                task.cancel()
                del self._tasks[record_id]
        for record_id in wanted:
            if record_id not in self._tasks:
                task = asyncio.create_task(self._watch(record_id), name=f"progress-{record_id}")
                self._tasks[record_id] = task
                task.add_done_callback(functools.partial(self._done, record_id))

    def _done(self, record_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(record_id) is task:
            del self._tasks[record_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("progress stream crashed", record_id=record_id, exc_info=exc)
            self._on_crash(record_id)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, record_id: str) -> None:
        ends = 0  # streams in a row that ended without a terminal message
        while True:
            opened = self._clock.monotonic()
            try:
                async for message in self._source.progress(record_id):
                    stage = message.get("stage")
                    if stage in ("done", "error"):
                        log.info("progress stream reports the job finished", record_id=record_id)
                        # not reopened while the list still says pending: polls take it on
                        self._gave_up.add(record_id)
                        self._requested.pop(record_id, None)
                        self._on_finished(record_id)
                        return
                    if stage == "processing":
                        await self._progress(record_id, message)
                log.debug("progress stream closed", record_id=record_id)
            except UpstreamNotFound:
                self._gave_up.add(record_id)
                self._requested.pop(record_id, None)
                log.info("no progress stream for this record (404)", record_id=record_id)
                return
            except UpstreamAuthError:
                return  # the poller reports the rejected key
            except UpstreamError as exc:
                log.debug("progress stream dropped", record_id=record_id, error=str(exc))
            lasted_s = self._clock.monotonic() - opened
            ends = 1 if lasted_s >= MAX_BACKOFF_S else ends + 1
            await self._clock.sleep(reopen_delay_s(ends, self._rand()))

    async def _progress(self, record_id: str, message: dict[str, Any]) -> None:
        pct = percentage(message.get("pct"))
        if not self._wants_progress or pct is None:
            return
        now = self._clock.now()
        if not should_emit(self._last.get(record_id), pct, now):
            return
        self._last[record_id] = _Last(pct, now)
        data: dict[str, Any] = {
            "id": split_key(record_id)[1],  # the Munsit id, as in the records Munsit lists
            "status": PENDING,
            "stage": "processing",
            "pct": pct,
        }
        if isinstance(message.get("message"), str):
            data["message"] = message["message"]
        event = Event(progress_event_id(record_id, pct), PROGRESS, record_id, now, PENDING, data)
        await self._store.commit_scan(
            ScanCommit(states=[], events=[(event, route(PROGRESS, self._subscribers))], now=now)
        )
        self._on_event()
