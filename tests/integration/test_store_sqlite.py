"""The SQLite store on a real file: schema, atomic scans, claims and leases, durability."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.errors import StoreError
from bridge.models import Attempt, DeliveryState, Event, RecordState
from bridge.store.base import BASELINE_MARK, AttemptOutcome, ScanCommit
from bridge.store.sqlite import MIGRATIONS, SqliteStore
from bridge.store.sqlite_claim import LOST_ATTEMPT


def event(n: int, rid: str = "r1", type_: str = "denoise.completed") -> Event:
    return Event(f"evt_{n}", type_, rid, 100.0 + n, "pending", {"id": rid, "n": n})


def attempt(at: float, code: int | None = 500) -> Attempt:
    return Attempt(at, code, 12.5, None if code == 200 else "HTTP 500", "busy")


async def test_schema_is_versioned_and_wal(tmp_path: Path, store: SqliteStore) -> None:
    conn = sqlite3.connect(tmp_path / "b.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_reopen_keeps_everything_and_does_not_remigrate(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "b.db")
    await s.open()
    await s.commit_scan(
        ScanCommit(
            [RecordState("r1", "pending", "t")],
            [(event(1), ["a"])],
            now=5.0,
            meta={BASELINE_MARK: "t"},
        )
    )
    await s.close()
    s = SqliteStore(tmp_path / "b.db")
    await s.open()
    assert await s.baseline_done()
    assert await s.tracked_pending() == [RecordState("r1", "pending", "t")]
    assert (await s.count_deliveries())[DeliveryState.PENDING] == 1
    await s.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await SqliteStore(tmp_path / "b.db").open()


async def test_not_a_database_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        await SqliteStore(path).open()
    assert path.read_bytes() == b"this is not sqlite" * 100


async def test_failed_commit_changes_nothing(store: SqliteStore) -> None:
    bad = Event("evt_bad", "denoise.completed", "r2", 1.0, None, {"x": {1, 2}})  # not JSON
    commit = ScanCommit(
        [RecordState("r1", "success", "t"), RecordState("r2", "success", "t")],
        [(event(1), ["a"]), (bad, ["a"])],
        now=1.0,
        meta={BASELINE_MARK: "t"},
    )
    with pytest.raises(TypeError):
        await store.commit_scan(commit)
    assert not await store.baseline_done()
    assert await store.known_states(["r1", "r2"]) == {}
    assert sum((await store.count_deliveries()).values()) == 0


async def test_same_event_id_is_never_enqueued_twice(store: SqliteStore) -> None:
    assert (
        await store.commit_scan(ScanCommit([], [(event(1), ["a", "b"])], now=1.0))
    ).deliveries == 2
    assert (
        await store.commit_scan(ScanCommit([], [(event(1), ["a", "b"])], now=2.0))
    ).deliveries == 0
    assert (await store.count_deliveries())[DeliveryState.PENDING] == 2


async def test_claim_leases_and_second_claim_gets_nothing(store: SqliteStore) -> None:
    await store.commit_scan(ScanCommit([], [(event(1), ["a"]), (event(2), ["b"])], now=10.0))
    first = await store.claim_due(now=10.0, limit=10, lease_s=60, subscribers=["a", "b"])
    assert sorted(d.subscriber_id for d in first) == ["a", "b"]
    assert await store.claim_due(now=20.0, limit=10, lease_s=60, subscribers=["a", "b"]) == []
    assert await store.next_due_at(["a", "b"]) == 70.0
    # the lease expires (a crashed worker): the delivery is claimable again
    again = await store.claim_due(now=71.0, limit=10, lease_s=60, subscribers=["a"])
    assert [d.event.id for d in again] == ["evt_1"]
    # the first worker's late result is refused; the new holder's is kept
    stale = next(d for d in first if d.subscriber_id == "a")
    assert not await store.finish_attempt(
        stale, attempt(72.0), AttemptOutcome(DeliveryState.DELIVERED)
    )
    assert await store.finish_attempt(
        again[0], attempt(72.0, 200), AttemptOutcome(DeliveryState.DELIVERED)
    )


async def test_claim_respects_due_time_limit_and_subscribers(store: SqliteStore) -> None:
    await store.commit_scan(
        ScanCommit([], [(event(n, rid=f"r{n}"), ["a"]) for n in range(5)], now=10.0)
    )
    await store.commit_scan(ScanCommit([], [(event(9), ["off"])], now=10.0))
    assert await store.claim_due(now=9.0, limit=10, lease_s=1, subscribers=["a"]) == []
    got = await store.claim_due(now=10.0, limit=3, lease_s=1, subscribers=["a"])
    assert [d.event.id for d in got] == ["evt_0", "evt_1", "evt_2"]
    assert await store.claim_due(now=10.0, limit=10, lease_s=1, subscribers=[]) == []


async def test_attempts_are_recorded_and_retry_time_respected(store: SqliteStore) -> None:
    await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=10.0))
    [d] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.finish_attempt(d, attempt(10.0), AttemptOutcome(DeliveryState.PENDING, 15.0))
    assert await store.claim_due(now=14.9, limit=1, lease_s=60, subscribers=["a"]) == []
    [d2] = await store.claim_due(now=15.0, limit=1, lease_s=60, subscribers=["a"])
    assert d2.attempts == 1 and d2.event == d.event
    await store.finish_attempt(d2, attempt(15.0, 200), AttemptOutcome(DeliveryState.DELIVERED))
    [view] = await store.list_deliveries(subscriber="a")
    assert view.state is DeliveryState.DELIVERED and view.attempts == 2
    assert [a.status_code for a in view.history] == [500, 200]
    assert view.history[0].response_excerpt == "busy"
    assert await store.list_deliveries(state=DeliveryState.FAILED) == []
    assert await store.next_due_at(["a"]) is None


async def test_pending_records_are_tracked_newest_first_and_removed(store: SqliteStore) -> None:
    states = [
        RecordState("a", "pending", "2026-01-01"),
        RecordState("b", "pending", "2026-01-02"),
        RecordState("c", "success", "2026-01-03"),
        RecordState("d", "weird", "2026-01-04"),
    ]
    await store.commit_scan(ScanCommit(states, [], now=1.0, meta={BASELINE_MARK: "t"}))
    assert [s.id for s in await store.tracked_pending()] == ["d", "b", "a"]
    await store.commit_scan(
        ScanCommit([RecordState("a", "success", "2026-01-01")], [], now=2.0, removed=["b"])
    )
    # missed once: still tracked; missed again at the next scan: gone, not tracked
    assert [s.id for s in await store.tracked_pending()] == ["d", "b"]
    await store.commit_scan(ScanCommit([], [], now=3.0, removed=["b"]))
    assert [s.id for s in await store.tracked_pending()] == ["d"]
    # a gone record keeps its last status: if it comes back, it is compared with that
    assert set(await store.known_states(["a", "b", "c", "zz"])) == {"a", "b", "c"}
    assert (await store.known_states(["b"]))["b"].status == "pending"
    await store.commit_scan(ScanCommit([], [], now=4.0, seen=["b"]))
    assert [s.id for s in await store.tracked_pending()] == ["d", "b"]


async def test_a_record_seen_between_two_misses_is_not_gone(store: SqliteStore) -> None:
    states = [RecordState("a", "pending", "2026-01-01")]
    await store.commit_scan(ScanCommit(states, [], now=1.0, meta={BASELINE_MARK: "t"}))
    await store.commit_scan(ScanCommit([], [], now=2.0, removed=["a"]))
    await store.commit_scan(ScanCommit([], [], now=3.0, seen=["a"]))
    committed = await store.commit_scan(ScanCommit([], [], now=4.0, removed=["a"]))
    assert committed.forgotten == []
    assert [s.id for s in await store.tracked_pending()] == ["a"]
    committed = await store.commit_scan(ScanCommit([], [], now=5.0, removed=["a"]))
    assert committed.forgotten == ["a"] and await store.tracked_pending() == []


async def test_using_a_closed_store_is_a_store_error(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "b.db")
    with pytest.raises(StoreError, match="not open"):
        await s.ping()


async def test_claimed_events_come_back_exactly_as_stored(store: SqliteStore) -> None:
    odd = {"id": "r1", "size": 2**70, "ratio": float("inf"), "name": 'réunion "q" ✓\n'}
    at = 1_764_070_440.1234567  # more digits than SQLite's JSON numbers keep
    stored = Event("evt_x", "denoise.completed", "r1", at, None, odd)
    await store.commit_scan(ScanCommit([], [(stored, ["a"])], now=1.0))
    [d] = await store.claim_due(now=1.0, limit=5, lease_s=60, subscribers=["a"])
    assert d.event == stored and d.event.occurred_at == at


async def test_a_batch_records_each_attempt_exactly_and_refuses_lost_leases(
    store: SqliteStore,
) -> None:
    await store.commit_scan(
        ScanCommit([], [(event(n, rid=f"r{n}"), ["a"]) for n in range(3)], now=10.0)
    )
    held = await store.claim_due(now=10.0, limit=1, lease_s=5, subscribers=["a"])
    held += await store.claim_due(now=10.0, limit=2, lease_s=60, subscribers=["a"])
    # the first lease expires and another worker takes it: its old holder's result is refused
    [taken] = await store.claim_due(now=16.0, limit=3, lease_s=5, subscribers=["a"])
    assert taken.id == held[0].id
    first = Attempt(10.000123456789, 503, 0.1 + 0.2, "HTTP 503", 'réponse "busy" ✓')
    second = Attempt(11.5, 200, 7.25, None, "")
    third = Attempt(12.0, None, 15000.0, "timed out after 15.0 s", "")
    results = await asyncio.gather(
        store.finish_attempt(held[0], first, AttemptOutcome(DeliveryState.PENDING, 40.5)),
        store.finish_attempt(held[1], second, AttemptOutcome(DeliveryState.DELIVERED)),
        store.finish_attempt(held[2], third, AttemptOutcome(DeliveryState.FAILED)),
    )
    assert list(results) == [False, True, True]
    views = {v.id: v for v in await store.list_deliveries(subscriber="a")}
    assert views[held[0].id].state is DeliveryState.PENDING
    # the expired lease counted as an attempt (dated when it ran out); the late result did not
    lost = Attempt(15.0, None, 0.0, LOST_ATTEMPT, "")
    assert views[held[0].id].history == (lost,) and taken.attempts == 1
    assert views[held[1].id].state is DeliveryState.DELIVERED
    assert views[held[1].id].history == (second,)
    assert views[held[2].id].state is DeliveryState.FAILED
    assert views[held[2].id].history == (third,) and views[held[2].id].attempts == 1
    # the new holder's result is recorded with the exact values it reported
    assert await store.finish_attempt(taken, first, AttemptOutcome(DeliveryState.PENDING, 40.5))
    [view] = [v for v in await store.list_deliveries(subscriber="a") if v.id == taken.id]
    assert view.history == (lost, first) and view.next_attempt_at == 40.5


async def test_lanes_are_claimed_each_up_to_its_room_however_many_there_are(
    store: SqliteStore,
) -> None:
    subs = [f"s{i:03d}" for i in range(150)]  # more lanes than one statement takes
    await store.commit_scan(
        ScanCommit([], [(event(n, rid=f"r{n}"), subs) for n in range(3)], now=10.0)
    )
    rooms = [(sub, 1 if i % 2 else 2) for i, sub in enumerate(subs)] + [("idle", 5)]
    got = await store.claim_lanes(now=10.0, lease_s=60, rooms=rooms)
    by_lane: dict[str, list[str]] = {}
    for d in got:
        by_lane.setdefault(d.subscriber_id, []).append(d.event.id)
    assert by_lane == {
        sub: ["evt_0"] if i % 2 else ["evt_0", "evt_1"] for i, sub in enumerate(subs)
    }
    again = await store.claim_lanes(now=10.0, lease_s=60, rooms=[(s, 5) for s in subs])
    assert len(again) == 150 + 75 and {d.event.id for d in again} == {"evt_1", "evt_2"}


async def test_a_stale_copy_in_the_same_batch_as_the_lease_holder_is_refused(
    store: SqliteStore,
) -> None:
    await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=10.0))
    [stale] = await store.claim_due(now=10.0, limit=1, lease_s=5, subscribers=["a"])
    [holder] = await store.claim_due(now=16.0, limit=1, lease_s=60, subscribers=["a"])
    results = await asyncio.gather(
        store.finish_attempt(stale, attempt(16.5, 200), AttemptOutcome(DeliveryState.DELIVERED)),
        store.finish_attempt(holder, attempt(17.0), AttemptOutcome(DeliveryState.PENDING, 20.0)),
    )
    assert list(results) == [False, True]
    [view] = await store.list_deliveries(subscriber="a")
    # the stale copy's run ended with no outcome recorded: counted once, by the second claim
    assert view.state is DeliveryState.PENDING and view.attempts == 2
    assert [(a.status_code, a.error) for a in view.history] == [
        (None, LOST_ATTEMPT),
        (500, "HTTP 500"),
    ]
