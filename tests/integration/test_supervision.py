"""A component that crashes restarts on its own, counted and named by /readyz, while the
others go on: the poller failing again and again never stops deliveries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from bridge.models import RecordState
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.sqlite import SqliteStore
from bridge.supervise import HEALTHY_AFTER_S
from tests.integration.helpers import RecordingReceiver, settings_for

ServerFactory = Callable[..., Any]


class CrashingStore(SqliteStore):
    """The real store, with an unexpected error (not a `StoreError`) injected into the
    poller's last read while `crashes` is above zero."""

    crashes = 0

    async def tracked_pending(self, account: str | None = None) -> list[RecordState]:
        if self.crashes > 0:
            self.crashes -= 1
            raise RuntimeError("injected bug in the poll")
        return await super().tracked_pending(account)


async def test_a_crashing_poller_restarts_and_deliveries_go_on(
    aiohttp_server: ServerFactory, clock: FakeClock, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1.0)
    up: TestServer = await aiohttp_server(sim.make_app())
    receiver = RecordingReceiver()
    rx: TestServer = await aiohttp_server(receiver.app())
    settings = settings_for(
        str(up.make_url("")).rstrip("/"),
        str(rx.make_url("/hook")),
        secret,
        tmp_path / "b.db",
        upstream={"progress_stream": False, "poll_interval_s": 1, "idle_poll_interval_s": 1},
    )
    store = CrashingStore(tmp_path / "b.db")
    stop = asyncio.Event()
    async with Service(settings, clock=clock, store=store, rand=lambda: 0.0) as svc:
        sim.add_records(1, status="pending")
        await svc.poller.tick()  # baseline, the job tracked
        await clock.advance(1.5)
        await svc.poller.tick()  # its completion is queued
        store.crashes = 4
        run = asyncio.create_task(svc.run(stop))

        async def until(condition: Callable[[], bool]) -> None:
            for _ in range(2000):
                if condition():
                    return
                wakeup = clock.next_wakeup_in()
                await clock.advance(min(wakeup, 0.25) if wakeup is not None else 0.0)
                await asyncio.sleep(0.001)  # real sockets between clock steps
            raise AssertionError("condition never held")

        restarts = svc.metrics.component_restarts.labels("poller")
        await until(lambda: len(receiver.requests) == 1)  # delivered while the poller crashes
        await until(lambda: restarts._value.get() == 4)
        assert svc.failing == {"poller": "RuntimeError: injected bug in the poll"}
        polls_before = sim.list_requests
        await until(lambda: sim.list_requests > polls_before + 2)  # polling again
        await clock.advance(HEALTHY_AFTER_S)
        await until(lambda: svc.failing == {})
        assert not run.done()  # `run` never stopped
        stop.set()
        await until(run.done)
        assert run.exception() is None
    assert svc.metrics.component_restarts.labels("dispatcher")._value.get() == 0
