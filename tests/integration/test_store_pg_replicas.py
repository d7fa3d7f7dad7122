"""Two replicas on one PostgreSQL store (two `PgStore`s on one schema, each with its own
pool): claims never overlap, a lease that ran out is fenced, a subscriber's cap and the
per-record order hold across them, one holds the poller's lease and only it commits scans;
scans commit one at a time, and a long one does not hold up the lease's renewal."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import psycopg
import pytest

from bridge.errors import StoreError
from bridge.models import Attempt, Delivery, DeliveryState, Event, RecordState
from bridge.store.base import AttemptOutcome, LeaderState, ScanCommit
from bridge.store.claims_common import LOST_ATTEMPT
from bridge.store.pg import PgStore
from tests.pgdb import fresh_schema, require_pg

LEASE_S = 30.0
DONE = AttemptOutcome(DeliveryState.DELIVERED)
OK = Attempt(1.0, 200, 1.0, None, "")


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new schema; its connections named after it (to find them among the server's)."""
    with fresh_schema(require_pg(request.node.nodeid)) as url:
        yield f"{url}&application_name=replicas_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pair(pg_url: str) -> AsyncIterator[tuple[PgStore, PgStore]]:
    """Two replicas of one store, on the clock their callers give."""
    a = PgStore(pg_url, db_clock=False, replica_id="r1")
    b = PgStore(pg_url, db_clock=False, replica_id="r2")
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


def event(n: int, rid: str | None = None) -> Event:
    rid = rid or f"r{n}"
    return Event(f"evt_{n}", "denoise.completed", rid, float(n), None, {"id": rid})


async def enqueue(store: PgStore, events: list[Event], subs: list[str]) -> None:
    await store.commit_scan(ScanCommit([], [(e, subs) for e in events], now=0.0))


def names(deliveries: list[Delivery]) -> list[str]:
    return [d.event.id for d in deliveries]


async def test_claims_of_two_replicas_never_overlap(pair: tuple[PgStore, PgStore]) -> None:
    a, b = pair
    await enqueue(a, [event(n) for n in range(60)], ["x", "y"])

    async def drain(store: PgStore, lanes: bool) -> list[int]:
        got: list[int] = []
        while True:
            claimed = (
                await store.claim_lanes(now=0.0, lease_s=LEASE_S, rooms=[("x", 3), ("y", 4)])
                if lanes
                else await store.claim_due(
                    now=0.0, limit=5, lease_s=LEASE_S, subscribers=["x", "y"]
                )
            )
            if not claimed:
                return got
            got += [d.id for d in claimed]
            for d in claimed:
                assert await store.finish_attempt(d, OK, DONE)

    took = await asyncio.gather(drain(a, True), drain(b, True), drain(a, False), drain(b, False))
    every = [i for got in took for i in got]
    assert len(every) == len(set(every)) == 120
    assert all(took)  # each of them got some: they did claim side by side


async def test_a_lease_that_ran_out_and_was_claimed_again_is_fenced(
    pair: tuple[PgStore, PgStore],
) -> None:
    a, b = pair
    await enqueue(a, [event(1)], ["x"])
    [first] = await a.claim_due(now=0.0, limit=1, lease_s=LEASE_S, subscribers=["x"])
    assert await b.claim_due(now=LEASE_S - 0.001, limit=1, lease_s=LEASE_S, subscribers=["x"]) == []
    [second] = await b.claim_due(now=LEASE_S, limit=1, lease_s=LEASE_S, subscribers=["x"])
    assert second.id == first.id and second.lease_token != first.lease_token
    assert second.attempts == 1  # the first one's lost attempt, counted at the claim
    # the first worker answers late: nothing of it is recorded, its lease is not released
    assert not await a.finish_attempt(first, OK, DONE)
    assert not await a.release(first, now=LEASE_S + 1)
    view = await a.get_delivery(first.id)
    assert view is not None and view.state is DeliveryState.PENDING and view.attempts == 1
    assert [(h.status_code, h.error, h.attempted_at) for h in view.history] == [
        (None, LOST_ATTEMPT, LEASE_S)
    ]
    assert await b.finish_attempt(second, Attempt(31.0, 200, 1.0, None, ""), DONE)
    view = await b.get_delivery(first.id)
    assert view is not None and view.state is DeliveryState.DELIVERED and view.attempts == 2


