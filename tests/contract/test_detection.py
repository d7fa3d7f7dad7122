"""The poller's side of the store: known states, a scan's commit, tombstones, meta, events
recorded once."""

from __future__ import annotations

import pytest

from bridge.errors import StoreError
from bridge.models import COMPLETED, CREATED, DeliveryState, Event, RecordState
from bridge.store.base import BASELINE_MARK, BASELINE_TIES, SWEEP, ScanCommit, Store
from tests.contract.conftest import assert_counts, enqueue, event, record


async def test_a_new_store_knows_nothing(store: Store) -> None:
    await store.ping()
    assert not await store.baseline_done()
    assert await store.get_meta(BASELINE_MARK) is None
    assert await store.newest_created_at() is None
    assert await store.known_states(["r1"]) == {}
    assert await store.known_states([]) == {}
    assert await store.tracked_pending() == []
    assert await store.list_events() == []
    assert await store.list_deliveries() == []
    assert await store.next_due_at(["a"]) is None
    assert await store.subscriber_health() == {}
    await assert_counts(store, {})


async def test_known_states_are_upserted_by_each_scan(store: Store) -> None:
    await store.commit_scan(
        ScanCommit([record("a"), record("b", "success", "2026-01-02T00:00:00Z")], [], now=1.0)
    )
    assert await store.known_states(["a", "b", "zz", "a"]) == {
        "a": RecordState("a", "pending", "2026-01-01T00:00:00Z"),
        "b": RecordState("b", "success", "2026-01-02T00:00:00Z"),
    }
    await store.commit_scan(ScanCommit([record("a", "success"), record("c")], [], now=2.0))
    assert await store.known_states(["a", "b", "c"]) == {
        "a": RecordState("a", "success", "2026-01-01T00:00:00Z"),
        "b": RecordState("b", "success", "2026-01-02T00:00:00Z"),
        "c": RecordState("c", "pending", "2026-01-01T00:00:00Z"),
    }


async def test_known_states_of_many_ids_at_once(store: Store) -> None:
    states = [record(f"r{i:04d}", "success") for i in range(0, 1200, 2)]
    await store.commit_scan(ScanCommit(states, [], now=1.0))
    asked = [f"r{i:04d}" for i in range(1200)]
    assert await store.known_states(asked) == {s.id: s for s in states}


async def test_pending_records_are_tracked_newest_first_and_removed(store: Store) -> None:
    states = [
        record("a", "pending", "2026-01-01"),
        record("b", "pending", "2026-01-02"),
        record("c", "success", "2026-01-03"),
        record("d", "weird", "2026-01-04"),
        record("e", "failed", "2026-01-05"),
    ]
    await store.commit_scan(ScanCommit(states, [], now=1.0, meta={BASELINE_MARK: "t"}))
    assert [s.id for s in await store.tracked_pending()] == ["d", "b", "a"]
    committed = await store.commit_scan(
        ScanCommit([record("a", "success", "2026-01-01")], [], now=2.0, removed=["b"])
    )
    # missed once: still tracked; missed again at the next scan: gone, not tracked
    assert committed.forgotten == []
    assert [s.id for s in await store.tracked_pending()] == ["d", "b"]
    committed = await store.commit_scan(ScanCommit([], [], now=3.0, removed=["b"]))
    assert committed.forgotten == ["b"]
    assert await store.tracked_pending() == [RecordState("d", "weird", "2026-01-04")]
    # gone is said once
    committed = await store.commit_scan(ScanCommit([], [], now=4.0, removed=["b", "nobody"]))
    assert committed.forgotten == []
    # a gone record keeps its last status: if it comes back, it is compared with that
    assert set(await store.known_states(["a", "b", "c", "zz"])) == {"a", "b", "c"}
    assert (await store.known_states(["b"]))["b"].status == "pending"
    await store.commit_scan(ScanCommit([], [], now=5.0, seen=["b", "nobody"]))
    assert [s.id for s in await store.tracked_pending()] == ["d", "b"]
    assert await store.known_states(["nobody"]) == {}


async def test_a_record_seen_between_two_misses_is_not_gone(store: Store) -> None:
    await store.commit_scan(ScanCommit([record("a")], [], now=1.0, meta={BASELINE_MARK: "t"}))
    await store.commit_scan(ScanCommit([], [], now=2.0, removed=["a"]))
    await store.commit_scan(ScanCommit([], [], now=3.0, seen=["a"]))
    committed = await store.commit_scan(ScanCommit([], [], now=4.0, removed=["a"]))
    assert committed.forgotten == []
    assert [s.id for s in await store.tracked_pending()] == ["a"]
    committed = await store.commit_scan(ScanCommit([], [], now=5.0, removed=["a"]))
    assert committed.forgotten == ["a"] and await store.tracked_pending() == []


