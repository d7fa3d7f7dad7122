"""The pull feed's store side (`events_after`): events in the order they were stored, each
with its seq, paged past a seq, filtered by type; seqs survive a restart; a purge raises the
mark below which a cursor is past retention."""

from __future__ import annotations

from bridge.models import Event, RecordState
from bridge.store.base import ScanCommit, Store
from tests.contract.conftest import OpenStore
from tests.contract.test_retention import R, enqueue, sweep


def typed(name: str, etype: str, at: float = 0.0) -> Event:
    return Event(f"evt_{name}", etype, f"r_{name}", at, None, {"id": name})


async def store_events(store: Store, *events: Event, at: float = 0.0) -> None:
    """Events stored in one scan commit, no subscriber (no delivery)."""
    await store.commit_scan(
        ScanCommit(
            [RecordState(e.record_id, "success", "t") for e in events],
            [(e, []) for e in events],
            now=at,
        )
    )


async def ids_after(store: Store, after: int | None, **kw: object) -> list[str]:
    page = await store.events_after(after_seq=after, limit=1000, **kw)  # type: ignore[arg-type]
    return [e.id for _, e in page.events]


async def test_an_empty_store_has_no_events_and_no_marks(store: Store) -> None:
    page = await store.events_after(after_seq=None, limit=10)
    assert page.events == [] and page.newest_seq == 0 and page.purged_up_to == 0


async def test_events_come_oldest_first_in_pages_with_increasing_seqs(store: Store) -> None:
    await store_events(store, typed("a", "denoise.completed"), typed("b", "denoise.failed"))
    await store_events(store, typed("c", "denoise.completed"))
    page = await store.events_after(after_seq=None, limit=2)
    assert [e.id for _, e in page.events] == ["evt_a", "evt_b"]
    seqs = [s for s, _ in page.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2
    rest = await store.events_after(after_seq=seqs[-1], limit=2)
    assert [e.id for _, e in rest.events] == ["evt_c"]
    assert rest.newest_seq == rest.events[-1][0] > seqs[-1]
    assert (await store.events_after(after_seq=rest.newest_seq, limit=5)).events == []
    assert page.events[0][1] == typed("a", "denoise.completed")


async def test_the_type_filter_keeps_the_order(store: Store) -> None:
    await store_events(
        store,
        typed("a", "denoise.completed"),
        typed("b", "denoise.failed"),
        typed("c", "denoise.completed"),
    )
    assert await ids_after(store, None, event_type="denoise.completed") == ["evt_a", "evt_c"]
    assert await ids_after(store, None, event_type="denoise.failed") == ["evt_b"]


async def test_seqs_survive_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    await store_events(store, typed("a", "denoise.completed"), typed("b", "denoise.completed"))
    first = await store.events_after(after_seq=None, limit=1)
    await open_store.close(store)
    again = await open_store()
    assert await ids_after(again, first.events[0][0]) == ["evt_b"]
    await store_events(again, typed("c", "denoise.completed"))
    assert await ids_after(again, first.events[0][0]) == ["evt_b", "evt_c"]


async def test_a_purge_raises_the_mark_past_the_deleted_events(store: Store) -> None:
    await enqueue(store, 0.0, "old1", "old2", to=())
    await enqueue(store, R, "recent", to=())
    before = await store.events_after(after_seq=None, limit=10)
    assert before.purged_up_to == 0
    old2_seq = before.events[1][0]
    await sweep(store, R + 20.0)
    after = await store.events_after(after_seq=None, limit=10)
    assert [e.id for _, e in after.events] == ["evt_recent"]
    assert after.purged_up_to == old2_seq  # a cursor below it missed deleted events
    assert after.newest_seq == after.events[0][0] > old2_seq
