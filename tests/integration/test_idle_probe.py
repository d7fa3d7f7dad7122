"""Idle polls against the simulator: while nothing is pending, a poll reads a probe of
`PROBE_LIMIT` records, a few hundred bytes whatever the history, and still finds a new job, a
status change or a record it cannot read at the top of the list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.detect.poller import PAGE_CHECK_S, PollResult
from bridge.detect.scan import PROBE_LIMIT
from bridge.models import Page, Record
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import SWEEP
from tests.integration.helpers import settings_for

ServerFactory = Callable[..., Any]
IDLE_BYTES = 2048
HTTP_BASELINE_MAX = 10_000
PAGE_SIZE = 1000  # the baseline reads the whole history: a big page keeps it short


class Meter:
    """Bytes of the list answers the simulator sends, as written on the wire (the body)."""

    def __init__(self) -> None:
        self.bytes = 0

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.path == "/denoise" and request.method == "GET":
            assert isinstance(response, web.Response) and isinstance(response.body, bytes)
            self.bytes += len(response.body)


class Rig:
    def __init__(self, sim: Simulator, meter: Meter, svc: Service) -> None:
        self.sim, self.meter, self.svc = sim, meter, svc

    async def poll(self) -> tuple[PollResult, int, list[str]]:
        """One poll: its result, the bytes of its list answers and its list queries."""
        before_bytes, before_log = self.meter.bytes, len(self.sim.request_log)
        result = await self.svc.poller.tick()
        queries = [q for (m, q, _) in self.sim.request_log[before_log:] if m == "GET"]
        return result, self.meter.bytes - before_bytes, queries

    async def baseline(self, history: int) -> None:
        """The baseline, over HTTP like every poll; past `HTTP_BASELINE_MAX` records the
        poller reads the simulator's list in process instead (parsing 100,000 records over
        HTTP takes longer than the rest of the test): the store ends up the same."""
        poller = self.svc.poller
        if history > HTTP_BASELINE_MAX:
            poller._client = InProcess(self.sim)
        try:
            while True:
                result = await poller.tick()
                assert result.baseline or not result.events
                if await self.svc.store.get_meta(SWEEP) is None:
                    return
        finally:
            poller._client = self.svc.client


class InProcess:
    """The simulator's list as it is now, read without HTTP."""

    def __init__(self, sim: Simulator) -> None:
        self.rows = [Record(r["id"], r["status"], r["created_at"], r) for r in sim.records]

    async def list_page(self, offset: int, limit: int) -> list[Record]:
        return Page(self.rows[offset : offset + limit])


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest,
    clock: FakeClock,
    aiohttp_server: ServerFactory,
    secret: str,
    tmp_path: Path,
) -> AsyncIterator[Rig]:
    """A simulator holding `request.param` finished records (1,000 by default) and a service
    that has recorded its baseline."""
    sim = Simulator(api_key="test-key", clock=clock, processing_s=10_000)
    history = getattr(request, "param", 1_000)
    sim.add_records(history, status="success")
    meter = Meter()
    app = sim.make_app()
    app.on_response_prepare.append(meter.on_prepare)
    server: TestServer = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    settings = settings_for(
        url,
        "http://127.0.0.1:9/hook",
        secret,
        tmp_path / "b.db",
        events=["denoise.*"],
        upstream={"page_size": PAGE_SIZE, "progress_stream": False, "full_scan_interval_s": 0},
    )
    async with Service(settings, clock=clock) as svc:
        await Rig(sim, meter, svc).baseline(history)
        yield Rig(sim, meter, svc)


@pytest.mark.parametrize("rig", [1_000, 100_000], indirect=True)
async def test_an_idle_poll_reads_a_probe_whatever_the_history(rig: Rig) -> None:
    for _ in range(3):
        result, sent, queries = await rig.poll()
        assert queries == [f"/denoise?offset=0&limit={PROBE_LIMIT}"]
        assert sent <= IDLE_BYTES and result.pages == 1
        assert result.events == [] and result.changes == []