async def test_a_record_listed_again_after_one_miss_is_not_gone(store: Store) -> None:
    await store.commit_scan(ScanCommit([record("a")], [], now=1.0))
    await store.commit_scan(ScanCommit([], [], now=2.0, removed=["a"]))
    await store.commit_scan(ScanCommit([record("a")], [], now=3.0))  # its state: seen too
    assert (await store.commit_scan(ScanCommit([], [], now=4.0, removed=["a"]))).forgotten == []
    assert [s.id for s in await store.tracked_pending()] == ["a"]


async def test_records_unseen_by_a_whole_sweep_are_gone_and_can_come_back(store: Store) -> None:
    await store.commit_scan(ScanCommit([record("a"), record("b"), record("c")], [], now=1.0))
    await store.commit_scan(ScanCommit([record("c", "running")], [], now=3.0, seen=["b"]))
    committed = await store.commit_scan(
        ScanCommit([], [], now=5.0, seen=["c"], forget_unseen_before=2.0)
    )
    assert committed.forgotten == ["a"]
    assert [s.id for s in await store.tracked_pending()] in (["b", "c"], ["c", "b"])
    assert (await store.known_states(["a"]))["a"].status == "pending"  # a tombstone
    # gone is said once; the others were seen since
    again = await store.commit_scan(ScanCommit([], [], now=6.0, forget_unseen_before=5.0))
    assert sorted(again.forgotten) == ["b"]
    # a gone record listed again is tracked again, with its new status
    await store.commit_scan(ScanCommit([record("a", "running"), record("b")], [], now=7.0))
    assert {s.id: s.status for s in await store.tracked_pending()} == {
        "a": "running",
        "b": "pending",
        "c": "running",
    }
    # not seen since 5: not "before 5"
    later = await store.commit_scan(ScanCommit([], [], now=8.0, forget_unseen_before=5.0))
    assert later.forgotten == []


async def test_meta_is_set_replaced_and_deleted(store: Store) -> None:
    await store.commit_scan(
        ScanCommit([], [], now=1.0, meta={BASELINE_MARK: "2026-01-01", SWEEP: '{"at": 1}'})
    )
    assert await store.baseline_done()
    assert await store.get_meta(BASELINE_MARK) == "2026-01-01"
    assert await store.get_meta(SWEEP) == '{"at": 1}'
    assert await store.get_meta(BASELINE_TIES) is None
    await store.commit_scan(
        ScanCommit([], [], now=2.0, meta={SWEEP: None, BASELINE_TIES: '["r1"]', "absent": None})
    )
    assert await store.get_meta(SWEEP) is None
    assert await store.get_meta(BASELINE_TIES) == '["r1"]'
    assert await store.get_meta(BASELINE_MARK) == "2026-01-01"  # keys not named are kept
    await store.commit_scan(ScanCommit([], [], now=3.0, meta={BASELINE_MARK: "2026-02-02"}))
    assert await store.get_meta(BASELINE_MARK) == "2026-02-02"
    await store.commit_scan(ScanCommit([], [], now=4.0, meta={BASELINE_MARK: None}))
    assert not await store.baseline_done()


async def test_newest_created_at_is_the_latest_of_all_records(store: Store) -> None:
    await store.commit_scan(
        ScanCommit(
            [
                record("a", "success", "2026-01-02T00:00:00.500Z"),
                record("b", "pending", "2026-01-01T00:00:00Z"),
            ],
            [],
            now=1.0,
        )
    )
    assert await store.newest_created_at() == "2026-01-02T00:00:00.500Z"
    await store.commit_scan(
        ScanCommit([record("c", "pending", "2026-01-03T00:00:00Z")], [], now=2.0)
    )
    assert await store.newest_created_at() == "2026-01-03T00:00:00Z"
    await store.commit_scan(
        ScanCommit([record("a", "failed", "2026-01-02T00:00:00.500Z")], [], now=3.0)
    )
    assert await store.newest_created_at() == "2026-01-03T00:00:00Z"


