"""Property: whatever interleaving of inserts, status changes and page fetches, every record
gets one `created` event after the baseline and one terminal event — never a miss, never a
duplicate. Idle spells (every job finished: polls read the probe) come and go with the rest.
Drives the real simulator over HTTP and the real service on a SQLite file."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.detect.poller import PollResult
from bridge.detect.scan import PROBE_LIMIT
from bridge.models import Record
from bridge.service import Service
from bridge.sim.clock import FakeClock
from bridge.sim.simulator import Simulator
from bridge.store.base import SWEEP
from tests.conftest import make_secret
from tests.integration.helpers import settings_for

STATUSES = st.sampled_from(["pending", "pending", "success", "failed"])
OP = st.one_of(
    st.tuples(st.just("insert"), STATUSES),
    st.tuples(st.just("finish"), st.integers(0, 50), st.sampled_from(["success", "failed"])),
    st.tuples(st.just("none")),
    st.tuples(st.just("settle")),  # every pending job finishes: the next polls are idle
    st.tuples(st.just("burst"), st.integers(2, 7), STATUSES),  # several jobs in one go
)


@dataclass
class World:
    """The ground truth the bridge is checked against."""

    sim: Simulator
    ops: list[tuple[Any, ...]]  # applied in turn, one before each page fetch
    done: int = 0  # how many were applied
    baseline_ids: set[str] | None = None
    baseline_pending: set[str] = field(default_factory=set)
    in_baseline: bool = True
    finished_during_baseline: set[str] = field(default_factory=set)

    def apply(self, op: tuple[Any, ...]) -> None:
        if op[0] == "insert":
            self.sim.add_records(1, status=op[1])
        elif op[0] == "burst":
            # during the baseline, one at a time: a burst would put records created after the
            # first fetch on the baseline's later pages, where they are noted, not announced
            self.sim.add_records(1 if self.in_baseline else op[1], status=op[2])
        elif op[0] == "finish":
            pending = [r["id"] for r in self.sim.records if r["status"] == "pending"]
            if pending:
                rid = pending[op[1] % len(pending)]
                self.sim.set_status(rid, op[2], error="x" if op[2] == "failed" else None)
                if self.in_baseline:
                    self.finished_during_baseline.add(rid)
        elif op[0] == "settle":
            for record in self.sim.records:
                if record["status"] == "pending":
                    self.sim.set_status(record["id"], "success")
                    if self.in_baseline:
                        self.finished_during_baseline.add(record["id"])


class Interleaved:
    """Runs the next operation before each page fetch: the list changes under the scan."""

    def __init__(self, inner: Any, world: World) -> None:
        self.inner, self.world = inner, world

    async def list_page(self, offset: int, limit: int) -> list[Record]:
        if self.world.done < len(self.world.ops):
            self.world.done += 1
            self.world.apply(self.world.ops[self.world.done - 1])
        if self.world.baseline_ids is None:
            records = self.world.sim.records
            self.world.baseline_ids = {r["id"] for r in records}
            self.world.baseline_pending = {r["id"] for r in records if r["status"] == "pending"}
        result: list[Record] = await self.inner.list_page(offset, limit)
        return result


async def scenario(
    initial: list[str], ops: list[tuple[Any, ...]], page_size: int, max_pages: int
) -> list[PollResult]:
    """Runs the interleaving, checks the events; returns the polls after the baseline."""
    clock = FakeClock()
    sim = Simulator(api_key="test-key", clock=clock, processing_s=1e9)
    for status in initial:
        sim.add_records(1, status=status)
    world = World(sim, ops)
    server = TestServer(sim.make_app())
    await server.start_server()
    events: list[Any] = []
    polls: list[PollResult] = []

    def collect(result: PollResult) -> None:
        events.extend(result.events)
        if not result.baseline:
            polls.append(result)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = settings_for(
                str(server.make_url("")).rstrip("/"),
                "http://127.0.0.1:9/hook",
                make_secret(),
                Path(tmp) / "b.db",
                events=["denoise.*"],
                upstream={
                    "page_size": page_size,
                    "max_pages_per_scan": max_pages,
                    "progress_stream": False,
                },
            )
            async with Service(config, clock=clock, on_poll=collect) as svc:
                svc.poller._client = Interleaved(svc.client, world)
                for _ in range(len(ops) + 60):
                    await svc.poller.tick()
                    if await svc.store.get_meta(SWEEP) is None:
                        world.in_baseline = False
                    exhausted = world.done == len(world.ops)
                    if exhausted and not world.in_baseline:
                        break
                quiet = 0
                for _ in range(80):  # settle: upstream stands still; poll until nothing moves
                    result = await svc.poller.tick()
                    still = not result.events and not result.truncated
                    quiet = quiet + 1 if still and await svc.store.get_meta(SWEEP) is None else 0
                    if quiet == 2:
                        break
                mark = await svc.store.get_meta("baseline_mark")
    finally:
        await server.close()
    check(world, sim.records, events, mark or "")
    return polls


def check(world: World, records: list[dict[str, Any]], events: list[Any], mark: str) -> None:
    assert world.baseline_ids is not None
    counts = Counter((e.record_id, e.type) for e in events)
    assert all(n == 1 for n in counts.values()), f"duplicates: {counts.most_common(3)}"
    assert len({e.id for e in events}) == len(events)
    for record in records:
        rid, status = record["id"], record["status"]
        terminal = {"success": "denoise.completed", "failed": "denoise.failed"}.get(status)
        types = {t for (r, t) in counts if r == rid}
        if rid in world.baseline_ids:
            assert record["created_at"] <= mark, "a baseline record was announced as new"
            assert "denoise.created" not in types
            if rid in world.finished_during_baseline or terminal is None:
                assert types <= ({terminal} if terminal else set())
            elif rid in world.baseline_pending:
                assert types == {terminal}, (rid, status, types)  # finished after the baseline
            else:
                assert types == set()  # already finished at the baseline
        else:
            assert record["created_at"] > mark
            expected = {"denoise.created"} | ({terminal} if terminal else set())
            assert types == expected, (rid, status, types)


def test_baseline_records_pending_then_finished_get_their_terminal_event() -> None:
    """The deterministic core of the property: a change after the baseline is always seen."""

    finishes = [("finish", 0, "success"), ("insert", "pending"), ("finish", 3, "failed")] * 4
    asyncio.run(scenario(["pending"] * 7 + ["success"] * 5, [("none",)] * 10 + finishes, 2, 3))


def test_idle_spells_read_the_probe_and_miss_nothing_after_them() -> None:
    """Idle polls end at the probe; the job created or finished after them is still seen."""
    idle = [("settle",)] + [("none",)] * 4
    ops = [*idle, ("insert", "pending"), *idle, ("burst", 5, "success"), *idle]
    ops += [("insert", "pending"), ("none",), ("finish", 0, "failed"), *idle]
    polls = asyncio.run(scenario(["pending"] * 3 + ["success"] * 6, ops, 4, 3))
    probes = [p for p in polls if p.pages == 1 and p.records_seen == PROBE_LIMIT]
    assert len(probes) >= 8  # the idle polls: the probe alone (a page holds 4)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    initial=st.lists(STATUSES, max_size=25),
    ops=st.lists(OP, max_size=40),
    page_size=st.integers(1, 6),
    max_pages=st.integers(3, 8),
)
def test_no_event_is_missed_or_duplicated_under_drift(
    initial: list[str], ops: list[tuple[Any, ...]], page_size: int, max_pages: int
) -> None:
    asyncio.run(scenario(initial, ops, page_size, max_pages))