async def test_a_new_job_after_idle_polls_is_found_by_the_next_poll(rig: Rig) -> None:
    for _ in range(3):
        await rig.poll()
    [job] = rig.sim.add_records(1, status="pending")
    result, _, queries = await rig.poll()
    assert [(e.type, e.record_id) for e in result.events] == [("denoise.created", job["id"])]
    assert queries == [
        f"/denoise?offset=0&limit={PROBE_LIMIT}",  # the top is unknown: no proof
        f"/denoise?offset=0&limit={PAGE_SIZE}",
    ]
    rig.sim.set_status(job["id"], "success")
    result, _, queries = await rig.poll()  # it is pending: a whole page, no probe
    assert [(e.type, e.record_id) for e in result.events] == [("denoise.completed", job["id"])]
    assert queries == [f"/denoise?offset=0&limit={PAGE_SIZE}"]
    result, sent, queries = await rig.poll()  # idle again
    assert queries == [f"/denoise?offset=0&limit={PROBE_LIMIT}"] and sent <= IDLE_BYTES
    assert result.events == []


@pytest.mark.parametrize("depth", [0, 1])
async def test_a_status_change_in_the_probe_is_found_by_the_next_poll(rig: Rig, depth: int) -> None:
    await rig.poll()
    record = rig.sim.records[depth]
    rig.sim.set_status(record["id"], "failed", error="reprocessed")
    result, _, queries = await rig.poll()
    assert [(e.type, e.record_id, e.previous_status) for e in result.events] == [
        ("denoise.failed", record["id"], "success")
    ]
    assert queries[0] == f"/denoise?offset=0&limit={PROBE_LIMIT}" and len(queries) == 2


async def test_a_record_that_cannot_be_read_on_top_falls_back_to_paging(rig: Rig) -> None:
    await rig.poll()
    rig.sim.add_raw_record(b'{"id": "broken-1", "status": 5, "created_at": "2026"}')
    result, _, queries = await rig.poll()  # the probe meets it: the poll pages
    assert queries == [
        f"/denoise?offset=0&limit={PROBE_LIMIT}",
        f"/denoise?offset=0&limit={PAGE_SIZE}",
    ]
    assert result.events == [] and result.pages == 2
    for _ in range(2):  # while it stays listed, polls page at once (no probe), announce nothing
        result, _, queries = await rig.poll()
        assert queries == [f"/denoise?offset=0&limit={PAGE_SIZE}"]
        assert result.events == [] and result.pages == 1
    [job] = rig.sim.add_records(1, status="success")  # listed right below the broken record
    result, _, _ = await rig.poll()
    assert [(e.type, e.record_id) for e in result.events] == [
        ("denoise.created", job["id"]),
        ("denoise.completed", job["id"]),
    ]
    rig.sim.clear_raw_records()
    _, _, queries = await rig.poll()  # a whole page shows nothing unreadable is left
    assert queries == [f"/denoise?offset=0&limit={PAGE_SIZE}"]
    _, sent, queries = await rig.poll()
    assert queries == [f"/denoise?offset=0&limit={PROBE_LIMIT}"] and sent <= IDLE_BYTES


async def test_a_change_below_the_top_two_waits_at_most_page_check_s(
    rig: Rig, clock: FakeClock
) -> None:
    """The probe reads the top two rows; a whole first page at least every `PAGE_CHECK_S`
    catches what changed below them (here a finished record failing again at row 5)."""
    await rig.poll()  # idle: the probe
    fifth = rig.sim.records[4]
    rig.sim.set_status(fifth["id"], "failed", error="re-processed")
    result, _, queries = await rig.poll()
    assert queries == [f"/denoise?offset=0&limit={PROBE_LIMIT}"] and result.events == []
    await clock.advance(PAGE_CHECK_S)
    result, _, queries = await rig.poll()
    assert queries == [f"/denoise?offset=0&limit={PAGE_SIZE}"]
    assert [(e.type, e.record_id) for e in result.events] == [("denoise.failed", fifth["id"])]
    _, _, queries = await rig.poll()  # probes again
    assert queries == [f"/denoise?offset=0&limit={PROBE_LIMIT}"]
