"""An operator's filter of deliveries (`DeliveryFilter`): the listing by state, subscriber,
event type, record and when the delivery was queued (`since` in, `until` out), alone and
together, paged; the bulk retry of the dead letters it matches; events of one record."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge.models import (
    ALL_DELIVERIES,
    COMPLETED,
    CREATED,
    FAILED_EVENT,
    Attempt,
    DeliveryFilter,
    DeliveryState,
    DeliveryView,
)
from bridge.store.base import Store
from tests.contract.conftest import DEAD, DONE, assert_counts, enqueue, event, everything

CONFIGURED = ["a", "b", "c"]  # the subscribers of `scenario`
PENDING, DELIVERED = DeliveryState.PENDING, DeliveryState.DELIVERED
FAILED, ORPHANED = DeliveryState.FAILED, DeliveryState.ORPHANED


def tried(at: float) -> Attempt:
    return Attempt(at, 500, 2.0, "HTTP 500", "no")


async def scenario(store: Store) -> dict[str, DeliveryView]:
    """Deliveries by "<subscriber><event n>", newest first:

    c5 orphaned (queued at 40, r2, completed)   a4 failed (30, r3, completed)
    b3 pending (20, r1, failed)                 a3 failed (20, r1, failed)
    b2 delivered (10, r2, created)              a2 failed (10, r2, created)
    b1 failed (10, r1, completed)               a1 delivered (10, r1, completed)
    """
    await enqueue(store, 10.0, event(1, "r1"), event(2, "r2", CREATED), to=("a", "b"))
    await enqueue(store, 20.0, event(3, "r1", FAILED_EVENT), to=("a", "b"))
    await enqueue(store, 30.0, event(4, "r3"), to=("a",))
    outcome = {"a1": DONE, "b1": DEAD, "a2": DEAD, "b2": DONE, "a4": DEAD, "a3": DEAD}
    for now in (30.0, 31.0):  # r1's second event waits for its first (the order rule)
        held = await store.claim_due(now=now, limit=10, lease_s=60, subscribers=["a", "b"])
        for d in held:
            key = d.subscriber_id + d.event.id.removeprefix("evt_")
            if key in outcome:
                assert await store.finish_attempt(d, tried(now + 0.5), outcome[key])
            else:
                assert await store.release(d, now=now + 0.5)
    await enqueue(store, 40.0, event(5, "r2"), to=("c",))
    assert await store.reconcile_subscribers(["a", "b"], now=41.0) == (1, 0)
    views = {v.subscriber_id + v.event_id.removeprefix("evt_"): v for v in await everything(store)}
    assert {k: v.state for k, v in views.items()} == {
        "c5": ORPHANED,
        "a4": FAILED,
        "b3": PENDING,
        "a3": FAILED,
        "b2": DELIVERED,
        "a2": FAILED,
        "b1": FAILED,
        "a1": DELIVERED,
    }
    return views


async def listed(store: Store, where: DeliveryFilter, **page: int) -> list[str]:
    views = await store.list_deliveries(where=where, **page)
    return [v.subscriber_id + v.event_id.removeprefix("evt_") for v in views]


ALONE = [
    (DeliveryFilter(), ["c5", "a4", "b3", "a3", "b2", "a2", "b1", "a1"]),
    (DeliveryFilter(state=FAILED), ["a4", "a3", "a2", "b1"]),
    (DeliveryFilter(state=PENDING), ["b3"]),
    (DeliveryFilter(state=ORPHANED), ["c5"]),
    (DeliveryFilter(state=DELIVERED), ["b2", "a1"]),
    (DeliveryFilter(subscriber="b"), ["b3", "b2", "b1"]),
    (DeliveryFilter(subscriber="nobody"), []),
    (DeliveryFilter(event_type=COMPLETED), ["c5", "a4", "b1", "a1"]),
    (DeliveryFilter(event_type=FAILED_EVENT), ["b3", "a3"]),
    (DeliveryFilter(event_type="bridge.none"), []),
    (DeliveryFilter(record_id="r1"), ["b3", "a3", "b1", "a1"]),
    (DeliveryFilter(record_id="r2"), ["c5", "b2", "a2"]),
    (DeliveryFilter(record_id="r"), []),  # exact, not a prefix
    (DeliveryFilter(record_id="R1"), []),
    (DeliveryFilter(since=20.0), ["c5", "a4", "b3", "a3"]),  # since: included
    (DeliveryFilter(since=20.5), ["c5", "a4"]),
    (DeliveryFilter(since=40.5), []),
    (DeliveryFilter(until=20.0), ["b2", "a2", "b1", "a1"]),  # until: excluded
    (DeliveryFilter(until=20.5), ["b3", "a3", "b2", "a2", "b1", "a1"]),
    (DeliveryFilter(until=10.0), []),
    (DeliveryFilter(since=20.0, until=30.0), ["b3", "a3"]),
    (DeliveryFilter(since=30.0, until=30.0), []),
    (DeliveryFilter(since=30.0, until=30.001), ["a4"]),
]


async def test_each_field_alone_and_the_time_bounds(store: Store) -> None:
    await scenario(store)
    for where, expected in ALONE:
        assert await listed(store, where) == expected, where
    assert await listed(store, ALL_DELIVERIES) == ALONE[0][1]


TOGETHER = [
    (DeliveryFilter(state=FAILED, subscriber="a"), ["a4", "a3", "a2"]),
    (DeliveryFilter(state=FAILED, subscriber="b"), ["b1"]),
    (DeliveryFilter(state=FAILED, event_type=COMPLETED), ["a4", "b1"]),
    (DeliveryFilter(state=FAILED, record_id="r1"), ["a3", "b1"]),
    (DeliveryFilter(state=PENDING, record_id="r1", subscriber="b"), ["b3"]),
    (DeliveryFilter(state=PENDING, record_id="r1", subscriber="a"), []),
    (DeliveryFilter(subscriber="a", record_id="r1", event_type=COMPLETED), ["a1"]),
    (DeliveryFilter(subscriber="a", since=10.0, until=30.0, state=FAILED), ["a3", "a2"]),
    (DeliveryFilter(event_type=COMPLETED, since=30.0), ["c5", "a4"]),
    (DeliveryFilter(record_id="r2", until=40.0), ["b2", "a2"]),
    (DeliveryFilter(record_id="r2", event_type=COMPLETED), ["c5"]),
    (DeliveryFilter(record_id="r3", event_type=CREATED), []),
    (
        DeliveryFilter(
            state=FAILED,
            subscriber="a",
            event_type=FAILED_EVENT,
            record_id="r1",
            since=20.0,
            until=20.5,
        ),
        ["a3"],
    ),
]


async def test_fields_together(store: Store) -> None:
    await scenario(store)
    for where, expected in TOGETHER:
        assert await listed(store, where) == expected, where


@pytest.mark.parametrize("size", [1, 2, 3])
async def test_paging_under_a_filter(store: Store, size: int) -> None:
    views = await scenario(store)
    for where, expected in ALONE + TOGETHER:
        found: list[str] = []
        before: int | None = None
        while page := await store.list_deliveries(where=where, limit=size, before=before):
            assert len(page) <= size
            found += [v.subscriber_id + v.event_id.removeprefix("evt_") for v in page]
            before = page[-1].id
        assert found == expected, where
    failed = DeliveryFilter(state=FAILED)
    assert await listed(store, failed, before=views["a3"].id) == ["a2", "b1"]
    assert await listed(store, failed, before=views["a3"].id, limit=1) == ["a2"]
    assert await listed(store, failed, before=views["b3"].id) == ["a3", "a2", "b1"]
    assert await listed(store, failed, before=views["b1"].id) == []
    assert await listed(store, DeliveryFilter(record_id="r1"), before=views["b3"].id) == [
        "a3",
        "b1",
        "a1",
    ]


async def test_the_listing_keeps_attempts_and_a_stored_subscriber_with_a_nul(store: Store) -> None:
    views = await scenario(store)
    [a3] = await store.list_deliveries(
        where=DeliveryFilter(state=FAILED, record_id="r1", subscriber="a")
    )
    assert a3 == views["a3"] and a3.history == (tried(31.5),)
    await enqueue(store, 50.0, event(9, "r9"), to=("s\x00",))
    [found] = await store.list_deliveries(where=DeliveryFilter(subscriber="s\x00"))
    assert found.event_id == "evt_9"


async def test_retry_failed_retries_only_the_matching_dead_letters(store: Store) -> None:
    views = await scenario(store)
    untouched = {k: v for k, v in views.items() if k not in ("a2", "a3", "a4")}
    # the filter's state is ignored: only dead letters are retried
    where = DeliveryFilter(subscriber="a", state=DELIVERED)
    assert await store.retry_failed(where, now=50.0, subscribers=CONFIGURED) == 3
    for key, view in untouched.items():  # pending, delivered, orphaned, another subscriber's
        assert await store.get_delivery(view.id) == view, key
    for key in ("a2", "a3", "a4"):
        now = await store.get_delivery(views[key].id)
        assert now is not None
        assert (now.state, now.attempts, now.next_attempt_at, now.updated_at) == (
            PENDING,
            1,
            50.0,
            50.0,
        )
        assert (now.created_at, now.history) == (views[key].created_at, views[key].history)
    await assert_counts(store, {PENDING: 4, DELIVERED: 2, FAILED: 1, ORPHANED: 1})
    assert await store.retry_failed(where, now=51.0, subscribers=CONFIGURED) == 0  # none left
    await assert_counts(store, {PENDING: 4, DELIVERED: 2, FAILED: 1, ORPHANED: 1})
    # due now, each on a fresh schedule (its attempts so far do not count against it)
    assert await store.claim_due(now=49.0, limit=10, lease_s=60, subscribers=["a"]) == []
    got = await store.claim_due(now=50.0, limit=10, lease_s=60, subscribers=["a"])
    assert sorted((d.event.id, d.attempts, d.schedule_from) for d in got) == [
        ("evt_2", 1, 1),
        ("evt_3", 1, 1),
        ("evt_4", 1, 1),
    ]
    # the last dead letter, with no filter at all
    assert await store.retry_failed(ALL_DELIVERIES, now=60.0, subscribers=CONFIGURED) == 1
    assert (await store.get_delivery(views["b1"].id) or views["b1"]).state is PENDING
    await assert_counts(store, {PENDING: 5, DELIVERED: 2, ORPHANED: 1})


async def test_retry_failed_leaves_the_dead_letters_of_a_removed_subscriber(
    store: Store,
) -> None:
    views = await scenario(store)
    # "b" is no longer configured: its dead letter stays failed (no lane would send it)
    assert await store.retry_failed(ALL_DELIVERIES, now=50.0, subscribers=["a", "c"]) == 3
    assert await store.get_delivery(views["b1"].id) == views["b1"]
    for key in ("a2", "a3", "a4"):
        assert (await store.get_delivery(views[key].id) or views[key]).state is PENDING
    await assert_counts(store, {PENDING: 4, DELIVERED: 2, FAILED: 1, ORPHANED: 1})
    # a filter naming it retries nothing either, nor does a retry with no subscriber
    where = DeliveryFilter(subscriber="b")
    assert await store.retry_failed(where, now=51.0, subscribers=["a"]) == 0
    assert await store.retry_failed(ALL_DELIVERIES, now=51.0, subscribers=[]) == 0
    assert await store.get_delivery(views["b1"].id) == views["b1"]
    # configured again: retried
    assert await store.retry_failed(where, now=52.0, subscribers=["a", "b"]) == 1
    assert (await store.get_delivery(views["b1"].id) or views["b1"]).state is PENDING


RETRIED = [
    (DeliveryFilter(record_id="r1"), {"a3", "b1"}),
    (DeliveryFilter(event_type=CREATED), {"a2"}),
    (DeliveryFilter(event_type=COMPLETED, subscriber="a"), {"a4"}),
    (DeliveryFilter(since=20.0), {"a3", "a4"}),
    (DeliveryFilter(until=20.0), {"a2", "b1"}),
    (DeliveryFilter(since=20.0, until=30.0), {"a3"}),
    (DeliveryFilter(record_id="r2", since=30.0), set()),  # c5: orphaned, not failed
    (DeliveryFilter(record_id="r9"), set()),
    (DeliveryFilter(subscriber="c"), set()),
    (DeliveryFilter(state=FAILED, subscriber="b"), {"b1"}),
]


@pytest.mark.parametrize(("where", "expected"), RETRIED, ids=range(len(RETRIED)))
async def test_retry_failed_by_each_field(
    store: Store, where: DeliveryFilter, expected: set[str]
) -> None:
    views = await scenario(store)
    assert await store.retry_failed(where, now=50.0, subscribers=CONFIGURED) == len(expected)
    for key, view in views.items():
        now = await store.get_delivery(view.id)
        if key in expected:
            assert now == replace(view, state=PENDING, next_attempt_at=50.0, updated_at=50.0)
        else:
            assert now == view, key
    failed = 4 - len(expected)
    await assert_counts(
        store, {PENDING: 1 + len(expected), DELIVERED: 2, FAILED: failed, ORPHANED: 1}
    )
    assert await listed(store, replace(where, state=FAILED)) == []


async def test_events_of_one_record(store: Store) -> None:
    await scenario(store)
    await enqueue(store, 60.0, event("s", "subscriber:a", at=70.0), to=())

    async def ids(
        record_id: str, event_type: str | None = None, before: str | None = None
    ) -> list[str] | None:
        found = await store.list_events(record_id=record_id, event_type=event_type, before=before)
        return None if found is None else [e.id for e in found]

    assert await ids(record_id="r1") == ["evt_3", "evt_1"]
    assert await ids(record_id="r2") == ["evt_5", "evt_2"]
    assert await ids(record_id="r") == []
    assert await ids(record_id="subscriber:a") == ["evt_s"]
    assert await ids(record_id="r1", event_type=COMPLETED) == ["evt_1"]
    assert await ids(record_id="r2", before="evt_5") == ["evt_2"]
    assert await ids(record_id="r2", before="evt_4") == ["evt_2"]
    assert await ids(record_id="r2", before="evt_2") == []
    assert await ids(record_id="r2", before="evt_nope") is None
    [one] = await store.list_events(record_id="r1", limit=1) or []
    assert one == event(3, "r1", FAILED_EVENT)
