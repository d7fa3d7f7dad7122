"""Claims: what is due, oldest first, each record's events in order per subscriber, lanes and
their caps, and leases that keep a delivery from being given out twice."""

from __future__ import annotations

import asyncio

from bridge.models import DeliveryFilter, DeliveryState
from bridge.store.base import ScanCommit, Store
from tests.contract.conftest import (
    DEAD,
    DONE,
    OpenStore,
    attempt,
    enqueue,
    event,
    later,
)


async def test_a_claim_leases_and_a_second_claim_gets_nothing(store: Store) -> None:
    await store.commit_scan(ScanCommit([], [(event(1), ["a"]), (event(2, "r2"), ["b"])], now=10.0))
    first = await store.claim_due(now=10.0, limit=10, lease_s=60, subscribers=["a", "b"])
    assert sorted((d.subscriber_id, d.event.id) for d in first) == [("a", "evt_1"), ("b", "evt_2")]
    assert all(d.attempts == 0 and d.schedule_from == 0 and d.lease_token for d in first)
    assert await store.claim_due(now=20.0, limit=10, lease_s=60, subscribers=["a", "b"]) == []
    assert await store.claim_lanes(now=20.0, lease_s=60, rooms=[("a", 5), ("b", 5)]) == []
    assert await store.next_due_at(["a", "b"]) == 70.0
    # the lease expires (a crashed worker): the delivery is claimable again
    again = await store.claim_due(now=70.0, limit=10, lease_s=60, subscribers=["a"])
    assert [d.event.id for d in again] == ["evt_1"]
    assert again[0].id == next(d.id for d in first if d.subscriber_id == "a")
    # the first worker's late result is refused; the new holder's is kept
    stale = next(d for d in first if d.subscriber_id == "a")
    assert not await store.finish_attempt(stale, attempt(72.0, 200), DONE)
    assert await store.finish_attempt(again[0], attempt(72.0, 200), DONE)
    [view] = await store.list_deliveries(where=DeliveryFilter(subscriber="a"))
    assert view.state is DeliveryState.DELIVERED


async def test_a_claim_takes_due_deliveries_of_its_subscribers_up_to_its_limit(
    store: Store,
) -> None:
    await enqueue(store, 10.0, *(event(n, f"r{n}") for n in range(5)))
    await enqueue(store, 10.0, event(9), to=("off",))
    assert await store.claim_due(now=9.0, limit=10, lease_s=1, subscribers=["a"]) == []
    assert await store.claim_lanes(now=9.0, lease_s=1, rooms=[("a", 10)]) == []
    assert await store.claim_due(now=10.0, limit=0, lease_s=1, subscribers=["a"]) == []
    assert await store.claim_due(now=10.0, limit=10, lease_s=1, subscribers=[]) == []
    assert await store.claim_lanes(now=10.0, lease_s=1, rooms=[]) == []
    assert await store.claim_lanes(now=10.0, lease_s=1, rooms=[("a", 0), ("nobody", 3)]) == []
    got = await store.claim_due(now=10.0, limit=3, lease_s=1, subscribers=["a", "nobody"])
    assert [d.event.id for d in got] == ["evt_0", "evt_1", "evt_2"]
    assert {d.subscriber_id for d in got} == {"a"}
    assert len({d.id for d in got}) == 3
    [off] = await store.claim_lanes(now=10.0, lease_s=1, rooms=[("off", 5)])
    assert (off.subscriber_id, off.event.id) == ("off", "evt_9")


async def test_the_oldest_due_goes_first(store: Store) -> None:
    await enqueue(store, 0.0, *(event(n, f"r{n}") for n in range(4)), to=("a", "b"))
    held = await store.claim_lanes(now=0.0, lease_s=60, rooms=[("a", 4), ("b", 4)])
    due = {"a": [40.0, 20.0, 30.0, 20.0], "b": [15.0, 25.0, 5.0, 35.0]}
    for d in held:
        n = int(d.event.id.removeprefix("evt_"))
        assert await store.finish_attempt(d, attempt(1.0), later(due[d.subscriber_id][n]))
    assert await store.next_due_at(["a"]) == 20.0
    assert await store.next_due_at(["a", "b"]) == 5.0
    # across subscribers: by due time, then in the order they were recorded
    got = await store.claim_due(now=50.0, limit=4, lease_s=60, subscribers=["a", "b"])
    assert [(d.subscriber_id, d.event.id) for d in got] == [
        ("b", "evt_2"),
        ("b", "evt_0"),
        ("a", "evt_1"),
        ("a", "evt_3"),
    ]
    for d in got:
        assert await store.release(d, now=50.0 + due[d.subscriber_id][int(d.event.id[-1])])
    # each lane: its own oldest first
    lanes = await store.claim_lanes(now=200.0, lease_s=60, rooms=[("a", 3), ("b", 2)])
    by_lane: dict[str, list[str]] = {}
    for d in lanes:
        by_lane.setdefault(d.subscriber_id, []).append(d.event.id)
    assert by_lane == {"a": ["evt_2", "evt_0", "evt_1"], "b": ["evt_1", "evt_3"]}