async def test_a_cap_holds_across_replicas(pair: tuple[PgStore, PgStore]) -> None:
    a, b = pair
    await enqueue(a, [event(n) for n in range(10)], ["x"])

    async def claim(store: PgStore, now: float = 0.0) -> list[Delivery]:
        return await store.claim_lanes(now=now, lease_s=LEASE_S, rooms=[("x", 5)], caps={"x": 2})

    rounds = await asyncio.gather(*(claim(s) for _ in range(5) for s in (a, b)))
    held = [d for got in rounds for d in got]
    assert len(held) == 2
    # a finished one makes room for one more, whichever replica asks
    owner = a if held[0] in [d for got in rounds[0::2] for d in got] else b
    assert await owner.finish_attempt(held[0], OK, DONE)
    rounds = await asyncio.gather(*(claim(s) for _ in range(5) for s in (a, b)))
    assert sum(len(got) for got in rounds) == 1
    # leases that ran out do not count
    assert len(await claim(b, now=LEASE_S)) == 2


async def test_the_per_record_order_holds_across_replicas(pair: tuple[PgStore, PgStore]) -> None:
    a, b = pair
    await enqueue(a, [event(1, "r"), event(2, "r"), event(3, "r"), event(4, "other")], ["x"])
    rooms = [("x", 10)]
    [first, other] = await a.claim_lanes(now=0.0, lease_s=LEASE_S, rooms=rooms)
    assert names([first, other]) == ["evt_1", "evt_4"]
    assert await b.claim_lanes(now=0.0, lease_s=LEASE_S, rooms=rooms) == []
    # due again later: the record's next events still wait for it, on every replica
    assert await a.finish_attempt(first, OK, AttemptOutcome(DeliveryState.PENDING, 5.0))
    assert await b.claim_lanes(now=1.0, lease_s=LEASE_S, rooms=rooms) == []
    [again] = await b.claim_lanes(now=5.0, lease_s=LEASE_S, rooms=rooms)
    assert again.event.id == "evt_1"
    assert await b.finish_attempt(again, OK, DONE)
    # both replicas at once: only the next one goes
    got = await asyncio.gather(
        *(s.claim_lanes(now=6.0, lease_s=LEASE_S, rooms=rooms) for s in pair)
    )
    [second] = [d for claimed in got for d in claimed]
    assert second.event.id == "evt_2"
    owner = pair[0] if got[0] else pair[1]
    assert await owner.finish_attempt(second, OK, AttemptOutcome(DeliveryState.FAILED))
    [third] = await b.claim_lanes(now=7.0, lease_s=LEASE_S, rooms=rooms)  # a dead letter: next
    assert third.event.id == "evt_3"


async def wait_until_free(store: PgStore, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await store.leader()).replica is not None:
        assert time.monotonic() < deadline, "the lease never ran out"
        await asyncio.sleep(0.05)


async def test_one_replica_holds_the_pollers_lease(pair: tuple[PgStore, PgStore]) -> None:
    a, b = pair
    assert await a.leader() == LeaderState(None, None, None)
    assert await a.hold_leadership("r1", 0.3, last_poll_at=None)
    assert not await b.hold_leadership("r2", 0.3, last_poll_at=None)
    assert await a.hold_leadership("r1", 0.3, last_poll_at=5.0)  # renewed
    state = await b.leader()
    assert state.replica == "r1" and state.last_poll_at == 5.0
    assert state.expires_in_s is not None and 0.0 < state.expires_in_s <= 0.3
    await wait_until_free(b)
    state = await b.leader()
    assert (state.replica, state.expires_in_s, state.last_poll_at) == (None, None, 5.0)
    assert await b.hold_leadership("r2", LEASE_S, last_poll_at=None)
    assert not await a.hold_leadership("r1", LEASE_S, last_poll_at=6.0)
    assert (await a.leader()).replica == "r2"
    await a.resign("r1")  # not the holder: changes nothing
    assert (await a.leader()).replica == "r2"
    await b.resign("r2")  # a clean shutdown: free at once
    assert (await a.leader()).replica is None
    assert await a.hold_leadership("r1", LEASE_S, last_poll_at=None)


async def test_only_the_lease_holder_commits_scans(
    pg_url: str, pair: tuple[PgStore, PgStore]
) -> None:
    a, b = pair
    scan = ScanCommit([RecordState("r1", "pending", "t")], [(event(1), ["x"])], now=1.0)
    assert (await a.commit_scan(scan)).deliveries == 1  # no lease held: a command may commit
    assert await b.hold_leadership("r2", LEASE_S, last_poll_at=None)
    late = ScanCommit([RecordState("r2", "pending", "t")], [(event(2), ["x"])], now=2.0)
    with pytest.raises(StoreError, match=r"^another replica \(r2\) holds the poller's lease$"):
        await a.commit_scan(late)
    command = PgStore(pg_url, db_clock=False)  # no replica name (a command)
    await command.open()
    try:
        with pytest.raises(StoreError, match=r"another replica \(r2\)"):
            await command.commit_scan(late)
    finally:
        await command.close()
    assert await a.known_states(["r2"]) == {}  # nothing of it was written
    assert (await b.commit_scan(late)).deliveries == 1
    await b.resign("r2")
    assert (await a.commit_scan(ScanCommit([], [(event(3), ["x"])], now=3.0))).deliveries == 1


