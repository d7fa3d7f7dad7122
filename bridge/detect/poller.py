"""The polling loop: scan, diff, and commit state, events and deliveries in one transaction;
wait an adaptive interval, or less when a progress stream says a job finished."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from bridge.clock import Clock, sleep_or_event
from bridge.config import SubscriberConfig, UpstreamConfig
from bridge.deliver.routing import route
from bridge.detect.diff import Change, build_events, diff
from bridge.detect.scan import ListPages, Sweep, scan
from bridge.errors import StoreError, UpstreamAuthError, UpstreamError, UpstreamUnavailable
from bridge.models import DEFAULT_ACCOUNT, Event, Record, RecordState
from bridge.store.base import (
    BASELINE_MARK,
    BASELINE_TIES,
    LAST_FULL_SCAN,
    LAST_POLL,
    SWEEP,
    DetectionStore,
    ScanCommit,
)

log = structlog.get_logger("bridge.poll")
T = TypeVar("T")

JITTER = 0.1
DEBOUNCE_S = 0.25
MAX_BACKOFF_S = 300.0
MAX_BACKOFF_DOUBLINGS = 16  # 2**16 poll intervals is past MAX_BACKOFF_S for any interval
MAX_RETRY_AFTER_S = 3600.0
GONE_LOGGED = 20
PAGE_CHECK_S = 1800.0  # an idle bridge reads a whole first page at least this often


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one completed poll saw and recorded."""

    baseline: bool
    pages: int
    records_seen: int
    changes: list[Change]
    events: list[Event]
    deliveries: int
    truncated: bool


def announcer(mark: str, ties: Sequence[str], *, backfill: bool) -> Callable[[Record], bool]:
    """Whether a first-seen record is new: created after the newest record of the baseline
    (`mark`, with the ids that share its timestamp in `ties`). With backfill, all are."""
    if backfill:
        return lambda _: True
    baseline_ties = frozenset(ties)
    return lambda r: r.created_at > mark or (r.created_at == mark and r.id not in baseline_ties)


def failure_backoff_s(failures: int, interval_s: float) -> float:
    """The wait after `failures` failed polls in a row: the interval doubled each time,
    capped at `MAX_BACKOFF_S` (the exponent too, so any count of failures is a number)."""
    return min(MAX_BACKOFF_S, interval_s * 2.0 ** min(failures, MAX_BACKOFF_DOUBLINGS))


