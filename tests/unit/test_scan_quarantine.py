"""The scan with quarantined records: they count for a page's length and, when their id can be
read, as seen, so skipping one never ends the list early nor makes a pending record gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.detect.scan import StopRule, scan
from bridge.models import Page, Quarantined, Record, RecordState
from bridge.store.base import BASELINE_MARK, ScanCommit
from bridge.store.sqlite import SqliteStore


def rec(n: int, status: str = "success") -> Record:
    created = f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z"
    rid = f"r{n:04d}"
    return Record(rid, status, created, {"id": rid, "status": status, "created_at": created})


def state(n: int, status: str = "success") -> RecordState:
    r = rec(n, status)
    return RecordState(r.id, r.status, r.created_at)


def broken(n: int | None, position: int = 0) -> Quarantined:
    """A record that cannot be read: by its id `r{n}`, or with no readable id (None)."""
    rid = None if n is None else f"r{n:04d}"
    return Quarantined(position, rid or "", rid, "field 'status' is missing", f"k{n}")


class Listing:
    """A newest-first list in memory; items listed by number, `None` or a number in
    `broken` is an item that cannot be read."""

    def __init__(self, numbers: list[int | None], broken: set[int]) -> None:
        self.numbers, self.broken = numbers, broken
        self.calls: list[int] = []

    async def list_page(self, offset: int, limit: int) -> list[Record]:
        self.calls.append(offset)
        items = self.numbers[offset : offset + limit]
        good = [rec(n) for n in items if n is not None and n not in self.broken]
        bad = [broken(n) for n in items if n is None or n in self.broken]
        return Page(good, size=len(items), quarantined=bad)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "s.db")
    await s.open()
    yield s
    await s.close()


async def remember(store: SqliteStore, states: list[RecordState]) -> None:
    await store.commit_scan(ScanCommit(states=states, events=[], now=1.0, meta={BASELINE_MARK: ""}))


def test_a_quarantined_pending_record_is_passed_and_a_known_one_reached() -> None:
    rule = StopRule({"r0005": state(5, "pending")})
    rule.observe([rec(9)], known_ids={"r0005"}, skipped=["r0005"])
    assert rule.reached_known and rule.passed_pending
    rule.observe([rec(4)], known_ids=set())
    assert rule.vanished == set()


async def test_a_tracked_pending_record_quarantined_on_page_two_is_not_gone(
    store: SqliteStore,
) -> None:
    await remember(store, [state(n) for n in range(1, 11)] + [state(6, "pending")])
    source = Listing(list(range(15, 0, -1)), broken={6})
    result = await scan(source, store, page_size=5, max_pages=200, now=2.0)
    assert result.vanished == []  # it is still listed, only unreadable
    assert result.skipped == ["r0006"]  # marked seen with the rows
    assert source.calls == [0, 5]  # passed on the page that holds it: the scan stops there


async def test_a_pending_record_whose_id_cannot_be_read_may_be_missed(
    store: SqliteStore,
) -> None:
    """Without an id there is nothing to match: it is missed like a deleted record (kept,
    marked; gone only when missed again), which a later whole listing repairs."""
    await remember(store, [state(n) for n in range(1, 11)] + [state(6, "pending")])
    source = Listing([*range(15, 6, -1), None, *range(5, 0, -1)], broken=set())
    result = await scan(source, store, page_size=5, max_pages=200, now=2.0)
    assert result.vanished == ["r0006"]


async def test_quarantined_items_count_for_the_page_length(store: SqliteStore) -> None:
    """A full page of unreadable items is not the end of the list, and the next page starts
    after them: nothing is read twice or skipped."""
    await remember(store, [state(n) for n in range(1, 5)])
    source = Listing([None] * 5 + [9, 8, None, 6, 5] + [4, 3], broken=set())
    result = await scan(source, store, page_size=5, max_pages=200, now=2.0)
    assert source.calls == [0, 0, 5, 10]  # the probe (unreadable items: no proof), then pages
    assert [r.id for r in result.rows] == ["r0009", "r0008", "r0006", "r0005", "r0004", "r0003"]
    assert result.truncated is False and result.sweep is None
