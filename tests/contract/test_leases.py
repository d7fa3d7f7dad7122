"""Leases: a claimed delivery whose lease runs out with no outcome counts as an attempt (so one
that kills its worker every time ends dead-lettered), a stale lease holder's result is
refused and changes nothing (fencing), and a delivery handed back unstarted is not counted."""

from __future__ import annotations

import asyncio

import pytest

from bridge.models import (
    DEAD_LETTERED,
    Attempt,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    Event,
    Report,
)
from bridge.store.base import AttemptOutcome, Store
from bridge.store.claims_common import LOST_ATTEMPT
from tests.contract.conftest import DEAD, DONE, OpenStore, attempt, enqueue, event, later

LEASE_S = 30.0
SCHEDULE = (5.0, 300.0, 1800.0)  # a retry schedule: 1 + 3 attempts in all


def lost(at: float) -> Attempt:
    """The attempt counted for a lease that ran out at `at`."""
    return Attempt(at, None, 0.0, LOST_ATTEMPT, "")


async def claim(store: Store, now: float, *, lanes: bool = True) -> list[Delivery]:
    if lanes:
        return await store.claim_lanes(now=now, lease_s=LEASE_S, rooms=[("a", 1)])
    return await store.claim_due(now=now, limit=1, lease_s=LEASE_S, subscribers=["a"])


@pytest.mark.parametrize("lanes", [True, False], ids=["claim_lanes", "claim_due"])
async def test_a_delivery_whose_worker_always_dies_is_dead_lettered_after_every_attempt(
    open_store: OpenStore, lanes: bool
) -> None:
    store = await open_store(max_attempts=1 + len(SCHEDULE))
    await enqueue(store, 0.0, event(1), event(2))
    now, given = 0.0, list[tuple[float, str, int]]()
    for _ in range(12):  # more rounds than attempts: it must stop being given out
        given += [(now, d.event.id, d.attempts) for d in await claim(store, now, lanes=lanes)]
        now += LEASE_S  # the worker died: no finish, no release; the lease runs out
    # each claim saw the attempts counted so far; the record's next event waited for the
    # dead letter (the order rule), then went the same way; then nothing is given out
    assert [(eid, n) for _, eid, n in given] == [
        *(("evt_1", n) for n in range(4)),
        *(("evt_2", n) for n in range(4)),
    ]
    assert given[3][0] == 90.0 and given[4][0] in (120.0, 150.0)
    assert [at for at, _, _ in given[4:]] == [given[4][0] + i * LEASE_S for i in range(4)]
    dead = await store.list_deliveries(where=DeliveryFilter(state=DeliveryState.FAILED))
    assert [(d.event_id, d.attempts, d.next_attempt_at) for d in dead] == [
        ("evt_2", 4, None),
        ("evt_1", 4, None),
    ]
    # each lost attempt is dated when its lease ran out
    assert dead[1].history == tuple(lost(at + LEASE_S) for at, _, _ in given[:4])
    assert dead[0].history == tuple(lost(at + LEASE_S) for at, _, _ in given[4:])
    assert await store.list_deliveries(where=DeliveryFilter(state=DeliveryState.PENDING)) == []
    assert await store.next_due_at(["a"]) is None


async def test_lost_attempts_count_from_where_the_schedule_restarted(
    open_store: OpenStore,
) -> None:
    store = await open_store(max_attempts=2)
    await enqueue(store, 0.0, event(1))
    [d] = await claim(store, 0.0)
    assert await store.finish_attempt(d, attempt(1.0), later(10.0))
    [d] = await claim(store, 10.0)  # its worker dies: the second attempt, the last one
    assert d.attempts == 1
    assert await claim(store, 10.0 + LEASE_S) == []
    [view] = await store.list_deliveries()
    assert (view.state, view.attempts) == (DeliveryState.FAILED, 2)
    # an operator's retry starts the schedule again: two more attempts, numbered on
    assert await store.retry(view.id, now=100.0) is DeliveryState.FAILED
    [d] = await claim(store, 100.0)
    assert (d.attempts, d.schedule_from) == (2, 2)
    [d] = await claim(store, 100.0 + LEASE_S)
    assert (d.attempts, d.schedule_from) == (3, 2)
    assert await claim(store, 100.0 + 2 * LEASE_S) == []
    [view] = await store.list_deliveries()
    assert (view.state, view.attempts) == (DeliveryState.FAILED, 4)
    assert [a.status_code for a in view.history] == [500, None, None, None]