async def test_a_commit_records_events_with_their_deliveries(store: Store) -> None:
    committed = await store.commit_scan(
        ScanCommit(
            [record("r1", "success"), record("r2")],
            [(event(1, "r1"), ["a", "b"]), (event(2, "r2", CREATED), []), (event(3, "r3"), ["b"])],
            now=10.0,
        )
    )
    assert committed.deliveries == 3
    assert committed.recorded == frozenset({"evt_1", "evt_2", "evt_3"})
    assert committed.forgotten == []
    assert [e.id for e in await store.list_events() or []] == ["evt_3", "evt_2", "evt_1"]
    views = await store.list_deliveries()
    assert sorted((v.event_id, v.subscriber_id) for v in views) == [
        ("evt_1", "a"),
        ("evt_1", "b"),
        ("evt_3", "b"),
    ]
    assert all(v.state is DeliveryState.PENDING and v.next_attempt_at == 10.0 for v in views)
    assert all(v.attempts == 0 and v.history == () for v in views)
    await assert_counts(store, {DeliveryState.PENDING: 3})


async def test_an_event_id_recorded_twice_is_never_delivered_twice(store: Store) -> None:
    first = await store.commit_scan(ScanCommit([], [(event(1), ["a", "b"])], now=1.0))
    assert first.deliveries == 2 and first.recorded == {"evt_1"}
    # again, even for another subscriber, in a later scan or twice in the same one
    again = await store.commit_scan(
        ScanCommit([], [(event(1), ["a", "c"]), (event(2), ["a"]), (event(2), ["a"])], now=2.0)
    )
    assert again.deliveries == 1 and again.recorded == {"evt_2"}
    views = await store.list_deliveries()
    assert sorted((v.event_id, v.subscriber_id) for v in views) == [
        ("evt_1", "a"),
        ("evt_1", "b"),
        ("evt_2", "a"),
    ]
    assert [e.id for e in await store.list_events() or []] == ["evt_2", "evt_1"]
    # delivered, then recorded again: still not sent again
    got = await store.claim_due(now=3.0, limit=10, lease_s=60, subscribers=["a", "b"])
    assert sorted((d.event.id, d.subscriber_id) for d in got) == [("evt_1", "a"), ("evt_1", "b")]
    later = await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=4.0))
    assert later.deliveries == 0 and later.recorded == frozenset()
    await assert_counts(store, {DeliveryState.PENDING: 3})


async def test_events_come_back_exactly_as_stored(store: Store) -> None:
    data = {
        "id": "r1",
        "size": 2**70,
        "ratio": float("inf"),
        "tiny": 5e-324,
        "name": 'réunion "q" ✓\n\t\\',
        "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
    }
    at = 1_764_070_440.1234567  # more digits than SQLite's JSON numbers keep
    stored = Event("evt_x", COMPLETED, "r1", at, None, data)
    with_previous = Event("evt_y", COMPLETED, "r2", 0.1 + 0.2, "pending ✓", {})
    await enqueue(store, 1.0, stored, with_previous)
    claimed = await store.claim_due(now=1.0, limit=5, lease_s=60, subscribers=["a"])
    assert [d.event for d in claimed] == [stored, with_previous]
    assert [d.event.data for d in claimed] == [data, {}]
    assert claimed[0].event.occurred_at == at
    assert claimed[1].event.occurred_at == 0.1 + 0.2
    listed = await store.list_events() or []
    assert listed == [with_previous, stored] and [e.data for e in listed] == [{}, data]


async def test_a_failed_commit_changes_nothing(store: Store) -> None:
    await store.commit_scan(ScanCommit([record("r0")], [], now=0.5, meta={SWEEP: "kept"}))
    bad = Event("evt_bad", COMPLETED, "r2", 1.0, None, {"x": {1, 2}})  # not JSON
    commit = ScanCommit(
        [record("r1", "success"), record("r2", "success")],
        [(event(1), ["a"]), (bad, ["a"])],
        now=1.0,
        removed=["r0"],
        meta={BASELINE_MARK: "t", SWEEP: None},
    )
    with pytest.raises((TypeError, ValueError, StoreError)):
        await store.commit_scan(commit)
    assert not await store.baseline_done()
    assert await store.get_meta(SWEEP) == "kept"
    assert set(await store.known_states(["r0", "r1", "r2"])) == {"r0"}
    assert await store.list_events() == []
    await assert_counts(store, {})
    # the store goes on: the same scan without the bad event commits, r0 missed once only
    good = await store.commit_scan(
        ScanCommit([record("r1", "success")], [(event(1), ["a"])], now=2.0, removed=["r0"])
    )
    assert good.deliveries == 1 and good.forgotten == []
    assert [s.id for s in await store.tracked_pending()] == ["r0"]
