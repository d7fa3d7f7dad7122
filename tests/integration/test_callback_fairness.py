"""A hanging callback endpoint holds only its share: the callbacks waiting for it never use
up the claims' budget (subscribers and other endpoints' callbacks keep flowing), and a
callback whose callback is not looked up yet (the batch's look-up still running, or
failed) is not started past its endpoint's share; a failed look-up hands it back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bridge.deliver.ahead import HELD_BACK_S
from bridge.errors import StoreError
from bridge.models import Callback, DeliveryFilter, DeliveryState
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from tests.integration.helpers import RecordingReceiver
from tests.integration.test_callbacks import (
    STALL_S,
    ServerFactory,
    build,
    hanging,
    register,
    serve,
    started,
)
from tests.pgdb import fresh_schema, require_pg


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(api_key="test-key", clock=clock, processing_s=1.0)


@pytest.fixture
async def sim_url(sim: Simulator, aiohttp_server: ServerFactory) -> str:
    return str((await aiohttp_server(sim.make_app())).make_url("")).rstrip("/")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'b.db'}"
        return
    with fresh_schema(require_pg(request.node.nodeid)) as url:
        yield url


async def arrive(receiver: RecordingReceiver, count: int) -> None:
    """Until `receiver` has `count` requests; real time only as a stall guard."""
    while len(receiver.requests) < count:
        async with asyncio.timeout(STALL_S):  # no progress at all: starved
            await receiver.arrived.wait()
        receiver.arrived.clear()


def ids(receiver: RecordingReceiver) -> set[str]:
    return {json.loads(r.body)["data"]["id"] for r in receiver.requests}


async def test_callbacks_waiting_on_a_hanging_endpoint_leave_the_rest_flowing(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
) -> None:
    """max_in_flight 4 (the callbacks' lane 2, one endpoint 1): 12 callbacks to a hanging
    endpoint, claimed first, and 2 to a fast one; the subscriber gets all 14 events and the
    fast endpoint both, while the hanging one has 1 request and the lane holds at most its
    cap of its other callbacks leased (the rest handed back, due a little later)."""
    release = asyncio.Event()
    hung: list[str] = []
    fast, rx = RecordingReceiver(), RecordingReceiver()
    settings = build(
        sim_url, store_url, rx=await serve(aiohttp_server, rx), timeout_s=3600, max_in_flight=4
    )
    async with started(settings, clock) as svc:
        await svc.poller.tick()
        records = [str(r["id"]) for r in sim.add_records(14, status="pending")]
        slow_url = await hanging(aiohttp_server, release, hung)
        fast_url = await serve(aiohttp_server, fast)
        for rid in records[:12]:
            await register(svc, rid, slow_url)
        for rid in records[12:]:
            await register(svc, rid, fast_url)
        await clock.advance(1.5)
        await svc.poller.tick()
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        try:
            await arrive(rx, 14)
            await arrive(fast, 2)
            assert len(hung) == 1  # its share, however many of its callbacks wait
            views = await svc.store.list_deliveries(where=DeliveryFilter())
            slow = {f"job:{rid}" for rid in records[:12]}
            handed_back = [
                v
                for v in views
                if v.subscriber_id in slow
                and v.state is DeliveryState.PENDING
                and (v.next_attempt_at or 0) > clock.now()
            ]
            # leased: the one in flight and at most the lane's cap (2) held back for it
            assert len(handed_back) >= 12 - 1 - 2
        finally:
            release.set()
            stop.set()
            await runner
    assert ids(rx) == set(records)
    assert ids(fast) == set(records[12:])


@pytest.mark.parametrize("lookup", ["slow", "failing"])
async def test_a_callback_is_not_started_before_its_endpoint_is_known(
    sim: Simulator,
    sim_url: str,
    aiohttp_server: ServerFactory,
    clock: FakeClock,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    lookup: str,
) -> None:
    """The batch look-up of the claimed callbacks is still running while the subscriber's
    answers wake the dispatcher (`slow`), or fails (`failing`: the callbacks are handed
    back, due a little later, and looked up again when claimed again): either way the
    hanging endpoint gets 1 request, its share, and the fast endpoint's callback goes."""
    release = asyncio.Event()
    hung: list[str] = []
    fast, rx = RecordingReceiver(), RecordingReceiver()
    settings = build(
        sim_url, store_url, rx=await serve(aiohttp_server, rx), timeout_s=3600, max_in_flight=4
    )
    async with started(settings, clock) as svc:
        await svc.poller.tick()
        records = [str(r["id"]) for r in sim.add_records(4, status="pending")]
        slow_url = await hanging(aiohttp_server, release, hung)
        for rid in records[:3]:
            await register(svc, rid, slow_url)
        await register(svc, records[3], await serve(aiohttp_server, fast))
        await clock.advance(1.5)
        await svc.poller.tick()

        looked_up = svc.store.callbacks
        batches: list[list[str]] = []
        looking, go_on = asyncio.Event(), asyncio.Event()

        async def callbacks(record_ids: Sequence[str]) -> dict[str, tuple[str, Callback]]:
            batches.append(list(record_ids))
            if len(batches) == 1:  # the first batch's look-up
                looking.set()
                if lookup == "failing":
                    raise StoreError("the store is away")
                await go_on.wait()
            return await looked_up(record_ids)

        monkeypatch.setattr(svc.store, "callbacks", callbacks)
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.dispatcher.run(stop))
        try:
            async with asyncio.timeout(STALL_S):
                await looking.wait()
            assert len(batches[0]) >= 2  # the claimed batch
            svc.dispatcher.wake()  # what a registration (or an answer) does meanwhile
            for _ in range(20):  # turns enough to start whatever it would
                await asyncio.sleep(0)
            # none started: a started callback looks its own callback up
            assert len(batches) == 1 and hung == [] and fast.requests == []
            if lookup == "slow":
                go_on.set()
            else:  # handed back, due a little later: looked up again then
                await clock.advance(HELD_BACK_S)
            await arrive(fast, 1)
            assert len(hung) <= 1  # its share (its request may still be on its way)
        finally:
            go_on.set()
            release.set()
            stop.set()
            await runner
        if lookup == "failing":
            assert len(batches) >= 2  # looked up again, no callback lost
    assert ids(fast) == {records[3]}