async def test_an_answer_after_a_counted_lost_attempt_continues_the_schedule(
    open_store: OpenStore,
) -> None:
    store = await open_store(max_attempts=1 + len(SCHEDULE))
    await enqueue(store, 0.0, event(1))
    await claim(store, 0.0)
    [again] = await claim(store, LEASE_S)
    assert again.attempts == 1  # the dispatcher numbers this one attempt 2
    assert await store.finish_attempt(again, Attempt(31.0, 500, 1.0, "HTTP 500", ""), later(100.0))
    [view] = await store.list_deliveries()
    assert view.attempts == 2 and [a.status_code for a in view.history] == [None, 500]
    assert view.next_attempt_at == 100.0
    assert await claim(store, 99.0) == []
    [third] = await claim(store, 100.0)
    assert third.attempts == 2  # a recorded attempt released the lease: nothing more counted


async def test_a_delivery_handed_back_unstarted_is_not_counted(open_store: OpenStore) -> None:
    store = await open_store(max_attempts=2)
    await enqueue(store, 0.0, event(1))
    for round_ in range(5):
        [d] = await claim(store, float(round_))
        assert d.attempts == 0
        assert await store.release(d, now=float(round_))
    [view] = await store.list_deliveries()
    assert view.state is DeliveryState.PENDING and view.attempts == 0 and view.history == ()


async def test_a_live_lease_is_not_counted(store: Store) -> None:
    await enqueue(store, 0.0, event(1))
    [d] = await claim(store, 0.0)
    assert await claim(store, LEASE_S - 0.001) == []
    assert await store.claim_due(now=LEASE_S - 0.001, limit=5, lease_s=1, subscribers=["a"]) == []
    [view] = await store.list_deliveries()
    assert view.attempts == 0 and view.history == ()
    assert await store.finish_attempt(d, Attempt(1.0, 200, 1.0, None, ""), DONE)
    [view] = await store.list_deliveries()
    assert view.state is DeliveryState.DELIVERED and view.attempts == 1


async def test_release_hands_a_delivery_back_due_at_once(store: Store) -> None:
    await enqueue(store, 10.0, event(1))
    [d] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    assert await store.release(d, now=12.0)
    assert await store.next_due_at(["a"]) == 12.0
    assert await store.claim_due(now=11.9, limit=1, lease_s=60, subscribers=["a"]) == []
    [again] = await store.claim_due(now=12.0, limit=1, lease_s=60, subscribers=["a"])
    assert again.id == d.id and again.attempts == 0
    # the released copy is fenced off: neither its result nor a second release counts
    assert not await store.finish_attempt(d, attempt(13.0, 200), DONE)
    assert not await store.release(d, now=13.0)
    assert await store.claim_due(now=13.0, limit=1, lease_s=60, subscribers=["a"]) == []
    [view] = await store.list_deliveries()
    assert view.state is DeliveryState.PENDING and view.history == ()


async def test_a_stale_lease_holder_changes_nothing(store: Store) -> None:
    await enqueue(store, 10.0, event(1), event(2, "r2"))
    [stale] = await store.claim_due(now=10.0, limit=1, lease_s=5, subscribers=["a"])
    [other] = await store.claim_due(now=10.0, limit=1, lease_s=60, subscribers=["a"])
    [holder] = await store.claim_due(now=16.0, limit=1, lease_s=60, subscribers=["a"])
    assert holder.id == stale.id and holder.lease_token != stale.lease_token
    before = await store.get_delivery(stale.id)
    assert before is not None
    assert not await store.finish_attempt(stale, attempt(17.0, 200), DONE)
    assert not await store.finish_attempt(stale, attempt(17.0), DEAD)
    assert not await store.release(stale, now=17.0)
    assert await store.get_delivery(stale.id) == before
    assert await store.claim_due(now=17.0, limit=5, lease_s=60, subscribers=["a"]) == []
    # the holder's result counts once; a second result of the same claim does not
    assert await store.finish_attempt(holder, attempt(18.0), later(50.0))
    assert not await store.finish_attempt(holder, attempt(18.5, 200), DONE)
    view = await store.get_delivery(holder.id)
    assert view is not None and view.state is DeliveryState.PENDING
    assert view.history == (lost(15.0), attempt(18.0)) and view.next_attempt_at == 50.0
    # the other delivery (its own lease) was not touched by any of this
    assert await store.finish_attempt(other, attempt(19.0, 200), DONE)