class Poller:
    """Turns the Munsit list into stored events. `tick()` is one poll; `run()` loops it."""

    def __init__(
        self,
        client: ListPages,
        store: DetectionStore,
        *,
        upstream: UpstreamConfig,
        subscribers: Sequence[SubscriberConfig],
        clock: Clock,
        rand: Callable[[], float] = random.random,
        on_poll: Callable[[PollResult], None] | None = None,
        on_failure: Callable[[str], None] = lambda _result: None,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        self.account = account
        self._log = log.bind(account=account)
        self._client = client
        self._on_failure = on_failure  # "auth_failed" or "error" for each failed poll
        self._store = store
        self._upstream = upstream
        self._subscribers = list(subscribers)
        self._clock = clock
        self._rand = rand
        self._on_poll = on_poll
        self._kick = asyncio.Event()
        self._full_requested = False
        self._failures = 0
        # the last paged scan met an unreadable record: page again (not probe) until it is
        # listed whole, wherever it is on the first page
        self._unread = False
        # when a scan last read a whole first page (None: none yet, so the first poll does)
        self._paged_at: float | None = None
        self.pending: list[RecordState] = []
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.auth_failed = False

    def request_scan(self) -> None:
        """Scan soon (after a short debounce) instead of at the next interval."""
        self._kick.set()

    def request_full_scan(self) -> None:
        """Start a reconciliation sweep of the whole list at the next scan."""
        self._full_requested = True
        self._kick.set()

    async def tick(self) -> PollResult:
        """One poll. Raises on upstream or store errors, having changed nothing."""
        now = self._clock.now()
        mark = await self._store.get_meta(BASELINE_MARK)
        ties = json.loads(await self._store.get_meta(BASELINE_TIES) or "[]")
        sweep = Sweep.loads(await self._store.get_meta(SWEEP))
        meta: dict[str, str | None] = {}
        if sweep is None and await self._full_scan_due(now):
            sweep = Sweep(0, "", "", now, "full")
            meta[LAST_FULL_SCAN] = repr(now)
            self._log.info("reconciliation scan started")
        result = await scan(
            self._client,
            self._store,
            page_size=self._upstream.page_size,
            max_pages=self._upstream.max_pages_per_scan,
            now=now,
            sweep=sweep,
            probe=self._may_probe(now),
        )
        if not result.probed:
            self._unread, self._paged_at = result.unread, now
        baseline = mark is None
        if mark is None:
            mark = max((r.created_at for r in result.rows), default="")
            ties = [r.id for r in result.rows if r.created_at == mark]
            meta[BASELINE_MARK], meta[BASELINE_TIES] = mark, json.dumps(ties)
            meta.setdefault(LAST_FULL_SCAN, repr(now))
        changes = diff(
            result.previous,
            result.rows,
            announce=announcer(mark, ties, backfill=self._upstream.backfill),
        )
        events = build_events(changes, now=now)
        meta[SWEEP] = result.sweep.dumps() if result.sweep else None
        meta[LAST_POLL] = repr(now)
        for record_id in result.vanished:
            self._log.warning("pending record missing from the Munsit list", record_id=record_id)
        if result.truncated:
            self._log.warning(
                "scan stopped at upstream.max_pages_per_scan; the next polls carry on from here",
                pages=result.pages,
            )
        finished = result.finished_sweep
        committed = await self._store.commit_scan(
            ScanCommit(
                states=[c.state for c in changes],
                events=[(e, route(e.type, self._subscribers)) for e in events],
                now=now,
                seen=[r.id for r in result.rows] + result.skipped,
                removed=result.vanished,
                forget_unseen_before=finished.started_at if finished else None,
                meta=meta,
            )
        )
        for record_id in committed.forgotten[:GONE_LOGGED]:
            self._log.warning("record is gone from the Munsit list", record_id=record_id)
        if finished is not None:
            self._log.info("sweep finished", reason=finished.reason, gone=len(committed.forgotten))
        # an event whose id was stored before (a record back to a status it had) is not new
        events = [e for e in events if e.id in committed.recorded]
        self.pending = await self._store.tracked_pending()
        self.last_success_at, self.last_error, self.auth_failed = now, None, False
        poll = PollResult(
            baseline,
            result.pages,
            len(result.rows),
            changes,
            events,
            committed.deliveries,
            result.truncated,
        )
        if baseline:
            self._log.warning(
                "baseline recorded: the records already in the Munsit list are announced"
                " (upstream.backfill = true)"
                if self._upstream.backfill
                else "baseline recorded: the records already in the Munsit list are noted, not"
                " announced; only jobs created or changed from now on are (upstream.backfill)",
                records=len(result.rows),
            )
        self._log.info(
            "baseline recorded" if baseline else "poll",
            pages=result.pages,
            records_seen=len(result.rows),
            changes=len(changes),
            events=len(events),
            pending=len(self.pending),
        )
        if self._on_poll is not None:
            self._on_poll(poll)
        return poll

    def _may_probe(self, now: float) -> bool:
        """Whether an idle poll may end at the probe: not while the last paged scan met an
        unreadable record, and a whole first page at least every `PAGE_CHECK_S` (a record
        listed late or changed below the top two rows waits at most that long)."""
        fresh = self._paged_at is not None and now - self._paged_at < PAGE_CHECK_S
        return fresh and not self._unread

    async def _full_scan_due(self, now: float) -> bool:
        if self._full_requested:
            self._full_requested = False
            return True
        interval = self._upstream.full_scan_interval_s
        last = await self._store.get_meta(LAST_FULL_SCAN)
        return interval > 0 and last is not None and now - float(last) >= interval

    def base_interval_s(self) -> float:
        """The interval in effect: short while records are pending, long when idle."""
        up = self._upstream
        return up.poll_interval_s if self.pending else up.idle_poll_interval_s

    def interval_s(self) -> float:
        """The next wait: `base_interval_s()` ± 10 % jitter."""
        return self.base_interval_s() * (1 + JITTER * (2 * self._rand() - 1))

    async def poll_once(self) -> float:
        """One guarded poll; returns how long to wait before the next one."""
        try:
            await self.tick()
        except UpstreamAuthError as exc:
            self._on_failure("auth_failed")
            self.last_error, self.auth_failed = str(exc), True
            self._log.error(
                "poll failed: API key rejected; not ready until it works again",
                error=str(exc),
                exc_info=exc,
            )
            return self.interval_s()
        except UpstreamError as exc:  # unavailable, or an answer the bridge cannot read
            self._on_failure("error")
            self._failures += 1
            self.last_error = str(exc)
            backoff = failure_backoff_s(self._failures, self._upstream.poll_interval_s)
            retry_after = min(exc.retry_after_s or 0.0, MAX_RETRY_AFTER_S)
            delay = float(max(self.interval_s(), backoff, retry_after))
            message = (
                "poll failed, backing off"
                if isinstance(exc, UpstreamUnavailable)
                else "poll failed, will try again"
            )
            self._log.warning(message, error=str(exc), retry_in_s=round(delay, 1))
            return delay
        except StoreError as exc:
            self._on_failure("error")
            self.last_error = str(exc)
            self._log.warning("poll failed, will try again", error=str(exc))
            return self.interval_s()
        self._failures = 0
        return self.interval_s()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set: after each poll wait its interval, or a debounce after
        `request_scan()`. Failures are logged and retried, never fatal to the service."""
        while not stop.is_set():
            delay = await _unless_stopped(self.poll_once(), stop)
            if delay is None:
                self._log.info("polling stopped; the interrupted poll changed nothing")
                return
            await sleep_or_event(self._clock, delay, stop, self._kick)
            if self._kick.is_set() and not stop.is_set():
                await sleep_or_event(self._clock, DEBOUNCE_S, stop)  # let a burst coalesce
                self._kick.clear()


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None once `stop` is set first (`work` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        stopper.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None