async def test_a_later_event_of_a_record_waits_for_the_earlier_one(store: Store) -> None:
    await enqueue(store, 10.0, event(1, "r1"), to=("a", "b"))
    await enqueue(store, 11.0, event(2, "r1"), event(3, "r2"), to=("a", "b", "c"))
    got_a = await store.claim_due(now=11.0, limit=10, lease_s=60, subscribers=["a"])
    # r1's second event waits; another record is not held up
    assert [d.event.id for d in got_a] == ["evt_1", "evt_3"]
    assert await store.claim_due(now=11.0, limit=10, lease_s=60, subscribers=["a"]) == []
    # nor is another subscriber, nor one that never had the earlier event
    got_b = await store.claim_lanes(now=11.0, lease_s=60, rooms=[("b", 10), ("c", 10)])
    assert sorted((d.subscriber_id, d.event.id) for d in got_b) == [
        ("b", "evt_1"),
        ("b", "evt_3"),
        ("c", "evt_2"),
        ("c", "evt_3"),
    ]
    # a's first event fails, due again at 50: the second still waits, and is not due
    first_a = got_a[0]
    assert await store.finish_attempt(first_a, attempt(12.0), later(50.0))
    assert await store.next_due_at(["a"]) == 50.0
    assert await store.claim_due(now=49.0, limit=10, lease_s=60, subscribers=["a"]) == []
    [again] = await store.claim_lanes(now=50.0, lease_s=60, rooms=[("a", 10)])
    assert again.event.id == "evt_1"
    assert await store.claim_lanes(now=50.0, lease_s=60, rooms=[("a", 10)]) == []
    # delivered: the next one goes
    assert await store.finish_attempt(again, attempt(51.0, 200), DONE)
    assert await store.next_due_at(["a"]) == 11.0
    [second_a] = await store.claim_due(now=51.0, limit=10, lease_s=60, subscribers=["a"])
    assert second_a.event.id == "evt_2"
    # b: still waiting for its first one; dead-lettered, the next one goes
    assert await store.claim_lanes(now=51.0, lease_s=60, rooms=[("b", 10)]) == []
    first_b = next(d for d in got_b if d.subscriber_id == "b" and d.event.id == "evt_1")
    assert await store.finish_attempt(first_b, attempt(52.0), DEAD)
    [second_b] = await store.claim_lanes(now=52.0, lease_s=60, rooms=[("b", 10)])
    assert second_b.event.id == "evt_2"


async def test_attempts_are_recorded_and_the_retry_time_respected(store: Store) -> None:
    await enqueue(store, 10.0, event(1))
    [d] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.finish_attempt(d, attempt(10.0), later(15.0))
    assert await store.next_due_at(["a"]) == 15.0
    assert await store.claim_due(now=14.9, limit=1, lease_s=60, subscribers=["a"]) == []
    [d2] = await store.claim_due(now=15.0, limit=1, lease_s=60, subscribers=["a"])
    assert d2.id == d.id and d2.attempts == 1 and d2.event == d.event
    assert d2.lease_token != d.lease_token
    assert await store.finish_attempt(d2, attempt(15.0, 200), DONE)
    [view] = await store.list_deliveries(where=DeliveryFilter(subscriber="a"))
    assert view.state is DeliveryState.DELIVERED and view.attempts == 2
    assert view.next_attempt_at is None
    assert [a.status_code for a in view.history] == [500, 200]
    assert await store.list_deliveries(where=DeliveryFilter(state=DeliveryState.FAILED)) == []
    assert await store.next_due_at(["a"]) is None
    assert await store.claim_due(now=99.0, limit=1, lease_s=60, subscribers=["a"]) == []