async def test_a_batch_records_each_attempt_exactly_and_refuses_lost_leases(
    store: Store,
) -> None:
    await enqueue(store, 10.0, *(event(n, f"r{n}") for n in range(3)))
    held = await store.claim_due(now=10.0, limit=1, lease_s=5, subscribers=["a"])
    held += await store.claim_due(now=10.0, limit=2, lease_s=60, subscribers=["a"])
    # the first lease expires and another worker takes it: its old holder's result is refused
    [taken] = await store.claim_due(now=16.0, limit=3, lease_s=5, subscribers=["a"])
    assert taken.id == held[0].id
    first = Attempt(10.000123456789, 503, 0.1 + 0.2, "HTTP 503", 'réponse "busy" ✓')
    second = Attempt(11.5, 200, 7.25, None, "")
    third = Attempt(12.0, None, 15000.0, "timed out after 15.0 s", "")
    results = await asyncio.gather(
        store.finish_attempt(held[0], first, later(40.5)),
        store.finish_attempt(held[1], second, DONE),
        store.finish_attempt(held[2], third, AttemptOutcome(DeliveryState.FAILED)),
    )
    assert list(results) == [False, True, True]
    views = {v.id: v for v in await store.list_deliveries(where=DeliveryFilter(subscriber="a"))}
    assert views[held[0].id].state is DeliveryState.PENDING
    # the expired lease counted as an attempt (dated when it ran out); the late result did not
    assert views[held[0].id].history == (lost(15.0),) and taken.attempts == 1
    assert views[held[1].id].state is DeliveryState.DELIVERED
    assert views[held[1].id].history == (second,)
    assert views[held[2].id].state is DeliveryState.FAILED
    assert views[held[2].id].history == (third,) and views[held[2].id].attempts == 1
    # the new holder's result is recorded with the exact values it reported
    assert await store.finish_attempt(taken, first, later(40.5))
    view = await store.get_delivery(taken.id)
    assert view is not None
    assert view.history == (lost(15.0), first) and view.next_attempt_at == 40.5


async def test_a_stale_copy_in_the_same_batch_as_the_lease_holder_is_refused(
    store: Store,
) -> None:
    await enqueue(store, 10.0, event(1))
    [stale] = await store.claim_due(now=10.0, limit=1, lease_s=5, subscribers=["a"])
    [holder] = await store.claim_due(now=16.0, limit=1, lease_s=60, subscribers=["a"])
    results = await asyncio.gather(
        store.finish_attempt(stale, attempt(16.5, 200), DONE),
        store.finish_attempt(holder, attempt(17.0), later(20.0)),
    )
    assert list(results) == [False, True]
    [view] = await store.list_deliveries(where=DeliveryFilter(subscriber="a"))
    # the stale copy's run ended with no outcome recorded: counted once, by the second claim
    assert view.state is DeliveryState.PENDING and view.attempts == 2
    assert view.history == (lost(15.0), attempt(17.0))


async def test_a_lease_taken_by_another_store_fences_this_one(
    store: Store, open_store: OpenStore
) -> None:
    other = await open_store()
    await enqueue(store, 10.0, event(1))
    [mine] = await store.claim_due(now=10.0, limit=1, lease_s=5, subscribers=["a"])
    assert await other.claim_due(now=14.0, limit=1, lease_s=60, subscribers=["a"]) == []
    [theirs] = await other.claim_lanes(now=15.0, lease_s=60, rooms=[("a", 1)])
    assert theirs.id == mine.id and theirs.attempts == 1
    assert not await store.finish_attempt(mine, attempt(16.0, 200), DONE)
    assert await other.finish_attempt(theirs, attempt(16.0, 200), DONE)
    view = await store.get_delivery(mine.id)
    assert view is not None and view.state is DeliveryState.DELIVERED
    assert view.history == (lost(15.0), attempt(16.0, 200))


