"""A store opened again (a restart) is the same store: not new, everything kept, leases too."""

from __future__ import annotations

from bridge.models import DeliveryState
from bridge.store.base import BASELINE_MARK, ScanCommit, Store, SubscriberHealth
from tests.contract.conftest import (
    DEAD,
    DONE,
    OpenStore,
    attempt,
    event,
    everything,
    later,
    record,
)


async def snapshot(store: Store) -> tuple[object, ...]:
    """Everything the port shows of a store."""
    return (
        await store.baseline_done(),
        await store.get_meta(BASELINE_MARK),
        await store.get_meta("other"),
        await store.newest_created_at(),
        await store.tracked_pending(),
        await store.known_states(["r1", "r2", "r3", "r4"]),
        [(e, e.data) for e in await store.list_events() or []],
        await everything(store),
        await store.count_deliveries(),
        await store.counts_by_subscriber(),
        await store.subscriber_health(),
        await store.next_due_at(["a", "b"]),
    )


async def test_a_reopened_store_keeps_everything(open_store: OpenStore) -> None:
    first = await open_store()
    assert first.created
    await first.commit_scan(
        ScanCommit(
            [record("r1", "success"), record("r2", "pending", "2026-01-02T00:00:00Z")],
            [(event(1, "r1"), ["a", "b"]), (event(2, "r2"), ["a"]), (event(3, "r3"), ["b"])],
            now=10.0,
            meta={BASELINE_MARK: "2026-01-02T00:00:00Z", "other": "x"},
        )
    )
    await first.commit_scan(ScanCommit([record("r3")], [], now=11.0, removed=["r2"]))
    held = {
        (d.subscriber_id, d.event.id): d
        for d in await first.claim_due(now=11.0, limit=9, lease_s=60, subscribers=["a", "b"])
    }
    assert await first.finish_attempt(held["a", "evt_1"], attempt(12.0, 200), DONE)
    assert await first.finish_attempt(held["b", "evt_1"], attempt(12.0), DEAD)
    assert await first.finish_attempt(held["a", "evt_2"], attempt(12.0), later(40.0))
    await first.set_subscriber_health("b", SubscriberHealth(failing_since=12.0, reason="x"))
    # held["b", "evt_3"] stays leased (until 71) across the restart
    before = await snapshot(first)
    await open_store.close(first)

    second = await open_store()
    assert not second.created
    assert await snapshot(second) == before
    # missed once before the restart, missed again after it: gone
    assert (await second.commit_scan(ScanCommit([], [], now=13.0, removed=["r2"]))).forgotten == [
        "r2"
    ]
    # the lease is still held: the delivery goes again (an attempt counted) once it runs out
    assert await second.claim_due(now=70.0, limit=9, lease_s=60, subscribers=["b"]) == []
    [again] = await second.claim_due(now=71.0, limit=9, lease_s=60, subscribers=["b"])
    assert (again.event.id, again.attempts) == ("evt_3", 1)
    # the same event is not recorded again; new ones come after the old ones
    old_ids = {v.id for v in await everything(second)}
    committed = await second.commit_scan(
        ScanCommit([], [(event(1, "r1"), ["a"]), (event(4, "r4"), ["a"])], now=80.0)
    )
    assert committed.recorded == {"evt_4"} and committed.deliveries == 1
    [new] = await second.list_deliveries(limit=1)
    assert new.event_id == "evt_4" and new.id > max(old_ids)
    assert [e.id for e in await second.list_events(limit=1) or []] == ["evt_4"]
    assert (await second.count_deliveries())[DeliveryState.PENDING] == 3
    await open_store.close(second)
    third = await open_store()
    assert not third.created
