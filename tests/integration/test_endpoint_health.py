"""Endpoint health: 410 disables at once, continuous failure disables after
`disable_after_s`, pending deliveries wait and resume; dead letters can be re-queued."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from bridge.config import Settings
from bridge.models import DeliveryFilter, DeliveryState
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, settings_for

ServerFactory = Callable[..., Any]


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=1.0)


@pytest.fixture
def receiver() -> RecordingReceiver:
    return RecordingReceiver()


@pytest.fixture
async def make_settings(
    sim: Simulator,
    receiver: RecordingReceiver,
    aiohttp_server: ServerFactory,
    secret: str,
    tmp_path: Path,
) -> Callable[..., Settings]:
    up: TestServer = await aiohttp_server(sim.make_app())
    rx: TestServer = await aiohttp_server(receiver.app())

    def build(**kwargs: Any) -> Settings:
        kwargs.setdefault("upstream", {"progress_stream": False})
        return settings_for(
            str(up.make_url("")).rstrip("/"),
            str(rx.make_url("/hook")),
            secret,
            tmp_path / "b.db",
            **kwargs,
        )

    return build


async def queue_events(svc: Service, sim: Simulator, clock: FakeClock, n: int) -> None:
    sim.add_records(n, status="pending")
    await svc.poller.tick()
    await clock.advance(1.5)
    await svc.poller.tick()


async def test_410_disables_at_once_and_deliveries_wait_for_re_enabling(
    sim: Simulator,
    receiver: RecordingReceiver,
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receiver.script = [410]
    settings = make_settings(delivery={"jitter": 0})
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 3)
        with capture_logs() as logs:
            await svc.dispatcher.drain_once()  # three in flight at once: the first is a 410
        assert svc.dispatcher.active == []
        # the attempt that met the 410 waits for the subscriber; it is not "will retry"
        said = [e["event"] for e in logs if e.get("status_code") == 410 or "disabled" in e["event"]]
        assert said == [
            "subscriber disabled",
            "delivery attempt failed; it waits while the subscriber is disabled",
        ]
        counts = await svc.store.count_deliveries()
        assert (counts[DeliveryState.PENDING], counts[DeliveryState.DELIVERED]) == (1, 2)
        health = (await svc.store.subscriber_health())["rx"]
        assert health.reason == "the endpoint answered 410 Gone" and health.disabled_at
        await clock.advance(3600)
        assert await svc.dispatcher.drain_once() == 0
    assert len(receiver.requests) == 3
    async with Service(settings, clock=clock) as svc:  # a restart does not re-enable it
        assert svc.dispatcher.active == []
    async with Service(make_settings(subscriber={"enabled": False}), clock=clock) as svc:
        assert await svc.dispatcher.drain_once() == 0  # the operator's pause; disable cleared
    async with Service(settings, clock=clock) as svc:
        assert svc.dispatcher.active == ["rx"]
        await svc.dispatcher.drain_once()
        states = {v.state for v in await svc.store.list_deliveries()}
    assert states == {DeliveryState.DELIVERED}
    assert len(receiver.requests) == 4  # the one that met the 410, sent again once resumed


async def test_continuous_failure_disables_after_disable_after_s(
    sim: Simulator,
    receiver: RecordingReceiver,
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receiver.default_status = 500
    settings = make_settings(delivery={"jitter": 0, "disable_after_s": 100})
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 1)
        await svc.dispatcher.drain_once()  # t0: failing since t0
        await clock.advance(5)
        await svc.dispatcher.drain_once()  # t0 + 5: still under 100 s
        assert svc.dispatcher.active == ["rx"]
        await clock.advance(300)
        await svc.dispatcher.drain_once()  # t0 + 305: disabled
        assert svc.dispatcher.active == []
        health = (await svc.store.subscriber_health())["rx"]
        assert "failing continuously for 305 s" in (health.reason or "")
        [view] = await svc.store.list_deliveries()
    assert view.state is DeliveryState.PENDING and view.attempts == 3


async def test_a_success_resets_the_failure_clock(
    sim: Simulator,
    receiver: RecordingReceiver,
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receiver.script = [500, 200, 500]
    settings = make_settings(delivery={"jitter": 0, "disable_after_s": 100})
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 1)
        await svc.dispatcher.drain_once()
        await clock.advance(200)
        await svc.dispatcher.drain_once()  # success
        assert (await svc.store.subscriber_health())["rx"].failing_since is None
        await queue_events(svc, sim, clock, 1)
        await svc.dispatcher.drain_once()  # a fresh failure: not disabled
        assert svc.dispatcher.active == ["rx"]


async def test_dead_letter_is_listed_and_requeued_with_the_same_id(
    sim: Simulator,
    receiver: RecordingReceiver,
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    receiver.script = [500, 500]
    settings = make_settings(delivery={"jitter": 0, "retry_schedule_s": [1]})
    async with Service(settings, clock=clock) as svc:
        await queue_events(svc, sim, clock, 1)
        await svc.dispatcher.drain_once()
        await clock.advance(1)
        await svc.dispatcher.drain_once()
        [dead] = await svc.store.list_deliveries(where=DeliveryFilter(state=DeliveryState.FAILED))
        assert await svc.store.retry(dead.id, now=clock.now()) is DeliveryState.FAILED
        assert await svc.store.retry(dead.id, now=clock.now()) is DeliveryState.PENDING
        await svc.dispatcher.drain_once()
        [view] = await svc.store.list_deliveries()
    assert view.state is DeliveryState.DELIVERED and len(view.history) == 3
    assert {r.headers["webhook-id"] for r in receiver.requests} == {dead.event_id}


async def test_a_410_takes_effect_before_its_lane_starts_another_request(
    sim: Simulator,
    receiver: RecordingReceiver,
    make_settings: Callable[..., Settings],
    clock: FakeClock,
) -> None:
    """In `run`, a lane's slot frees as soon as an answer is in, while the attempt is being
    recorded: a 410 must stop the lane by then. Only the `max_concurrency` requests already
    on the wire meet the 410; none is started after it."""
    receiver.default_status = 410
    settings = make_settings(delivery={"jitter": 0}, subscriber={"max_concurrency": 4})
    recorded = asyncio.Event()
    stop = asyncio.Event()
    async with Service(settings, clock=clock, on_sent=lambda _: recorded.set()) as svc:
        await queue_events(svc, sim, clock, 12)
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        await recorded.wait()  # the first 410 is stored: the lane had all that time to go on
        stop.set()
        await runner  # the requests in flight end and are recorded
        assert svc.dispatcher.active == []
        views = await svc.store.list_deliveries()
        health = (await svc.store.subscriber_health())["rx"]
    assert len(receiver.requests) == 4
    assert sum(v.attempts for v in views) == 4 and len(views) == 12
    assert {v.state for v in views} == {DeliveryState.PENDING}  # kept for when it is back
    assert health.reason == "the endpoint answered 410 Gone"
