"""`ProgressWatcher.watch`: a job submitted through the gateway gets its progress stream at
once, before any poll has seen it, and keeps it through updates from polls that ran before
the job existed; and `always_progress` makes progress events nobody subscribed to (a
callback may want them). A fake progress source and a fake store; no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from bridge.detect.progress import ProgressWatcher
from bridge.models import PROGRESS, RecordState
from bridge.sim.clock import FakeClock
from bridge.store.base import Committed, ScanCommit


class Source:
    """A stream per record fed through its queue (None ends the stream); notes each open."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self.opened: list[str] = []

    def send(self, record_id: str, message: dict[str, Any]) -> None:
        self.queues.setdefault(record_id, asyncio.Queue()).put_nowait(message)

    async def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]:
        self.opened.append(record_id)
        queue = self.queues.setdefault(record_id, asyncio.Queue())
        while (message := await queue.get()) is not None:
            yield message


class Store:
    """Only what the watcher writes: the commits of progress events."""

    def __init__(self) -> None:
        self.commits: list[ScanCommit] = []

    async def commit_scan(self, commit: ScanCommit) -> Committed:
        self.commits.append(commit)
        return Committed(deliveries=0, forgotten=[])


def pending(*ids: str) -> list[RecordState]:
    return [RecordState(rid, "pending", f"2026-01-01T00:00:0{i}Z") for i, rid in enumerate(ids)]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def make(
    source: Source, store: Store, *, max_streams: int = 10, always_progress: bool = False
) -> tuple[ProgressWatcher, list[str]]:
    finished: list[str] = []
    watcher = ProgressWatcher(
        source,
        store,  # type: ignore[arg-type]  # the watcher only commits scans
        subscribers=[],
        max_streams=max_streams,
        clock=FakeClock(),
        on_finished=finished.append,
        on_event=lambda: None,
        always_progress=always_progress,
    )
    return watcher, finished


async def test_watch_opens_a_stream_for_a_record_no_poll_has_seen() -> None:
    source = Source()
    watcher, _ = make(source, Store())
    try:
        watcher.watch("job-1")
        await settle()
        assert watcher.watching == {"job-1"}
        assert source.opened == ["job-1"]
    finally:
        await watcher.close()


async def test_an_update_from_an_older_poll_does_not_cancel_it() -> None:
    source = Source()
    watcher, _ = make(source, Store())
    try:
        watcher.watch("job-1")
        await settle()
        watcher.update(pending("old"))  # a poll that ran before the job existed
        watcher.update([])
        await settle()
        assert watcher.watching == {"job-1"}
        assert source.opened.count("job-1") == 1  # the same stream, never reopened
        # a poll sees it pending: a pending record like any other from now on
        watcher.update(pending("job-1"))
        await settle()
        assert watcher.watching == {"job-1"}
        watcher.update([])  # a later poll no longer lists it: finished
        await settle()
        assert watcher.watching == set()
    finally:
        await watcher.close()


async def test_finished_by_a_poll_stops_it_even_if_never_seen_pending() -> None:
    watcher, _ = make(Source(), Store())
    try:
        watcher.watch("job-1")
        await settle()
        watcher.update([], finished=["job-1"])
        await settle()
        assert watcher.watching == set()
    finally:
        await watcher.close()


async def test_done_on_the_stream_calls_on_finished_and_ends_it() -> None:
    source = Source()
    watcher, finished = make(source, Store())
    try:
        watcher.watch("job-1")
        await settle()
        source.send("job-1", {"stage": "done"})
        await settle()
        assert finished == ["job-1"]
        assert watcher.watching == set()
        watcher.update(pending("job-1"))  # the list still says pending: polls take it on
        await settle()
        assert watcher.watching == set() and source.opened == ["job-1"]
    finally:
        await watcher.close()


async def test_watched_jobs_count_toward_max_streams_newest_first() -> None:
    watcher, _ = make(Source(), Store(), max_streams=2)
    try:
        watcher.update(pending("p1", "p2"))  # newest first
        await settle()
        assert watcher.watching == {"p1", "p2"}
        watcher.watch("job-1")
        await settle()
        assert watcher.watching == {"job-1", "p1"}
        watcher.watch("job-2")
        await settle()
        assert watcher.watching == {"job-2", "job-1"}
        watcher.update(pending("p1", "p2"))  # an older poll: the jobs keep their streams
        await settle()
        assert watcher.watching == {"job-2", "job-1"}
    finally:
        await watcher.close()


async def test_always_progress_makes_events_no_subscriber_lists() -> None:
    for always, expected in ((False, 0), (True, 1)):
        source, store = Source(), Store()
        watcher, _ = make(source, store, always_progress=always)
        try:
            watcher.watch("job-1")
            await settle()
            source.send("job-1", {"stage": "processing", "pct": 40})
            await settle()
        finally:
            await watcher.close()
        events = [e for c in store.commits for e, _ in c.events]
        assert len(events) == expected
        if expected:
            [(event, targets)] = [item for c in store.commits for item in c.events]
            assert event.type == PROGRESS and event.data["pct"] == 40
            assert list(targets) == []  # no subscriber: the store routes it to the callback
