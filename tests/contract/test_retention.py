"""Retention: delivered deliveries go (with their attempts) once older than the window, dead
letters and orphans once twice as old, events once old with no delivery left; pending
deliveries and record states never. A step does a small batch: fewer than `batch` deleted
means nothing more is due."""

from __future__ import annotations

from bridge.models import Attempt, DeliveryState, Event, RecordState
from bridge.store.base import AttemptOutcome, ScanCommit, Store
from tests.contract.conftest import DEAD, DONE, assert_counts, everything

DAY_S = 86400.0
R = 30 * DAY_S  # retention


def named(name: str, at: float) -> Event:
    return Event(f"evt_{name}", "denoise.completed", f"r_{name}", at, None, {"id": name})


async def enqueue(store: Store, at: float, *names: str, to: tuple[str, ...] = ("a",)) -> None:
    """Events `evt_<name>` of records `r_<name>`, occurred and recorded at `at`."""
    await store.commit_scan(
        ScanCommit(
            [RecordState(f"r_{n}", "success", "t") for n in names],
            [(named(n, at), list(to)) for n in names],
            now=at,
        )
    )


async def settle(store: Store, sub: str, at: float, outcome: AttemptOutcome) -> int:
    """Claim everything due of `sub` at `at` and record `outcome` for each; how many."""
    claimed = await store.claim_due(now=at, limit=1000, lease_s=60, subscribers=[sub])
    for d in claimed:
        assert await store.finish_attempt(d, Attempt(at, 200, 1.0, None, ""), outcome)
    return len(claimed)


async def sweep(store: Store, now: float, batch: int = 500) -> list[int]:
    """Purge step by step until a step deletes fewer than `batch`; what each deleted."""
    steps: list[int] = []
    while True:
        steps.append(await store.purge(now=now, retention_s=R, batch=batch))
        assert steps[-1] <= 3 * batch  # a small step: a batch of deliveries and of events
        assert len(steps) < 100
        if steps[-1] < batch:
            return steps


async def event_ids(store: Store) -> set[str]:
    return {e.id for e in await store.list_events(limit=10_000) or []}


async def test_old_delivered_deliveries_go_in_batches_with_their_events(store: Store) -> None:
    await enqueue(store, 0.0, *(f"old{i}" for i in range(5)))
    assert await settle(store, "a", 10.0, DONE) == 5
    await enqueue(store, R, "recent")  # 30 days younger
    assert await settle(store, "a", R + 10.0, DONE) == 1
    assert await sweep(store, R + 9.0) == [0]  # delivered at 10: not older than the window yet
    # the first five are older than the window; `recent` is not
    steps = await sweep(store, R + 20.0, batch=2)
    assert len(steps) > 1 and sum(steps) == 10  # 5 deliveries and their 5 events
    assert await store.purge(now=R + 20.0, retention_s=R, batch=2) == 0
    assert await event_ids(store) == {"evt_recent"}
    [kept] = await everything(store)
    assert kept.event_id == "evt_recent" and len(kept.history) == 1
    # known states are kept
    names = [f"r_old{i}" for i in range(5)] + ["r_recent"]
    assert set(await store.known_states(names)) == set(names)
    await assert_counts(store, {DeliveryState.DELIVERED: 1})


async def test_dead_letters_and_orphans_stay_until_twice_as_old(store: Store) -> None:
    await enqueue(store, 0.0, "done", "dead", "pending")
    held = {
        d.event.id: d
        for d in await store.claim_due(now=0.0, limit=3, lease_s=60, subscribers=["a"])
    }
    assert await store.finish_attempt(held["evt_done"], Attempt(10.0, 200, 1.0, None, ""), DONE)
    assert await store.finish_attempt(
        held["evt_dead"], Attempt(10.0, 500, 1.0, "HTTP 500", ""), DEAD
    )
    assert await store.release(held["evt_pending"], now=10.0)
    await enqueue(store, 0.0, "orphan", to=("gone",))
    assert await store.reconcile_subscribers(["a"], now=10.0) == (1, 0)
    # older than the window: the delivered one goes with its event, the others stay
    assert sum(await sweep(store, 2 * R)) == 2
    assert await event_ids(store) == {"evt_dead", "evt_orphan", "evt_pending"}
    await assert_counts(
        store,
        {
            DeliveryState.PENDING: 1,
            DeliveryState.FAILED: 1,
            DeliveryState.ORPHANED: 1,
        },
    )
    # twice as old: the dead letter and the orphan go with their events; pending stays
    assert sum(await sweep(store, 2 * R + 11.0)) == 4
    assert await event_ids(store) == {"evt_pending"}
    [pending] = await everything(store)
    assert (pending.event_id, pending.state) == ("evt_pending", DeliveryState.PENDING)
    # however old
    assert sum(await sweep(store, 100 * R)) == 0
    assert await event_ids(store) == {"evt_pending"}
    await assert_counts(store, {DeliveryState.PENDING: 1})
    assert len(await store.known_states(["r_done", "r_dead", "r_pending", "r_orphan"])) == 4


async def test_events_nobody_gets_go_once_old(store: Store) -> None:
    await enqueue(store, 0.0, *(f"lone{i}" for i in range(7)), to=())
    await enqueue(store, 5.0, "kept", to=("a",))  # old, but its delivery is still pending
    await enqueue(store, R, "young", to=())
    steps = await sweep(store, R + 1.0, batch=3)
    assert len(steps) > 1 and sum(steps) == 7
    assert await store.purge(now=R + 1.0, retention_s=R, batch=3) == 0
    assert await event_ids(store) == {"evt_kept", "evt_young"}
    # `kept` goes with its delivery, `young` once it is old too
    assert await settle(store, "a", R + 2.0, DONE) == 1
    assert sum(await sweep(store, 2 * R + 3.0)) == 3
    assert await event_ids(store) == set()
    await assert_counts(store, {})


async def test_an_event_replayed_meanwhile_is_kept(store: Store) -> None:
    await enqueue(store, 0.0, "lone", to=())
    replayed = await store.replay(since=0.0, event_type=None, targets=lambda _t, _r: ["a"], now=1.0)
    assert replayed.deliveries == 1
    assert await store.purge(now=R + 1.0, retention_s=R) == 0
    assert await event_ids(store) == {"evt_lone"}
    await assert_counts(store, {DeliveryState.PENDING: 1})
