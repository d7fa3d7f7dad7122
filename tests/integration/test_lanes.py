"""Lanes: ordering per (subscriber, record) under retries, rate limits, and isolation from a
subscriber whose receiver hangs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.config import Settings
from bridge.deliver.lanes import Lane, TokenBucket
from bridge.models import Event
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import ScanCommit
from tests.conftest import make_secret
from tests.integration.helpers import RecordingReceiver

ServerFactory = Callable[..., Any]
STALL_S = 30.0  # real time without any progress before a lane counts as stuck


def test_token_bucket() -> None:
    bucket = TokenBucket(2.0)
    assert bucket.available(100.0) == 2
    bucket.take(100.0)
    bucket.take(100.0)
    assert bucket.available(100.0) == 0
    assert bucket.wait_s(100.0) == pytest.approx(0.5)
    assert bucket.available(100.5) == 1
    assert bucket.available(200.0) == 2  # never more than one second's worth
    assert TokenBucket(None).available(0.0) >= 1000
    slow = TokenBucket(0.5)
    assert slow.available(0.0) == 1
    slow.take(0.0)
    assert slow.wait_s(0.0) == pytest.approx(2.0)


def test_lane_room() -> None:
    lane = Lane("a", max_concurrency=4, bucket=TokenBucket(None), in_flight=3)
    assert lane.room(0.0, free=10) == 1
    assert lane.room(0.0, free=0) == 0
    lane.in_flight = 4
    assert lane.room(0.0, free=10) == 0


def settings(sim_url: str, subs: list[dict[str, Any]], db: Path, **delivery: Any) -> Settings:
    return Settings.model_validate(
        {
            "upstream": {"base_url": sim_url, "api_key": "test-key", "progress_stream": False},
            "store": {"url": f"sqlite:///{db}"},
            "delivery": {"allow_private_destinations": True, "jitter": 0, **delivery},
            "admin": {"enabled": False},
            "subscribers": [{"secret": make_secret(), **s} for s in subs],
        }
    )


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=1.0)


@pytest.fixture
async def sim_url(sim: Simulator, aiohttp_server: ServerFactory) -> str:
    server: TestServer = await aiohttp_server(sim.make_app())
    return str(server.make_url("")).rstrip("/")


async def serve(aiohttp_server: ServerFactory, receiver: RecordingReceiver) -> str:
    server: TestServer = await aiohttp_server(receiver.app())
    return str(server.make_url("/hook"))


async def serve_hanging(
    aiohttp_server: ServerFactory, release: asyncio.Event, bodies: list[str]
) -> str:
    """A receiver that keeps every request (its body noted in `bodies`) until `release`."""

    async def hang(request: web.Request) -> web.Response:
        bodies.append(await request.text())
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/hook", hang)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("/hook"))


async def test_events_of_a_record_arrive_in_order_under_retries(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    receiver = RecordingReceiver(script=[500, 200, 200, 200])
    url = await serve(aiohttp_server, receiver)
    config = settings(sim_url, [{"id": "rx", "url": url, "events": ["denoise.*"]}], tmp_path / "b")
    async with Service(config, clock=clock) as svc:
        await svc.poller.tick()
        [a] = sim.add_records(1, status="pending")
        await svc.poller.tick()  # a: created
        await clock.advance(1.5)
        [b] = sim.add_records(1, status="success")
        await svc.poller.tick()  # a: completed; b: created + completed
        assert await svc.dispatcher.drain_once() == 3  # a.created fails; b goes on; a waits
        await clock.advance(5)
        assert await svc.dispatcher.drain_once() == 2  # a.created, then a.completed
    order = [
        (json.loads(r.body)["data"]["id"], json.loads(r.body)["type"]) for r in receiver.requests
    ]
    a_events = [t for rid, t in order if rid == a["id"]]
    assert a_events == ["denoise.created", "denoise.created", "denoise.completed"]
    assert [t for rid, t in order if rid == b["id"]] == ["denoise.created", "denoise.completed"]
    assert order.index((b["id"], "denoise.completed")) < order.index((a["id"], "denoise.completed"))


async def test_rate_limit_is_honoured(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    receiver = RecordingReceiver()
    url = await serve(aiohttp_server, receiver)
    subs = [{"id": "rx", "url": url, "rate_limit_per_s": 2}]
    async with Service(settings(sim_url, subs, tmp_path / "b"), clock=clock) as svc:
        await svc.poller.tick()
        sim.add_records(9, status="success")
        await svc.poller.tick()
        per_second = []
        for _ in range(5):
            per_second.append(await svc.dispatcher.drain_once())
            await clock.advance(1.0)
    assert per_second == [2, 2, 2, 2, 1]


async def test_a_hanging_subscriber_does_not_delay_a_healthy_one(
    sim: Simulator, sim_url: str, aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """The healthy receiver gets every event while the other one's requests hang. On the fake
    clock, standing still: nothing falls due or times out meanwhile, only the receivers' answers
    move things on; a wait for the next request fails only after `STALL_S` without one."""
    release = asyncio.Event()
    hung: list[str] = []
    slow_url = await serve_hanging(aiohttp_server, release, hung)
    healthy = RecordingReceiver()
    subs = [
        {"id": "slow", "url": slow_url, "events": ["denoise.*"]},
        {"id": "ok", "url": await serve(aiohttp_server, healthy), "events": ["denoise.*"]},
    ]
    # `timeout_s` is real time in aiohttp: long past any wait here
    config = settings(sim_url, subs, tmp_path / "b", timeout_s=3600, max_in_flight=8)
    async with running(config, clock) as svc:
        try:
            await svc.poller.tick()
            sim.add_records(20, status="success")
            await svc.poller.tick()
            while len(healthy.requests) < 40:
                async with asyncio.timeout(STALL_S):  # no progress at all: the lane is stuck
                    await healthy.arrived.wait()
                healthy.arrived.clear()
            assert len(hung) == 4  # the slow lane holds only its own max_concurrency slots
        finally:
            release.set()  # the hung requests end, so the dispatcher can stop


@contextlib.asynccontextmanager
async def running(config: Settings, clock: FakeClock) -> AsyncIterator[Service]:
    stop = asyncio.Event()
    async with Service(config, clock=clock) as svc:
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        try:
            yield svc
        finally:
            stop.set()
            await runner


async def test_a_throttled_lane_keeps_its_pace_while_another_lane_waits_on_its_receiver(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """On the fake clock: a lane waiting for its rate limit's next token is woken on time even
    when another lane has just started a request that does not end."""
    release = asyncio.Event()
    slow_url = await serve_hanging(aiohttp_server, release, [])
    paced = RecordingReceiver()
    subs = [
        {"id": "slow", "url": slow_url, "max_concurrency": 1},
        {"id": "paced", "url": await serve(aiohttp_server, paced), "rate_limit_per_s": 1},
    ]
    config = settings("http://127.0.0.1:9", subs, tmp_path / "b", timeout_s=60)
    async with Service(config, clock=clock) as svc:
        t0 = clock.now()
        events = [
            Event(f"evt_{n}", "denoise.completed", f"r{n}", t0, None, {"id": f"r{n}"})
            for n in range(5)
        ]
        await svc.store.commit_scan(ScanCommit([], [(e, ["paced"]) for e in events[:4]], t0))
        # the slow lane's one event falls due while "paced" waits for its second token
        await svc.store.commit_scan(ScanCommit([], [(events[4], ["slow"])], t0 + 0.3))
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_S  # moved on by every step the fake clock takes
        while len(paced.requests) < 4:
            assert loop.time() < deadline, f"'paced' stalled after {len(paced.requests)}"
            assert clock.now() - t0 <= 3.5, f"'paced' slowed down after {len(paced.requests)}"
            wake = clock.next_wakeup_in()
            if wake is not None and wake <= 1.0:
                await clock.advance(wake)
                deadline = loop.time() + STALL_S
            else:
                await asyncio.sleep(0.01)  # real I/O under way
        assert clock.now() - t0 <= 3.5  # one a second, from the first
        stop.set()
        release.set()
        await runner
