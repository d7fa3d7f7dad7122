"""The delivery counters (what the gauges read) after every kind of transition, and the
orphaned deliveries of subscribers no longer configured."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.models import Attempt, DeliveryFilter, DeliveryState, Replayed
from bridge.store.base import Store
from tests.contract.conftest import (
    DEAD,
    DONE,
    OpenStore,
    assert_counts,
    enqueue,
    event,
    everything,
    later,
)

P, D, F, ORPH = (
    DeliveryState.PENDING,
    DeliveryState.DELIVERED,
    DeliveryState.FAILED,
    DeliveryState.ORPHANED,
)
OK = Attempt(1.0, 200, 1.0, None, "")


def to_ab(_event_type: str, _record_id: str) -> Sequence[str]:
    return ["a", "b"]


async def test_the_counters_follow_every_transition(open_store: OpenStore) -> None:
    store = await open_store(max_attempts=2)
    await enqueue(store, 0.0, event(1, "r1"), event(2, "r2"), event(3, "r3"), to=("a", "b"))
    await assert_counts(store, {P: 6})
    held = {
        (d.subscriber_id, d.event.id): d
        for d in await store.claim_due(now=0.0, limit=6, lease_s=10, subscribers=["a", "b"])
    }
    assert len(held) == 6
    await assert_counts(store, {P: 6})  # a claim changes no state
    assert await store.finish_attempt(held["a", "evt_1"], OK, DONE)
    assert await store.finish_attempt(held["b", "evt_1"], OK, DEAD)
    assert await store.finish_attempt(held["a", "evt_2"], OK, later(100.0))
    assert await store.release(held["b", "evt_2"], now=0.0)
    await assert_counts(store, {P: 4, D: 1, F: 1})
    # leases of evt_3 run out: a lost attempt each (1 of 2), still pending
    got = await store.claim_due(now=10.0, limit=10, lease_s=10, subscribers=["a", "b"])
    assert sorted((d.subscriber_id, d.event.id) for d in got) == [
        ("a", "evt_3"),
        ("b", "evt_2"),
        ("b", "evt_3"),
    ]
    await assert_counts(store, {P: 4, D: 1, F: 1})
    # and again: evt_3's are dead now, b's evt_2 has one attempt left
    [last] = await store.claim_due(now=20.0, limit=10, lease_s=10, subscribers=["a", "b"])
    assert (last.subscriber_id, last.event.id, last.attempts) == ("b", "evt_2", 1)
    await assert_counts(store, {P: 2, D: 1, F: 3})
    # retries: a dead letter is pending again; a delivered or pending one changes nothing
    ids = {(v.subscriber_id, v.event_id): v.id for v in await everything(store)}
    assert await store.retry(ids["b", "evt_1"], now=21.0) is F
    assert await store.retry(ids["a", "evt_1"], now=21.0) is D
    assert await store.retry(ids["a", "evt_2"], now=21.0) is P
    await assert_counts(store, {P: 3, D: 1, F: 2})
    # a replay: the delivered one and the dead letters go again
    replayed = await store.replay(since=0.0, event_type=None, targets=to_ab, now=22.0)
    assert replayed == Replayed(events=3, deliveries=3, unmatched=0, already_pending=3)
    await assert_counts(store, {P: 6})
    # b is no longer configured: its pending deliveries, leased or not, are set aside
    assert await store.reconcile_subscribers(["a"], now=23.0) == (3, 0)
    await assert_counts(store, {P: 3, ORPH: 3})
    assert await store.retry(ids["b", "evt_1"], now=24.0) is ORPH  # left alone
    await assert_counts(store, {P: 3, ORPH: 3})
    for d in await store.claim_due(now=30.0, limit=10, lease_s=10, subscribers=["a", "b"]):
        assert d.subscriber_id == "a"
        assert await store.finish_attempt(d, OK, DONE)
    await assert_counts(store, {D: 3, ORPH: 3})
    assert await store.reconcile_subscribers(["a", "b"], now=31.0) == (0, 3)
    await assert_counts(store, {D: 3, P: 3})
    # retention: the delivered ones go, then (delivered too) the others
    while await store.purge(now=1000.0, retention_s=100.0, batch=2) >= 2:
        pass
    await assert_counts(store, {P: 3})
    for d in await store.claim_due(now=1000.0, limit=10, lease_s=10, subscribers=["b"]):
        assert await store.finish_attempt(d, Attempt(1000.0, 200, 1.0, None, ""), DONE)
    await assert_counts(store, {D: 3})
    while await store.purge(now=2000.0, retention_s=100.0, batch=2) >= 2:
        pass
    await assert_counts(store, {})


async def test_a_removed_subscribers_deliveries_are_set_aside_and_come_back(
    store: Store,
) -> None:
    await enqueue(store, 0.0, event(1, "r1"), event(2, "r2"), to=("a", "b"))
    [first] = await store.claim_due(now=1.0, limit=1, lease_s=60, subscribers=["b"])
    assert await store.finish_attempt(first, OK, DONE)
    assert await store.reconcile_subscribers(["a", "c"], now=2.0) == (1, 0)
    await assert_counts(store, {P: 2, D: 1, ORPH: 1})
    assert (await store.counts_by_subscriber())["b"] == {P: 0, D: 1, F: 0, ORPH: 1}
    [orphan] = await store.list_deliveries(where=DeliveryFilter(state=ORPH))
    assert (orphan.subscriber_id, orphan.event_id, orphan.next_attempt_at) == ("b", "evt_2", None)
    # never claimed, never due
    assert await store.claim_due(now=9.0, limit=10, lease_s=60, subscribers=["b"]) == []
    assert await store.claim_lanes(now=9.0, lease_s=60, rooms=[("b", 10)]) == []
    assert await store.next_due_at(["b"]) is None
    # a replay names configured subscribers only: the orphan stays put
    await store.replay(since=0.0, event_type=None, targets=lambda _t, _r: ["a"], now=3.0)
    await assert_counts(store, {P: 2, D: 1, ORPH: 1})
    assert await store.reconcile_subscribers(["a"], now=4.0) == (0, 0)
    # configured again: pending, due now, with the attempts it had
    assert await store.reconcile_subscribers(["a", "b"], now=5.0) == (0, 1)
    assert await store.next_due_at(["b"]) == 5.0
    assert await store.claim_due(now=4.9, limit=10, lease_s=60, subscribers=["b"]) == []
    [back] = await store.claim_due(now=5.0, limit=10, lease_s=60, subscribers=["b"])
    assert back.event.id == "evt_2" and back.attempts == 0
    await assert_counts(store, {P: 3, D: 1})
    assert await store.reconcile_subscribers(["a", "b"], now=6.0) == (0, 0)


async def test_an_orphaned_delivery_keeps_its_attempts_and_its_holder_is_fenced_off(
    store: Store,
) -> None:
    await enqueue(store, 0.0, event(1))
    [d] = await store.claim_due(now=0.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.finish_attempt(d, OK, later(5.0))
    [d] = await store.claim_due(now=5.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.reconcile_subscribers([], now=6.0) == (1, 0)
    # the attempt under way when the subscriber went is not recorded
    assert not await store.finish_attempt(d, OK, DONE)
    [view] = await store.list_deliveries()
    assert (view.state, view.attempts, view.history) == (ORPH, 1, (OK,))
    assert await store.reconcile_subscribers(["a"], now=7.0) == (0, 1)
    [back] = await store.claim_lanes(now=7.0, lease_s=60, rooms=[("a", 1)])
    assert (back.id, back.attempts) == (d.id, 1)


async def test_a_replay_to_a_returning_subscriber_takes_its_orphans_back(store: Store) -> None:
    await enqueue(store, 0.0, event(1), to=("b",))
    assert await store.reconcile_subscribers([], now=1.0) == (1, 0)
    replayed = await store.replay(since=0.0, event_type=None, targets=lambda _t, _r: ["b"], now=2.0)
    assert replayed.deliveries == 1
    await assert_counts(store, {P: 1})
    [d] = await store.claim_due(now=2.0, limit=10, lease_s=60, subscribers=["b"])
    assert d.event.id == "evt_1"
