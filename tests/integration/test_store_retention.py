"""Retention and the delivery counters on SQLite: the queries read indexes, the counters the
triggers keep always equal a GROUP BY, the migration that added them counts what was there.
What retention deletes and keeps, orphans and the counters after each transition are the
store contract's (tests/contract); the helpers here are used by test_retention_service."""

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


# --- retention (what goes and what stays: tests/contract/test_retention.py) -----------------


async def test_purged_deliveries_leave_no_attempts_behind(
    store: SqliteStore, tmp_path: Path
) -> None:
    """What the port cannot show: a purged delivery's attempts are deleted with it."""
    path = tmp_path / "b.db"
    await enqueue(store, 0.0, "done", "dead", "kept")
    claimed = await store.claim_due(now=0.0, limit=3, lease_s=60, subscribers=["a"])
    outcomes = {"evt_done": DONE, "evt_dead": AttemptOutcome(DeliveryState.FAILED)}
    for d in claimed:
        outcome = outcomes.get(d.event.id, AttemptOutcome(DeliveryState.PENDING, 5.0))
        assert await store.finish_attempt(d, Attempt(1.0, 500, 1.0, "HTTP 500", ""), outcome)
    assert len(ids(path, "attempts")) == 3
    while await store.purge(now=2 * R + 2.0, retention_s=R, batch=1) >= 1:
        pass
    [kept] = ids(path, "deliveries")
    assert {row[0] for row in rows(path, "SELECT delivery_id FROM attempts")} == {kept}


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


def to(subs: tuple[str, ...], _event_type: str, _record_id: str) -> tuple[str, ...]:
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