async def test_a_dead_letter_is_not_claimed(store: Store) -> None:
    await enqueue(store, 10.0, event(1))
    [d] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.finish_attempt(d, attempt(10.0), DEAD)
    [view] = await store.list_deliveries()
    assert (view.state, view.attempts, view.next_attempt_at) == (DeliveryState.FAILED, 1, None)
    assert await store.next_due_at(["a"]) is None
    assert await store.claim_lanes(now=999.0, lease_s=60, rooms=[("a", 5)]) == []


async def test_next_due_at_is_the_later_of_the_next_attempt_and_the_lease(store: Store) -> None:
    assert await store.next_due_at([]) is None
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2"))
    assert await store.next_due_at(["a"]) == 10.0
    assert await store.next_due_at(["b"]) is None
    [one] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.next_due_at(["a"]) == 10.0  # the other one
    [two] = await store.claim_due(now=10.0, limit=1, lease_s=30, subscribers=["a"])
    assert await store.next_due_at(["a"]) == 40.0  # leased: due when the lease runs out
    assert await store.finish_attempt(two, attempt(11.0), later(100.0))
    assert await store.next_due_at(["a"]) == 70.0
    assert await store.finish_attempt(one, attempt(12.0, 200), DONE)
    assert await store.next_due_at(["a"]) == 100.0
    assert await store.next_due_at(["a", "b"]) == 100.0


async def test_lanes_are_claimed_each_up_to_its_room_however_many_there_are(
    store: Store,
) -> None:
    subs = [f"s{i:03d}" for i in range(150)]
    await enqueue(store, 10.0, *(event(n, f"r{n}") for n in range(3)), to=subs)
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
    assert len({d.id for d in [*got, *again]}) == 450


async def test_caps_count_every_unexpired_lease_of_a_subscriber(
    store: Store, open_store: OpenStore
) -> None:
    other = await open_store()  # another process on the same store
    await enqueue(store, 0.0, *(event(n, f"r{n}") for n in range(6)), to=("a", "b"))
    got = await store.claim_lanes(now=0.0, lease_s=60, rooms=[("a", 5), ("b", 1)], caps={"a": 2})
    assert sorted((d.subscriber_id, d.event.id) for d in got) == [
        ("a", "evt_0"),
        ("a", "evt_1"),
        ("b", "evt_0"),
    ]
    # the other process's leases count against the cap too, the other subscriber's do not
    [third] = await other.claim_lanes(now=1.0, lease_s=60, rooms=[("a", 5)], caps={"a": 3})
    assert third.event.id == "evt_2"
    assert await other.claim_lanes(now=1.0, lease_s=60, rooms=[("a", 5)], caps={"a": 3}) == []
    assert await store.claim_lanes(now=1.0, lease_s=60, rooms=[("a", 5)], caps={"a": 1}) == []
    # a cap on another subscriber changes nothing for this one
    [fourth] = await store.claim_lanes(now=1.0, lease_s=60, rooms=[("a", 1)], caps={"b": 1})
    assert fourth.event.id == "evt_3"
    # a finished attempt's lease no longer counts
    first = next(d for d in got if d.subscriber_id == "a")
    assert await store.finish_attempt(first, attempt(2.0, 200), DONE)
    [fifth] = await other.claim_lanes(now=2.0, lease_s=60, rooms=[("a", 5)], caps={"a": 4})
    assert fifth.event.id == "evt_4"
    # nor does a lease that ran out
    assert len(await store.claim_lanes(now=100.0, lease_s=60, rooms=[("a", 9)], caps={"a": 2})) == 2


async def test_two_stores_never_claim_the_same_delivery(
    store: Store, open_store: OpenStore
) -> None:
    other = await open_store()
    await enqueue(store, 0.0, *(event(n, f"r{n}") for n in range(40)), to=("a", "b"))
    claims = [
        s.claim_lanes(now=0.0, lease_s=60, rooms=[("a", 7), ("b", 3)])
        for _ in range(3)
        for s in (store, other)
    ] + [s.claim_due(now=0.0, limit=5, lease_s=60, subscribers=["a", "b"]) for s in (store, other)]
    results = await asyncio.gather(*claims)
    results.append(await other.claim_lanes(now=1.0, lease_s=60, rooms=[("a", 80), ("b", 80)]))
    ids = [d.id for got in results for d in got]
    assert len(ids) == len(set(ids)) == 80  # each given out once, and all of them
    assert await store.claim_due(now=1.0, limit=5, lease_s=60, subscribers=["a", "b"]) == []
