"""An operator's retry of a dead letter: the retry schedule starts again, the attempt numbers
go on (a log that says `attempt=1` again hides the history)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from bridge.models import DeliveryState
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver, settings_for

ServerFactory = Callable[..., Any]


async def test_a_retried_dead_letter_gets_a_new_schedule_and_keeps_counting(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1.0)
    up: TestServer = await aiohttp_server(sim.make_app())
    receiver = RecordingReceiver(default_status=500)
    rx: TestServer = await aiohttp_server(receiver.app())
    settings = settings_for(
        str(up.make_url("")).rstrip("/"),
        str(rx.make_url("/hook")),
        secret,
        tmp_path / "b.db",
        upstream={"progress_stream": False},
        delivery={"retry_schedule_s": [10], "jitter": 0},
    )

    async def attempt(advance_s: float) -> list[MutableMapping[str, Any]]:
        await clock.advance(advance_s)
        with capture_logs() as logs:
            assert await svc.dispatcher.drain_once() == 1
        return [e for e in logs if "attempt" in e]

    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        sim.add_records(1, status="failed")
        await svc.poller.tick()
        first = await attempt(0)
        second = await attempt(10)
        [dead] = await svc.store.list_deliveries()
        assert dead.state is DeliveryState.FAILED and dead.attempts == 2
        assert await svc.store.retry(dead.id, now=clock.now()) is DeliveryState.FAILED
        third = await attempt(0)  # a new schedule: failing again is retried, not dead
        [view] = await svc.store.list_deliveries()
        assert view.state is DeliveryState.PENDING and view.attempts == 3
        assert view.next_attempt_at == clock.now() + 10
        fourth = await attempt(10)
        [view] = await svc.store.list_deliveries()
        assert view.state is DeliveryState.FAILED and view.attempts == 4
    said = [(e["event"], e["attempt"]) for e in first + second + third + fourth]
    assert said == [
        ("delivery attempt failed, will retry", 1),
        ("delivery failed for good (dead-lettered)", 2),
        ("delivery attempt failed, will retry", 3),
        ("delivery failed for good (dead-lettered)", 4),
    ]
