"""Progress streams: near real-time completion, throttled progress events, stream limits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from bridge.clock import FakeClock
from bridge.config import Settings
from bridge.detect.progress import _Last, progress_event_id, should_emit
from bridge.models import event_id
from bridge.service import Service
from bridge.upstream.simulator import Simulator
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
