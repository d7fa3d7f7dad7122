"""Which replica polls: `Leadership` on real PostgreSQL stores, two replicas sharing one
schema. One polls at a time; a clean stop hands over at once; a leader whose store stops
answering stops polling before its lease can pass to the other replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from bridge.errors import StoreError
from bridge.leader import Leadership
from bridge.store.base import LeaderState
from bridge.store.pg import PgStore
from tests.pgdb import fresh_schema, require_pg

LEASE_S = 0.9
DEADLINE_S = 30.0


class Partitioned:
    """A real store whose lease calls fail (`mode = "error"`) or never answer (`"hang"`)
    on demand: the leader cut off from its database."""

    def __init__(self, store: PgStore) -> None:
        self.store = store
        self.replica_id = store.replica_id
        self.mode: str | None = None

    async def hold_leadership(
        self, replica: str, lease_s: float, *, last_poll_at: float | None
    ) -> bool:
        if self.mode == "error":
            raise StoreError("store: connection refused (cut off for the test)")
        while self.mode == "hang":  # a dead connection: not even cancelling it ends the call
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
        return await self.store.hold_leadership(replica, lease_s, last_poll_at=last_poll_at)

    async def leader(self) -> LeaderState:
        return await self.store.leader()

    async def resign(self, replica: str) -> None:
        if self.mode is None:
            await self.store.resign(replica)

    async def listen(self, on_notify: Callable[[str], None], stop: asyncio.Event) -> None:
        await self.store.listen(on_notify, stop)


@dataclass
class Replica:
    name: str
    store: Partitioned
    spans: list[list[float]] = field(default_factory=list)  # [started, ended] of polling
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def polling(self) -> None:
        span = [time.monotonic(), float("inf")]
        self.spans.append(span)
        try:
            await asyncio.Event().wait()
        finally:
            span[1] = time.monotonic()

    @property
    def polls(self) -> bool:
        return bool(self.spans) and self.spans[-1][1] == float("inf")

    def start(self) -> None:
        leadership = Leadership(
            self.store,
            holder=self.store.replica_id,
            lease_s=LEASE_S,
            polling=self.polling,
            last_poll_at=time.time,
        )
        self.task = asyncio.create_task(leadership.run(self.stop))

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def two_replicas(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Replica, Replica]]:
    url = require_pg(request.node.nodeid)
    with fresh_schema(url) as schema_url:
        stores = [PgStore(schema_url, replica_id=f"r{i}") for i in (1, 2)]
        for store in stores:
            await store.open()
        a, b = (Replica(f"r{i}", Partitioned(s)) for i, s in enumerate(stores, start=1))
        try:
            yield a, b
        finally:
            for replica in (a, b):
                replica.store.mode = None
                await replica.halt()
            for store in stores:
                await store.close()


def no_overlap(a: Replica, b: Replica) -> None:
    for sa in a.spans:
        for sb in b.spans:
            assert sa[1] <= sb[0] or sb[1] <= sa[0], f"both polled at once: {sa} {sb}"


async def test_one_polls_and_a_clean_stop_hands_over(request: pytest.FixtureRequest) -> None:
    async with two_replicas(request) as (a, b):
        a.start()
        await until(lambda: a.polls, "the first replica to lead")
        b.start()
        state = await a.store.leader()
        assert state.replica == "r1"
        assert state.last_poll_at is not None  # recorded with each renewal
        await a.halt()  # resigns: the other takes over at its next renewal
        assert not a.polls
        await until(lambda: b.polls, "the second replica to take over")
        assert (await b.store.leader()).replica == "r2"
        no_overlap(a, b)


@pytest.mark.parametrize("mode", ["error", "hang"])
async def test_a_leader_cut_off_stops_polling_before_the_other_starts(
    request: pytest.FixtureRequest, mode: str
) -> None:
    async with two_replicas(request) as (a, b):
        a.start()
        await until(lambda: a.polls, "the first replica to lead")
        b.start()
        await until(lambda: b.task is not None and len(a.spans) == 1, "both running")
        a.store.mode = mode  # its renewals fail or hang; its lease runs out in the database
        await until(lambda: b.polls, "the second replica to take over")
        assert not a.polls, "the cut-off leader still polls"
        no_overlap(a, b)  # it had stopped before the other began
        a.store.mode = None  # back: it finds the lease taken and stays a follower
        await until(lambda: len(b.spans) == 1 and b.polls, "the new leader to keep polling")
        assert (await a.store.leader()).replica == "r2"
