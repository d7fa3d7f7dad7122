"""Retention (old rows deleted in small batches), orphaned deliveries of subscribers no longer
configured, and the delivery counters the gauges read, all on an injected `now`."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.models import Attempt, Delivery, DeliveryState, Event, RecordState
from bridge.store.base import AttemptOutcome, ScanCommit
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_retention import _EXPIRED
from bridge.store.sqlite_schema import MIGRATIONS, statements

DAY_S = 86400.0
R = 30 * DAY_S  # retention
DONE = AttemptOutcome(DeliveryState.DELIVERED)
DEAD = AttemptOutcome(DeliveryState.FAILED)


def event(name: str, at: float) -> Event:
    return Event(f"evt_{name}", "denoise.completed", f"r_{name}", at, None, {"id": name})


async def enqueue(store: SqliteStore, at: float, *names: str, to: tuple[str, ...] = ("a",)) -> None:
    await store.commit_scan(
        ScanCommit(
            [RecordState(f"r_{n}", "success", "t") for n in names],
            [(event(n, at), list(to)) for n in names],
            now=at,
        )
    )


async def settle(store: SqliteStore, sub: str, at: float, outcome: AttemptOutcome) -> int:
    """Claim everything due of `sub` at `at` and record `outcome` for each; how many."""
    claimed = await store.claim_due(now=at, limit=1000, lease_s=60, subscribers=[sub])
    for d in claimed:
        assert await store.finish_attempt(d, Attempt(at, 200, 1.0, None, ""), outcome)
    return len(claimed)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def ids(path: Path, table: str, column: str = "id") -> set[object]:
    return {row[0] for row in rows(path, f"SELECT {column} FROM {table}")}


# --- retention ------------------------------------------------------------------------------


async def test_old_delivered_deliveries_go_in_batches_with_their_attempts_and_events(
    store: SqliteStore, tmp_path: Path
) -> None:
    path = tmp_path / "b.db"
    await enqueue(store, 0.0, *(f"old{i}" for i in range(5)))
    assert await settle(store, "a", 10.0, DONE) == 5
    await enqueue(store, R, "recent")  # 30 days younger
    assert await settle(store, "a", R + 10.0, DONE) == 1
    now = R + 20.0  # the first five are older than the window; `recent` is not
    counts = []
    while deleted := await store.purge(now=now, retention_s=R, batch=2):
        counts.append(deleted)
    assert counts == [4, 4, 2]  # 2 deliveries + their 2 events per batch, then the last one
    assert ids(path, "events") == {"evt_recent"}
    assert len(ids(path, "deliveries")) == 1 and len(ids(path, "attempts")) == 1
    assert len(ids(path, "records")) == 6  # known states are kept
    assert (await store.count_deliveries())[DeliveryState.DELIVERED] == 1


async def test_dead_letters_and_orphans_stay_until_twice_as_old(
    store: SqliteStore, tmp_path: Path
) -> None:
    path = tmp_path / "b.db"
    await enqueue(store, 0.0, "dead", "orphan", "pending")
    [dead, orphan, pending] = await store.claim_due(now=0.0, limit=3, lease_s=60, subscribers=["a"])
    assert await store.finish_attempt(dead, Attempt(10.0, 500, 1.0, "HTTP 500", ""), DEAD)
    assert await store.release(orphan, now=10.0) and await store.release(pending, now=10.0)
    await store.commit_scan(ScanCommit([], [(event("orphan2", 0.0), ["gone"])], now=10.0))
    assert await store.reconcile_subscribers(["a"], now=10.0) == (1, 0)
    assert await store.purge(now=2 * R, retention_s=R) == 0  # older than R, not than 2R
    assert len(ids(path, "deliveries")) == 4
    # twice as old: the dead letter and the orphan go with their events; pending stays
    assert await store.purge(now=2 * R + 11.0, retention_s=R) == 4
    assert ids(path, "events") == {"evt_orphan", "evt_pending"}  # each has a pending delivery
    assert ids(path, "attempts") == set()
    [(state, n)] = rows(path, "SELECT state, COUNT(*) FROM deliveries GROUP BY state")
    assert (state, n) == ("pending", 2)


async def test_events_nobody_gets_go_once_old(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    await enqueue(store, 0.0, *(f"lone{i}" for i in range(7)), to=())
    await enqueue(store, 5.0, "kept", to=("a",))  # old, but its delivery is still pending
    await enqueue(store, R, "young", to=())
    assert await store.purge(now=R + 1.0, retention_s=R, batch=3) == 3
    assert await store.purge(now=R + 1.0, retention_s=R, batch=3) == 3
    assert await store.purge(now=R + 1.0, retention_s=R, batch=3) == 1
    assert await store.purge(now=R + 1.0, retention_s=R, batch=3) == 0
    assert ids(path, "events") == {"evt_kept", "evt_young"}
    # `kept` goes with its delivery, `young` once it is old too
    assert await settle(store, "a", R + 2.0, DONE) == 1
    assert await store.purge(now=2 * R + 3.0, retention_s=R) == 3
    assert ids(path, "events") == set()


async def test_an_event_replayed_meanwhile_is_kept(store: SqliteStore, tmp_path: Path) -> None:
    await enqueue(store, 0.0, "lone", to=())
    replayed = await store.replay(since=0.0, event_type=None, targets=lambda _: ["a"], now=1.0)
    assert replayed.deliveries == 1
    assert await store.purge(now=R + 1.0, retention_s=R) == 0
    assert ids(tmp_path / "b.db", "events") == {"evt_lone"}


def test_retention_reads_indexes_not_whole_tables(tmp_path: Path) -> None:
    async def create() -> None:
        store = SqliteStore(tmp_path / "b.db")
        await store.open()
        await store.close()

    asyncio.run(create())
    plan = rows(tmp_path / "b.db", f"EXPLAIN QUERY PLAN {_EXPIRED.replace('?', '0')}")
    details = [str(row[3]) for row in plan]
    assert [d for d in details if d.startswith("SCAN")] == [], details
    for state in ("delivered", "failed", "orphaned"):
        assert any(f"deliveries_{state}" in d for d in details), details


# --- orphans --------------------------------------------------------------------------------


async def test_a_removed_subscribers_deliveries_are_set_aside_and_come_back(
    store: SqliteStore,
) -> None:
    await enqueue(store, 0.0, "one", "two", to=("a", "b"))
    [first] = await store.claim_due(now=1.0, limit=1, lease_s=60, subscribers=["b"])
    assert await store.finish_attempt(first, Attempt(1.0, 200, 1.0, None, ""), DONE)
    assert await store.reconcile_subscribers(["a"], now=2.0) == (1, 0)
    counts = await store.count_deliveries()
    assert counts[DeliveryState.PENDING] == 2 and counts[DeliveryState.ORPHANED] == 1
    assert (await store.counts_by_subscriber())["b"][DeliveryState.ORPHANED] == 1
    [orphan] = await store.list_deliveries(state=DeliveryState.ORPHANED)
    assert (orphan.subscriber_id, orphan.event_id, orphan.next_attempt_at) == ("b", "evt_two", None)
    assert await store.claim_due(now=9.0, limit=10, lease_s=60, subscribers=["b"]) == []
    assert await store.next_due_at(["b"]) is None
    # a replay names configured subscribers only: the orphan stays put
    await store.replay(since=0.0, event_type=None, targets=lambda _: ["a"], now=3.0)
    assert (await store.count_deliveries())[DeliveryState.ORPHANED] == 1
    # configured again: pending, due now, with the attempts it had
    assert await store.reconcile_subscribers(["a", "b"], now=5.0) == (0, 1)
    [back] = await store.claim_due(now=5.0, limit=10, lease_s=60, subscribers=["b"])
    assert back.event.id == "evt_two" and back.attempts == 0
    assert (await store.count_deliveries())[DeliveryState.ORPHANED] == 0
    assert await store.reconcile_subscribers(["a", "b"], now=6.0) == (0, 0)


async def test_a_replay_to_a_returning_subscriber_takes_its_orphans_back(
    store: SqliteStore,
) -> None:
    await enqueue(store, 0.0, "one", to=("b",))
    assert await store.reconcile_subscribers([], now=1.0) == (1, 0)
    replayed = await store.replay(since=0.0, event_type=None, targets=lambda _: ["b"], now=2.0)
    assert replayed.deliveries == 1
    [d] = await store.claim_due(now=2.0, limit=10, lease_s=60, subscribers=["b"])
    assert d.event.id == "evt_one"


# --- counters -------------------------------------------------------------------------------


def group_by(path: Path) -> dict[str, dict[DeliveryState, int]]:
    counts: dict[str, dict[DeliveryState, int]] = {}
    for sub, state, n in rows(
        path, "SELECT subscriber_id, state, COUNT(*) FROM deliveries GROUP BY 1, 2"
    ):
        by_state = counts.setdefault(str(sub), dict.fromkeys(DeliveryState, 0))
        by_state[DeliveryState(str(state))] = int(str(n))
    return counts


def totals(by_sub: dict[str, dict[DeliveryState, int]]) -> dict[DeliveryState, int]:
    return {s: sum(c[s] for c in by_sub.values()) for s in DeliveryState}


SUBS = ("a", "b", "c")


@dataclass(frozen=True)
class Op:
    """One step of a random history of the outbox."""

    kind: str
    n: int = 1
    subs: tuple[str, ...] = ()
    state: DeliveryState = DeliveryState.PENDING


def op(kind: str, **fields: st.SearchStrategy[object]) -> st.SearchStrategy[Op]:
    return st.builds(Op, kind=st.just(kind), **fields)


SOME = st.sets(st.sampled_from(SUBS)).map(lambda subs: tuple(sorted(subs)))
OPS = st.one_of(
    op("scan", n=st.integers(1, 4), subs=SOME),
    op("claim", n=st.integers(1, 3), subs=st.sampled_from(SUBS).map(lambda s: (s,))),
    op("finish", n=st.integers(0, 20), state=st.sampled_from(list(DeliveryState)[:3])),
    op("release", n=st.integers(0, 20)),
    op("expire", n=st.integers(1, 3)),
    op("retry", n=st.integers(1, 30)),
    op("replay", subs=SOME),
    op("reconcile", subs=SOME),
    op("purge", n=st.integers(1, 3)),
)


def to(subs: tuple[str, ...], _event_type: str) -> tuple[str, ...]:
    return subs


async def run_ops(path: Path, ops: list[Op]) -> None:
    store = SqliteStore(path, max_attempts=3)
    await store.open()
    now, events, held = 0.0, 0, list[Delivery]()
    try:
        for step in ops:
            now += 1.0
            if step.kind == "scan":
                commit = [(event(f"{events + i}", now), list(step.subs)) for i in range(step.n)]
                events += step.n
                await store.commit_scan(ScanCommit([], commit, now=now))
            elif step.kind == "claim":
                subs = list(step.subs)
                held += await store.claim_due(now=now, limit=step.n, lease_s=5, subscribers=subs)
            elif step.kind == "finish" and held:
                d = held.pop(step.n % len(held))
                at = now if step.state is DeliveryState.PENDING else None
                attempt = Attempt(now, 500, 1.0, "x", "")
                await store.finish_attempt(d, attempt, AttemptOutcome(step.state, at))
            elif step.kind == "release" and held:
                await store.release(held.pop(step.n % len(held)), now=now)
            elif step.kind == "expire":  # leases run out: the next claims count lost attempts
                now += 10.0 * step.n
            elif step.kind == "retry":
                await store.retry(step.n, now=now)
            elif step.kind == "replay":
                await store.replay(
                    since=0.0, event_type=None, targets=partial(to, step.subs), now=now
                )
            elif step.kind == "reconcile":
                await store.reconcile_subscribers(step.subs, now=now)
            elif step.kind == "purge":
                await store.purge(now=now, retention_s=float(step.n), batch=2)
            expected = group_by(path)
            assert await store.counts_by_subscriber() == expected
            assert await store.count_deliveries() == totals(expected)
    finally:
        await store.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_the_counters_always_equal_a_group_by(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_ops(Path(tmp) / "b.db", ops))


def test_the_migration_counts_the_deliveries_already_there(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, script in enumerate(MIGRATIONS[:7], start=1):
            for statement in statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute(
            "INSERT INTO events (id, type, record_id, occurred_at, data)"
            " VALUES ('e1', 'denoise.completed', 'r1', 0, '{}')"
        )
        conn.executemany(
            "INSERT INTO deliveries (event_seq, subscriber_id, state, created_at, updated_at)"
            " VALUES (1, ?, ?, 0, 0)",
            [("a", "pending"), ("b", "pending"), ("c", "delivered"), ("d", "failed")],
        )

    async def reopen() -> tuple[dict[DeliveryState, int], bool]:
        store = SqliteStore(path)
        await store.open()
        try:
            return await store.count_deliveries(), store.created
        finally:
            await store.close()

    counts, created = asyncio.run(reopen())
    assert not created
    assert counts == {
        DeliveryState.PENDING: 2,
        DeliveryState.DELIVERED: 1,
        DeliveryState.FAILED: 1,
        DeliveryState.ORPHANED: 0,
    }
    assert group_by(path) == {
        sub: dict.fromkeys(DeliveryState, 0) | {DeliveryState(state): 1}
        for sub, state in [("a", "pending"), ("b", "pending"), ("c", "delivered"), ("d", "failed")]
    }