@asynccontextmanager
async def deltas_locked(pg_url: str) -> AsyncIterator[None]:
    """`delivery_count_deltas` locked by a transaction of the test's own: a scan that queues
    deliveries stops there, after its events went in and before its fence and commit."""
    async with await psycopg.AsyncConnection.connect(pg_url) as conn, conn.transaction():
        await conn.execute("LOCK TABLE delivery_count_deltas IN EXCLUSIVE MODE")
        yield


async def waiting_for(pg_url: str, lock: str) -> bool:
    """Whether one of this test's sessions waits for a lock of `lock` ("relation" or
    "advisory")."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE NOT l.granted AND l.locktype = %s"
            " AND a.application_name = current_setting('application_name')",
            (lock,),
        )
        row = await cur.fetchone()
        return row is not None and row[0] > 0


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


async def test_a_long_scan_commit_does_not_hold_up_the_lease_renewal(
    pg_url: str, pair: tuple[PgStore, PgStore]
) -> None:
    a, _ = pair
    assert await a.hold_leadership("r1", LEASE_S, last_poll_at=None)
    async with deltas_locked(pg_url):
        scan = asyncio.create_task(a.commit_scan(ScanCommit([], [(event(1), ["x"])], now=1.0)))
        await until(lambda: waiting_for(pg_url, "relation"), "the scan waits")
        # the scan is under way (its events written): the holder renews its lease meanwhile
        renewed = await asyncio.wait_for(a.hold_leadership("r1", LEASE_S, last_poll_at=1.0), 5.0)
        assert renewed and not scan.done()
    assert (await scan).deliveries == 1


async def test_scans_commit_one_at_a_time_so_events_are_numbered_in_commit_order(
    pg_url: str, pair: tuple[PgStore, PgStore]
) -> None:
    a, b = pair  # the poller and a progress stream, say (no lease held: both may commit)
    committed: list[str] = []

    async def commit(store: PgStore, scan: ScanCommit, name: str) -> None:
        await store.commit_scan(scan)
        committed.append(name)

    async with deltas_locked(pg_url):
        first = asyncio.create_task(
            commit(a, ScanCommit([], [(event(1), ["x"])], now=1.0), "first")
        )
        await until(lambda: waiting_for(pg_url, "relation"), "the first scan waits")
        # a scan queuing no delivery: it would not wait for the table, only for the first
        second = asyncio.create_task(commit(b, ScanCommit([], [(event(2), [])], now=2.0), "second"))

        async def second_waits_or_is_done() -> bool:
            return second.done() or await waiting_for(pg_url, "advisory")

        await until(second_waits_or_is_done, "the second scan waits or commits")
        assert not second.done(), "the second scan committed while the first was under way"
    await asyncio.gather(first, second)
    assert committed == ["first", "second"]
    assert [e.id for e in reversed(await a.list_events() or [])] == ["evt_1", "evt_2"]  # by seq


async def test_a_scan_of_many_events_commits_them_in_order_once(
    pair: tuple[PgStore, PgStore],
) -> None:
    a, _ = pair
    events = [(event(n, f"r{n % 50}"), ["x", "y"] if n % 2 else ["x"]) for n in range(3000)]
    repeated = [(event(7, "r7"), ["y"])]  # an event id given twice: its first only counts
    done = await a.commit_scan(ScanCommit([], [*events, *repeated], now=1.0))
    assert done.deliveries == 4500 and done.recorded == {e.id for e, _ in events}
    stored = await a.list_events(limit=-1) or []
    assert [e.id for e in reversed(stored)] == [e.id for e, _ in events]
    counts = await a.counts_by_subscriber()
    assert (counts["x"][DeliveryState.PENDING], counts["y"][DeliveryState.PENDING]) == (3000, 1500)
    # the record's order holds: the first of r7's events goes first
    [first] = await a.claim_lanes(now=1.0, lease_s=LEASE_S, rooms=[("y", 1)])
    assert first.event.id == "evt_1" and first.event.record_id == "r1"
    again = await a.commit_scan(ScanCommit([], [*events[:10], (event(5000), ["x"])], now=2.0))
    assert (again.deliveries, again.recorded) == (1, frozenset({"evt_5000"}))
