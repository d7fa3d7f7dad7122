"""A claimed delivery whose lease runs out with no outcome recorded (the worker stopped, or
took too long) counts as an attempt, so a delivery that kills its worker every time ends
dead-lettered instead of looping forever. Handing a delivery back unstarted does not count."""

from __future__ import annotations

import pytest

from bridge.models import Attempt, DeliveryState, Event
from bridge.store.base import AttemptOutcome, ScanCommit
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_claim import LOST_ATTEMPT

LEASE_S = 30.0
SCHEDULE = (5.0, 300.0, 1800.0)  # a retry schedule: 1 + 3 attempts in all


def event(n: int, rid: str = "r1") -> Event:
    return Event(f"evt_{n}", "denoise.completed", rid, float(n), None, {"id": rid})


@pytest.mark.parametrize("lanes", [True, False], ids=["claim_lanes", "claim_due"])
async def test_a_delivery_whose_worker_always_dies_is_dead_lettered_after_every_attempt(
    store: SqliteStore, lanes: bool
) -> None:
    store.max_attempts = 1 + len(SCHEDULE)
    await store.commit_scan(ScanCommit([], [(event(1), ["a"]), (event(2), ["a"])], now=0.0))
    now, given = 0.0, []
    for _ in range(20):  # far more rounds than attempts: it must stop being given out
        got = (
            await store.claim_lanes(now=now, lease_s=LEASE_S, rooms=[("a", 1)])
            if lanes
            else await store.claim_due(now=now, limit=1, lease_s=LEASE_S, subscribers=["a"])
        )
        given.append([(d.event.id, d.attempts) for d in got])
        now += LEASE_S  # the worker died: no finish, no release; the lease runs out
    # each claim saw the attempts counted so far; the one after the last attempt dead-letters
    # it; the record's next event waited for that (the order rule), then went the same way
    assert given == [
        *([("evt_1", n)] for n in range(4)),
        [],
        *([("evt_2", n)] for n in range(4)),
        *([] for _ in range(11)),
    ]
    dead = await store.list_deliveries(state=DeliveryState.FAILED)
    assert [(d.event_id, d.attempts, d.next_attempt_at) for d in dead] == [
        ("evt_2", 4, None),
        ("evt_1", 4, None),
    ]
    assert [(a.status_code, a.error, a.attempted_at) for a in dead[1].history] == [
        (None, LOST_ATTEMPT, at) for at in (30.0, 60.0, 90.0, 120.0)
    ]
    assert await store.list_deliveries(state=DeliveryState.PENDING) == []


async def test_an_answer_after_a_counted_lost_attempt_continues_the_schedule(
    store: SqliteStore,
) -> None:
    store.max_attempts = 1 + len(SCHEDULE)
    await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=0.0))
    await store.claim_lanes(now=0.0, lease_s=LEASE_S, rooms=[("a", 1)])
    [again] = await store.claim_lanes(now=LEASE_S, lease_s=LEASE_S, rooms=[("a", 1)])
    assert again.attempts == 1  # the dispatcher numbers this one attempt 2
    outcome = AttemptOutcome(DeliveryState.PENDING, 100.0)
    assert await store.finish_attempt(again, Attempt(31.0, 500, 1.0, "HTTP 500", ""), outcome)
    [view] = await store.list_deliveries()
    assert view.attempts == 2 and [a.status_code for a in view.history] == [None, 500]
    assert await store.claim_lanes(now=99.0, lease_s=LEASE_S, rooms=[("a", 1)]) == []
    [third] = await store.claim_lanes(now=100.0, lease_s=LEASE_S, rooms=[("a", 1)])
    assert third.attempts == 2  # a recorded attempt released the lease: nothing more counted


async def test_a_delivery_handed_back_unstarted_is_not_counted(store: SqliteStore) -> None:
    store.max_attempts = 2
    await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=0.0))
    for round_ in range(5):
        [d] = await store.claim_lanes(now=float(round_), lease_s=LEASE_S, rooms=[("a", 1)])
        assert d.attempts == 0
        assert await store.release(d, now=float(round_))
    [view] = await store.list_deliveries()
    assert view.state is DeliveryState.PENDING and view.attempts == 0 and view.history == ()


async def test_a_live_lease_is_not_counted(store: SqliteStore) -> None:
    await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=0.0))
    [d] = await store.claim_lanes(now=0.0, lease_s=LEASE_S, rooms=[("a", 1)])
    assert await store.claim_lanes(now=LEASE_S - 0.001, lease_s=LEASE_S, rooms=[("a", 1)]) == []
    [view] = await store.list_deliveries()
    assert view.attempts == 0 and view.history == ()
    done = AttemptOutcome(DeliveryState.DELIVERED)
    assert await store.finish_attempt(d, Attempt(1.0, 200, 1.0, None, ""), done)