@pytest.mark.parametrize("lanes", [True, False], ids=["claim_lanes", "claim_due"])
async def test_a_claim_that_dead_letters_a_lost_delivery_stores_its_report(
    open_store: OpenStore, lanes: bool
) -> None:
    store = await open_store(max_attempts=2)
    await enqueue(store, 0.0, event(1), event(2, "r2"), to=("a",))
    asked: dict[int, tuple[Delivery, Attempt]] = {}  # pure: it may be asked again

    def on_dead(delivery: Delivery, tried: Attempt) -> Report | None:
        asked[delivery.id] = (delivery, tried)
        if delivery.event.id == "evt_2":
            return None  # e.g. a `bridge.*` event's: nothing to report
        rid = f"delivery:{delivery.id}"
        data = {"attempts": delivery.attempts + 1, "error": tried.error}
        return Report(
            Event(f"rpt_{delivery.id}", DEAD_LETTERED, rid, tried.attempted_at, None, data),
            ("ops",),
        )

    async def claim_with(now: float) -> list[Delivery]:
        if lanes:
            return await store.claim_lanes(
                now=now, lease_s=LEASE_S, rooms=[("a", 2)], on_dead=on_dead
            )
        return await store.claim_due(
            now=now, limit=2, lease_s=LEASE_S, subscribers=["a"], on_dead=on_dead
        )

    first = await claim_with(0.0)
    assert sorted(d.event.id for d in first) == ["evt_1", "evt_2"]
    again = await claim_with(LEASE_S)  # both leases ran out: a lost attempt each, not the last
    assert [d.attempts for d in again] == [1, 1] and asked == {}
    assert await claim_with(2 * LEASE_S) == []  # and again: their last, dead-lettered
    one = next(d for d in first if d.event.id == "evt_1")
    # asked with the delivery as it was claimed (its event included) and the lost attempt
    assert sorted((d.id, d.event, d.attempts, t) for d, t in asked.values()) == sorted(
        (d.id, d.event, 1, lost(2 * LEASE_S)) for d in first
    )
    assert asked[one.id][0].event.data == one.event.data
    # stored with the dead letter: its event on the feed, a delivery to its target due at once
    [stored] = await store.list_events(record_id=f"delivery:{one.id}") or []
    assert (stored.id, stored.type, stored.occurred_at) == (
        f"rpt_{one.id}",
        DEAD_LETTERED,
        2 * LEASE_S,
    )
    assert stored.data == {"attempts": 2, "error": LOST_ATTEMPT}
    [queued] = await store.list_deliveries(where=DeliveryFilter(subscriber="ops"))
    assert (queued.event_id, queued.state) == (f"rpt_{one.id}", DeliveryState.PENDING)
    assert queued.next_attempt_at is not None and queued.next_attempt_at <= 2 * LEASE_S
    [report] = await store.claim_due(now=2 * LEASE_S, limit=5, lease_s=LEASE_S, subscribers=["ops"])
    assert report.event.id == f"rpt_{one.id}"
    page = await store.events_after(after_seq=None, limit=10)
    assert [e.id for _, e in page.events] == ["evt_1", "evt_2", f"rpt_{one.id}"]
    dead = await store.list_deliveries(where=DeliveryFilter(state=DeliveryState.FAILED))
    assert sorted(d.event_id for d in dead) == ["evt_1", "evt_2"]


async def test_a_claim_without_on_dead_reports_nothing(open_store: OpenStore) -> None:
    store = await open_store(max_attempts=1)
    await enqueue(store, 0.0, event(1), to=("a",))
    assert len(await claim(store, 0.0)) == 1
    assert await claim(store, LEASE_S) == []  # dead-lettered, nothing to report
    page = await store.events_after(after_seq=None, limit=10)
    assert [e.id for _, e in page.events] == ["evt_1"]
