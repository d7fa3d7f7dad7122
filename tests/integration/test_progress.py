"""Progress streams: near real-time completion, throttled progress events, stream limits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.config import Settings
from bridge.detect.progress import (
    ProgressWatcher,
    _Last,
    progress_event_id,
    reopen_delay_s,
    should_emit,
)
from bridge.models import RecordState, event_id
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, settings_for

ServerFactory = Callable[..., Any]


@pytest.mark.parametrize(
    ("last", "pct", "now", "expected"),
    [
        (None, 0, 0.0, True),
        (_Last(10, 0.0), 15, 1.0, False),
        (_Last(10, 0.0), 20, 1.0, True),
        (_Last(10, 0.0), 15, 5.0, True),
        (_Last(10, 0.0), 10, 9.0, False),
    ],
)
def test_throttle(last: _Last | None, pct: int, now: float, expected: bool) -> None:
    assert should_emit(last, pct, now) is expected


def test_progress_event_ids_are_stable_and_distinct() -> None:
    assert progress_event_id("r", 10) == progress_event_id("r", 10)
    assert len({progress_event_id("r", p) for p in range(0, 100, 10)}) == 10
    assert progress_event_id("r", 100) != event_id("r", "denoise.progress")


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=20.0)


@pytest.fixture
async def urls(
    sim: Simulator, receiver: RecordingReceiver, aiohttp_server: ServerFactory
) -> tuple[str, str]:
    up: TestServer = await aiohttp_server(sim.make_app())
    rx: TestServer = await aiohttp_server(receiver.app())
    return str(up.make_url("")).rstrip("/"), str(rx.make_url("/hook"))


@pytest.fixture
def receiver() -> RecordingReceiver:
    return RecordingReceiver()


async def step(
    clock: FakeClock, seconds: float, until: Callable[[], bool], dt: float = 0.05
) -> float:
    """Advance the fake clock in small steps, letting real loopback I/O run in between,
    until `until()` holds; returns the clock time it took."""
    start = clock.monotonic()
    while not until():
        if clock.monotonic() - start > seconds:
            raise AssertionError(f"nothing after {seconds} s of clock time")
        await clock.advance(dt)
        for _ in range(3):
            await asyncio.sleep(0.005)  # real socket I/O between the clock steps
    return clock.monotonic() - start


async def settle(until: Callable[[], bool]) -> None:
    """Let real I/O run, the clock standing still, until `until()` holds."""
    for _ in range(1000):
        if until():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("I/O did not settle")


@contextlib.asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Service]:
    """The whole service running in the background, stopped on exit."""
    stop = asyncio.Event()
    async with Service(settings, **kwargs) as svc:
        runner = asyncio.create_task(svc.run(stop))
        try:
            yield svc
        finally:
            stop.set()
            await runner


def build(urls: tuple[str, str], secret: str, tmp_path: Path, **kwargs: Any) -> Settings:
    upstream = {"poll_interval_s": 60, "idle_poll_interval_s": 60, "progress_stream": True}
    upstream.update(kwargs.pop("upstream", {}))
    return settings_for(*urls, secret, tmp_path / "b.db", upstream=upstream, **kwargs)


async def test_completion_arrives_after_one_debounce_with_a_60s_interval(
    sim: Simulator,
    receiver: RecordingReceiver,
    urls: tuple[str, str],
    clock: FakeClock,
    secret: str,
    tmp_path: Path,
) -> None:
    [job] = sim.add_records(1, status="pending")
    async with running(build(urls, secret, tmp_path), clock=clock, rand=lambda: 0.5) as svc:
        await step(clock, 5, lambda: svc.watcher is not None and bool(svc.watcher.watching))
        polls_before = sim.list_requests
        sim.set_status(job["id"], "success")
        await settle(lambda: not svc.watcher.watching)  # type: ignore[union-attr]
        took = await step(clock, 5, lambda: bool(receiver.requests))
    assert took < 10.0  # a debounce and the I/O, not the 60 s interval
    assert sim.list_requests == polls_before + 1  # exactly one extra scan
    body = Webhook(secret).verify(receiver.requests[0].body, receiver.requests[0].headers)
    assert body["id"] == event_id(job["id"], "denoise.completed")


async def test_a_burst_of_completions_costs_one_scan(
    sim: Simulator,
    receiver: RecordingReceiver,
    urls: tuple[str, str],
    clock: FakeClock,
    secret: str,
    tmp_path: Path,
) -> None:
    jobs = sim.add_records(5, status="pending")
    async with running(build(urls, secret, tmp_path), clock=clock) as svc:
        await step(clock, 5, lambda: svc.watcher is not None and len(svc.watcher.watching) == 5)
        before = sim.list_requests
        for job in jobs:
            sim.set_status(job["id"], "failed", error="x")
        await settle(lambda: not svc.watcher.watching)  # type: ignore[union-attr]
        await step(clock, 5, lambda: len(receiver.requests) == 5)
    assert sim.list_requests == before + 1


async def test_progress_events_only_for_explicit_subscribers_and_throttled(
    sim: Simulator,
    receiver: RecordingReceiver,
    urls: tuple[str, str],
    clock: FakeClock,
    secret: str,
    tmp_path: Path,
) -> None:
    [job] = sim.add_records(1, status="pending")
    settings = build(urls, secret, tmp_path, events=["denoise.progress", "denoise.completed"])
    async with running(settings, clock=clock):
        await step(clock, 40, lambda: any("completed" in r.body for r in receiver.requests), dt=0.5)
    bodies = [Webhook(secret).verify(r.body, r.headers) for r in receiver.requests]
    progress = [b for b in bodies if b["type"] == "denoise.progress"]
    assert 2 <= len(progress) <= 11
    pcts = [b["data"]["pct"] for b in progress]
    assert pcts == sorted(pcts) and all(b - a >= 10 for a, b in itertools.pairwise(pcts))
    assert all(b["data"]["id"] == job["id"] for b in progress)
    assert bodies[-1]["type"] == "denoise.completed"


async def test_glob_subscribers_get_no_progress(
    sim: Simulator,
    receiver: RecordingReceiver,
    urls: tuple[str, str],
    clock: FakeClock,
    secret: str,
    tmp_path: Path,
) -> None:
    sim.add_records(1, status="pending")
    async with running(build(urls, secret, tmp_path, events=["denoise.*"]), clock=clock):
        await step(clock, 40, lambda: any("completed" in r.body for r in receiver.requests), dt=0.5)
    assert not any("denoise.progress" in r.body for r in receiver.requests)


async def test_streams_are_capped_newest_first_and_stop_when_done(
    sim: Simulator, urls: tuple[str, str], clock: FakeClock, secret: str, tmp_path: Path
) -> None:
    jobs = sim.add_records(6, status="pending")
    settings = build(urls, secret, tmp_path, upstream={"max_progress_streams": 4})
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        assert svc.watcher is not None
        assert svc.watcher.watching == {j["id"] for j in jobs[2:]}
        sim.set_status(jobs[5]["id"], "success")
        await step(clock, 5, lambda: jobs[5]["id"] not in svc.watcher.watching)  # type: ignore[union-attr]
        await svc.poller.tick()
        assert svc.watcher.watching == {j["id"] for j in jobs[1:5]}


async def test_streams_stop_on_404_and_reconnect_after_a_drop(
    sim: Simulator, urls: tuple[str, str], clock: FakeClock, secret: str, tmp_path: Path
) -> None:
    gone, dropped = sim.add_records(2, status="pending")
    async with Service(build(urls, secret, tmp_path), clock=clock) as svc:
        sim.inject_fault("502", endpoint="progress")
        await svc.poller.tick()
        sim.remove(gone["id"])
        assert svc.watcher is not None
        await step(clock, 10, lambda: gone["id"] not in svc.watcher.watching)  # type: ignore[union-attr]
        assert ("GET", f"/denoise/{dropped['id']}/progress", 502) in sim.request_log
        # the dropped stream comes back after its backoff and stays open
        await step(clock, 10, lambda: bool(sim._jobs[dropped["id"]].watchers))
        assert dropped["id"] in svc.watcher.watching


async def test_no_streams_when_disabled(
    sim: Simulator, urls: tuple[str, str], clock: FakeClock, secret: str, tmp_path: Path
) -> None:
    sim.add_records(3, status="pending")
    settings = build(urls, secret, tmp_path, upstream={"progress_stream": False})
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        assert svc.watcher is None
    assert not any("progress" in path for _, path, _ in sim.request_log)


# ---- reopening: capped exponential backoff with jitter ---------------------------------------


@pytest.mark.parametrize(
    ("ends", "rand", "expected"),
    [
        (1, 0.0, 1.0),
        (1, 0.999, 1.4995),
        (2, 0.0, 2.0),
        (3, 0.5, 5.0),
        (6, 0.0, 32.0),
        (7, 0.0, 60.0),
        (7, 1.0, 90.0),
        (5_000, 0.0, 60.0),
        (10**9, 0.5, 75.0),
    ],
)
def test_reopen_delay(ends: int, rand: float, expected: float) -> None:
    assert reopen_delay_s(ends, rand) == pytest.approx(expected)


class ClosingSource:
    """A progress endpoint whose streams end at once (or after `open_s` of clock time),
    without a message; it notes when each was opened."""

    def __init__(self, clock: FakeClock, open_s: float = 0.0) -> None:
        self.clock, self.open_s = clock, open_s
        self.opens: dict[str, list[float]] = {}

    async def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]:
        self.opens.setdefault(record_id, []).append(self.clock.monotonic())
        if self.open_s:
            await self.clock.sleep(self.open_s)
        messages: list[dict[str, Any]] = []  # none: the stream just ends
        for message in messages:
            yield message


def watcher_of(source: Any, store: Any, clock: FakeClock, rand: Callable[[], float]) -> Any:
    return ProgressWatcher(
        source,
        store,
        subscribers=[],
        max_streams=10,
        clock=clock,
        on_finished=lambda _: None,
        on_event=lambda: None,
        rand=rand,
    )


PENDING = [RecordState(f"rec-{i}", "pending", f"2026-01-01T00:00:0{i}Z") for i in range(3)]


async def run_clock(clock: FakeClock, seconds: float) -> None:
    """Jump from wake-up to wake-up (nothing here does real I/O) for `seconds`."""
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        for _ in range(5):
            await asyncio.sleep(0)  # let the woken tasks run up to their next wait
        wake = clock.next_wakeup_in()
        assert wake is not None, "nothing waits on the clock"
        await clock.advance(min(wake, end - clock.monotonic()))


async def test_streams_closing_at_once_are_reopened_with_growing_capped_jittered_waits(
    store: Any, clock: FakeClock
) -> None:
    source = ClosingSource(clock)
    watcher = watcher_of(source, store, clock, random.Random(11).random)
    watcher.update(PENDING)
    await run_clock(clock, 900)
    await watcher.close()

    gaps = {rid: [b - a for a, b in itertools.pairwise(t)] for rid, t in source.opens.items()}
    assert set(gaps) == {p.id for p in PENDING}
    for waits in gaps.values():
        assert 1.0 <= waits[0] < 1.5  # at least a second, never at once
        growing = waits[:7]  # 1, 2, 4 … 32, then capped: each range is past the last one
        assert all(b > a for a, b in itertools.pairwise(growing))
        assert all(60.0 <= w <= 90.0 for w in waits[7:]) and len(waits) > 10
        assert max(waits) <= 90.0
    assert len({round(w[0], 6) for w in gaps.values()}) == 3  # jitter: each its own wait
    first_10_s = sum(1 for t in source.opens.values() for at in t if at - t[0] <= 10.0)
    assert first_10_s <= 12  # at most four opens per record in ten seconds


async def test_a_stream_that_stayed_open_a_minute_starts_the_backoff_over(
    store: Any, clock: FakeClock
) -> None:
    source = ClosingSource(clock, open_s=61.0)
    watcher = watcher_of(source, store, clock, lambda: 0.0)
    watcher.update(PENDING[:1])
    await run_clock(clock, 400)
    await watcher.close()
    [opens] = source.opens.values()
    waits = [b - a - 61.0 for a, b in itertools.pairwise(opens)]
    assert waits and all(w == pytest.approx(1.0) for w in waits)


async def test_a_crashed_stream_is_logged_with_its_traceback(store: Any, clock: FakeClock) -> None:
    class Broken:
        async def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]:
            raise RuntimeError("boom")
            yield {}

    watcher = watcher_of(Broken(), store, clock, lambda: 0.5)
    with structlog.testing.capture_logs() as logs:
        watcher.update(PENDING[:1])
        await settle(lambda: not watcher.watching)
    [entry] = [e for e in logs if e["event"] == "progress stream crashed"]
    assert isinstance(entry["exc_info"], RuntimeError) and entry["log_level"] == "error"
    assert "error" not in entry  # the exception itself, not its repr


async def test_percentages_that_are_not_ones_make_no_event(
    store: Any, clock: FakeClock, secret: str
) -> None:
    class Odd:
        async def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]:
            for pct in (float("inf"), float("nan"), True, 1e308, -5, "50", None, 40.7):
                yield {"stage": "processing", "pct": pct}
            yield {"stage": "done"}

    subscribers = settings_for(
        "http://127.0.0.1:9", "http://127.0.0.1:9/hook", secret, Path("x.db"),
        events=["denoise.progress"],
    ).subscribers  # fmt: skip
    finished: list[str] = []
    watcher = ProgressWatcher(
        Odd(),
        store,
        subscribers=subscribers,
        max_streams=1,
        clock=clock,
        on_finished=finished.append,
        on_event=lambda: None,
    )
    watcher.update(PENDING[:1])
    await settle(lambda: bool(finished))
    events = await store.list_events(limit=10)
    assert [e.data["pct"] for e in events] == [40]


async def test_three_pending_records_closing_cleanly_cost_a_few_opens_in_ten_seconds(
    sim: Simulator, urls: tuple[str, str], clock: FakeClock, secret: str, tmp_path: Path
) -> None:
    """The issue's case end to end: the API closes every progress stream at once."""
    sim.add_records(3, status="pending")
    sim.poison([(b"", 1)], endpoint="progress", count=1000)
    async with running(build(urls, secret, tmp_path), clock=clock, rand=lambda: 0.5) as svc:
        await step(clock, 5, lambda: sim.poison_served >= 3)
        start = clock.monotonic()
        await step(clock, 11, lambda: clock.monotonic() - start >= 10.0, dt=0.1)
        assert svc.watcher is not None and len(svc.watcher.watching) == 3
    opens = [path for _, path, _ in sim.request_log if path.endswith("/progress")]
    # 1.25, 2.5, 5 s apart: four opens each at most (it was 39 in all, reopened at once)
    assert 9 <= len(opens) <= 12
