"""Detection against the simulator: request cost, page budget and sweeps, reconciliation,
catch-up, adaptive intervals and upstream failures."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestServer

from bridge.config import Settings, UpstreamConfig
from bridge.detect.poller import Poller, failure_backoff_s
from bridge.errors import UpstreamProtocolError, UpstreamUnavailable
from bridge.models import Record
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import SWEEP
from bridge.store.sqlite import SqliteStore
from tests.integration.helpers import drive, settings_for

ServerFactory = Callable[..., Any]


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=3.0)


@pytest.fixture
async def make_settings(
    sim: Simulator, aiohttp_server: ServerFactory, secret: str, tmp_path: Path
) -> Callable[..., Settings]:
    server: TestServer = await aiohttp_server(sim.make_app())
    url = str(server.make_url("")).rstrip("/")

    def build(**kwargs: Any) -> Settings:
        kwargs.setdefault("events", ["denoise.*"])
        return settings_for(url, "http://127.0.0.1:9/hook", secret, tmp_path / "b.db", **kwargs)

    return build


@pytest.fixture
async def service(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[Service]:
    settings = make_settings(upstream={"page_size": 50})
    async with Service(settings, clock=clock, rand=lambda: 0.5) as svc:
        yield svc


async def requests_of(sim: Simulator, svc: Service) -> tuple[int, Any]:
    before = sim.list_requests
    result = await svc.poller.tick()
    return sim.list_requests - before, result


@pytest.mark.parametrize("history", [100, 10_000])
async def test_idle_poll_is_one_request_whatever_the_history(
    history: int, sim: Simulator, service: Service
) -> None:
    sim.add_records(history)
    before = sim.list_requests
    await drive_until_settled(service)
    assert sim.list_requests - before <= history // 50 + 2  # the baseline reads it all once
    for _ in range(3):
        count, result = await requests_of(sim, service)
        assert count == 1 and result.events == []


@pytest.mark.parametrize(("k", "depth"), [(3, 0), (50, 0), (120, 0), (0, 130), (70, 260)])
async def test_cost_follows_new_records_and_pending_depth(
    k: int, depth: int, sim: Simulator, service: Service, clock: FakeClock
) -> None:
    sim.processing_s = 10_000
    if depth:
        sim.add_records(1, status="pending")
        sim.add_records(depth - 1)
    else:
        sim.add_records(200)
    await service.poller.tick()
    sim.add_records(k)
    count, result = await requests_of(sim, service)
    probe = 0 if depth else 1  # with nothing pending, the probe comes first
    assert count <= math.ceil(max(k, depth) / 50) + 1 + probe
    assert sum(e.type == "denoise.created" for e in result.events) == k


async def test_page_budget_splits_a_huge_baseline_without_losing_anything(
    sim: Simulator, make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    sim.processing_s = 10_000
    deep_pending = sim.add_records(1, status="pending")[0]
    sim.add_records(999)
    settings = make_settings(upstream={"page_size": 50, "max_pages_per_scan": 4})
    async with Service(settings, clock=clock) as svc:
        first = await svc.poller.tick()
        assert first.truncated and first.pages == 4 and first.events == []
        fresh = sim.add_records(3)  # created while the baseline is still sweeping
        seen_events = []
        for _ in range(10):
            result = await svc.poller.tick()
            seen_events += result.events
            if await svc.store.get_meta(SWEEP) is None:
                break
        assert await svc.store.get_meta(SWEEP) is None
        assert sorted((e.record_id, e.type) for e in seen_events) == sorted(
            (r["id"], t) for r in fresh for t in ("denoise.created", "denoise.completed")
        )
        assert [p.id for p in await svc.store.tracked_pending()] == [deep_pending["id"]]
        sim.set_status(deep_pending["id"], "success")
        events = await drive_until_settled(svc)  # 1,000 deep: found by a sweep of 4-page scans
        assert [(e.record_id, e.type) for e in events] == [
            (deep_pending["id"], "denoise.completed")
        ]
        assert await svc.store.tracked_pending() == []


async def test_reconciliation_repairs_state_and_forgets_gone_records(
    sim: Simulator, service: Service, clock: FakeClock
) -> None:
    records = sim.add_records(300)
    await service.poller.tick()
    old = records[10]["id"]
    sim.set_status(old, "failed", error="Reprocessing failed")  # terminal to terminal, deep
    sim.remove(records[20]["id"])
    assert (await service.poller.tick()).events == []  # the incremental rule cannot see it
    await clock.advance(1.0)
    service.poller.request_full_scan()
    result = await service.poller.tick()
    assert [(e.record_id, e.type) for e in result.events] == [(old, "denoise.failed")]
    assert result.events[0].previous_status == "success"
    # the removed record is gone: kept with its last status, so no event if it ever came back
    # unchanged
    gone = await service.store.known_states([records[20]["id"]])
    assert gone[records[20]["id"]].status == "success"
    assert (await service.poller.tick()).events == []
    await clock.advance(1.0)
    service.poller.request_full_scan()
    result = await service.poller.tick()
    assert result.events == []


async def test_reconciliation_runs_every_full_scan_interval(
    sim: Simulator, make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    sim.add_records(120)
    settings = make_settings(upstream={"page_size": 50, "full_scan_interval_s": 600})
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
        count, _ = await requests_of(sim, svc)
        assert count == 1
        await clock.advance(601)
        count, _ = await requests_of(sim, svc)
        assert count == 3  # the whole list again
        count, _ = await requests_of(sim, svc)
        assert count == 1


async def test_catch_up_after_downtime_oldest_first_exactly_once(
    sim: Simulator, make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    sim.processing_s = 10_000
    settings = make_settings(upstream={"page_size": 50}, events=["denoise.completed"])
    pending = sim.add_records(2000, status="pending")
    async with Service(settings, clock=clock) as svc:
        await svc.poller.tick()
    for record in pending:
        sim.set_status(record["id"], "success")
    async with Service(settings, clock=clock) as svc:
        result = await svc.poller.tick()
        assert [e.record_id for e in result.events] == [r["id"] for r in pending]
        assert result.deliveries == 2000
        assert (await svc.poller.tick()).events == []
        assert await svc.store.tracked_pending() == []


async def test_catch_up_beyond_the_page_budget_is_exactly_once(
    sim: Simulator, make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    sim.processing_s = 10_000
    settings = make_settings(upstream={"page_size": 50, "max_pages_per_scan": 5})
    sim.add_records(100)
    async with Service(settings, clock=clock) as svc:
        await drive_until_settled(svc)
    pending = sim.add_records(600, status="pending")  # arrived while the bridge was down
    async with Service(settings, clock=clock) as svc:
        events = await drive_until_settled(svc)
        for record in pending:
            sim.set_status(record["id"], "failed", error="x")
        events += await drive_until_settled(svc)
    got = [(e.record_id, e.type) for e in events]
    assert len(got) == len(set(got)) == 1200
    assert {r for r, _ in got} == {r["id"] for r in pending}


async def drive_until_settled(svc: Service) -> list[Any]:
    events: list[Any] = []
    for _ in range(50):
        result = await svc.poller.tick()
        events += result.events
        if await svc.store.get_meta(SWEEP) is None and not result.truncated:
            return events
    raise AssertionError("sweep never finished")


def constant(value: float) -> Callable[[], float]:
    return lambda: value


async def test_interval_adapts_to_pending_with_jitter(
    sim: Simulator, make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    settings = make_settings(upstream={"poll_interval_s": 5, "idle_poll_interval_s": 30})
    for rand, factor in ((0.0, 0.9), (0.5, 1.0), (1.0, 1.1)):
        async with Service(settings, clock=clock, rand=constant(rand)) as svc:
            await svc.poller.tick()
            assert svc.poller.interval_s() == pytest.approx(30 * factor)
            sim.processing_s = 1000
            sim.add_records(1, status="pending")
            await svc.poller.tick()
            assert svc.poller.interval_s() == pytest.approx(5 * factor)
            sim.set_status(sim.records[0]["id"], "success")
            await svc.poller.tick()
            assert svc.poller.interval_s() == pytest.approx(30 * factor)


async def test_401_keeps_running_not_ready_and_recovers(
    sim: Simulator, service: Service, clock: FakeClock
) -> None:
    await service.poller.tick()
    sim.api_key = "rotated"
    delay = await service.poller.poll_once()
    assert service.poller.auth_failed and "API key rejected" in (service.poller.last_error or "")
    assert delay == pytest.approx(30.0)
    sim.api_key = "test-key"
    await service.poller.poll_once()
    assert not service.poller.auth_failed and service.poller.last_error is None


async def test_upstream_429_and_5xx_back_the_poller_off(
    sim: Simulator, service: Service, clock: FakeClock
) -> None:
    await service.poller.tick()
    sim.inject_fault("429", count=100, retry_after="120")
    delay = await drive(clock, service.poller.poll_once())
    assert delay >= 120.0
    sim._faults.clear()
    sim.inject_fault("502", count=100)
    first = await drive(clock, service.poller.poll_once())
    second = await drive(clock, service.poller.poll_once())
    assert second > first >= 10.0
    sim._faults.clear()
    assert await service.poller.poll_once() == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 10.0), (2, 20.0), (5, 160.0), (6, 300.0), (1_100, 300.0), (10**12, 300.0)],
)
def test_failure_backoff_doubles_up_to_its_cap(failures: int, expected: float) -> None:
    assert failure_backoff_s(failures, 5.0) == expected


class Down:
    """An upstream whose every list request fails the same way."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def list_page(self, offset: int, limit: int) -> list[Record]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "failures"),
    [
        # past 1,024 failures in a row, where 2**failures once overflowed a float
        (UpstreamUnavailable("502", status=502), 1_100),
        (UpstreamProtocolError("answered more than 16,777,216 bytes"), 8),
    ],
)
async def test_failed_polls_in_a_row_wait_a_doubling_capped_backoff(
    error: Exception, failures: int, store: SqliteStore, clock: FakeClock
) -> None:
    """Unavailable or unreadable, the list is asked again after a doubling wait, capped at
    five minutes, however long the outage."""
    upstream = UpstreamConfig.model_validate(
        {"api_key": "k", "poll_interval_s": 5, "idle_poll_interval_s": 5}
    )
    poller = Poller(
        Down(error), store, upstream=upstream, subscribers=[], clock=clock, rand=lambda: 0.5
    )
    with structlog.testing.capture_logs():
        delays = [await poller.poll_once() for _ in range(failures)]
    assert delays[:5] == [10.0, 20.0, 40.0, 80.0, 160.0]
    assert delays[5:] == [300.0] * (failures - 5)
    assert poller.last_error == str(error)
