"""The idle probe of a scan: with nothing pending, the top `PROBE_LIMIT` records, known and
unchanged, are the whole scan; anything else (a new or changed record, a tie on the newest
`created_at`, an unreadable item, an empty list) pages from the top as before."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.detect.scan import PROBE_LIMIT, Sweep, scan
from bridge.models import Page, Quarantined, Record, RecordState
from bridge.store.base import BASELINE_MARK, ScanCommit
from bridge.store.sqlite import SqliteStore

TOP = "2026-01-01T01:00:00.000Z"


def rec(n: int, status: str = "success", created: str | None = None) -> Record:
    created = created or f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z"
    rid = f"r{n:04d}"
    return Record(rid, status, created, {"id": rid, "status": status, "created_at": created})


def state(r: Record) -> RecordState:
    return RecordState(r.id, r.status, r.created_at)


class Listing:
    """A newest-first list in memory; the ids in `broken` are listed but cannot be read."""

    def __init__(self, rows: list[Record], broken: frozenset[str] = frozenset()) -> None:
        self.rows, self.broken = rows, broken
        self.calls: list[tuple[int, int]] = []

    async def list_page(self, offset: int, limit: int) -> list[Record]:
        self.calls.append((offset, limit))
        items = self.rows[offset : offset + limit]
        bad = [
            Quarantined(offset + i, r.id, r.id, "field 'status' is missing", r.id)
            for i, r in enumerate(items)
            if r.id in self.broken
        ]
        good = [r for r in items if r.id not in self.broken]
        return Page(good, size=len(items), quarantined=bad)


async def open_store(path: Path, known: list[Record]) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    meta: dict[str, str | None] = {BASELINE_MARK: ""}
    await store.commit_scan(ScanCommit([state(r) for r in known], [], now=1.0, meta=meta))
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A store that knows records 1..20, all finished."""
    s = await open_store(tmp_path / "s.db", [rec(n) for n in range(1, 21)])
    yield s
    await s.close()


def history(count: int = 20) -> list[Record]:
    return [rec(n) for n in range(count, 0, -1)]


async def test_a_known_unchanged_top_is_the_whole_scan(store: SqliteStore) -> None:
    source = Listing(history())
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT)]
    assert [r.id for r in result.rows] == ["r0020", "r0019"]
    assert set(result.previous) == {"r0020", "r0019"}  # known: the poller diffs nothing
    assert result.pages == 1 and result.vanished == [] and not result.truncated
    assert result.sweep is None and result.finished_sweep is None and result.skipped == []


async def test_the_old_path_reads_a_page(store: SqliteStore) -> None:
    source = Listing(history())
    await scan(source, store, page_size=10, max_pages=200, now=2.0, probe=False)
    assert source.calls == [(0, 10)]


@pytest.mark.parametrize(
    "change",
    [
        [rec(21), *history()],  # a new record on top
        [rec(20, "failed"), *history()[1:]],  # the newest known one changed
        [rec(20), rec(19, "failed"), *history()[2:]],  # the second one changed
        [rec(20), rec(99, created="2026-01-01T00:00:19.500Z"), *history()[1:]],  # listed late
    ],
)
async def test_anything_else_on_top_pages_as_before(
    store: SqliteStore, change: list[Record]
) -> None:
    source = Listing(change)
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT), (0, 10)]
    assert result.pages == 2
    assert {r.id: r.status for r in result.rows} == {r.id: r.status for r in change[:10]}


async def test_a_deleted_newest_record_leaves_idle_polls_at_the_probe(
    store: SqliteStore,
) -> None:
    """The newest known record deleted at Munsit: the known records under it are the top
    now, and nothing new is above them."""
    source = Listing(history()[1:])
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT)] and result.pages == 1


async def test_an_unreadable_item_in_the_probe_pages_as_before(store: SqliteStore) -> None:
    source = Listing([rec(21), *history()], broken=frozenset({"r0021"}))
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT), (0, 10)]
    assert result.skipped == ["r0021"]


async def test_an_empty_list_is_not_taken_for_nothing_new(store: SqliteStore) -> None:
    source = Listing([])
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT), (0, 10)]  # the usual rules decide
    assert result.rows == [] and result.pages == 2


async def test_a_list_of_one_known_record_is_proof_enough(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "one.db", [rec(1)])
    source = Listing([rec(1)])
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT)] and [r.id for r in result.rows] == ["r0001"]
    await store.close()


async def test_no_probe_while_pending_in_a_sweep_at_the_baseline_or_with_small_pages(
    tmp_path: Path,
) -> None:
    pending = await open_store(tmp_path / "p.db", [*history()[1:], rec(20, "pending")])
    source = Listing(history())
    await scan(source, pending, page_size=10, max_pages=200, now=2.0)
    assert source.calls[0] == (0, 10)
    await pending.close()

    idle = await open_store(tmp_path / "i.db", history())
    source = Listing(history())
    sweep = Sweep(0, "", "", 1.0, "full")
    await scan(source, idle, page_size=10, max_pages=200, now=2.0, sweep=sweep)
    assert source.calls[0] == (0, 10)
    source = Listing(history())
    await scan(source, idle, page_size=PROBE_LIMIT, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT)]  # a page, not a probe and then a page
    await idle.close()

    empty = await open_store(tmp_path / "e.db", [])
    source = Listing(history())
    await scan(source, empty, page_size=10, max_pages=200, now=2.0)
    assert source.calls[0] == (0, 10)
    await empty.close()


async def test_the_probe_counts_in_the_page_budget(store: SqliteStore) -> None:
    source = Listing([rec(n) for n in range(80, 20, -1)] + history())
    result = await scan(source, store, page_size=10, max_pages=4, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT), (0, 10), (10, 10), (20, 10)]
    assert result.pages == 4 and result.truncated and result.sweep is not None
    assert result.sweep.offset == 30


async def test_a_new_record_sharing_the_newest_created_at_is_not_missed(tmp_path: Path) -> None:
    """Records created in the same millisecond are listed in any order: a new one may come
    below the newest known one, and known ones tying at the top leave no proof at all."""
    a, b, c = rec(30, created=TOP), rec(31, created=TOP), rec(32, created=TOP)
    store = await open_store(tmp_path / "t.db", [a, *history()])
    source = Listing([a, b, *history()])  # new b below known a
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert "r0031" in {r.id for r in result.rows} and "r0031" not in result.previous
    await store.close()

    store = await open_store(tmp_path / "u.db", [a, b, *history()])
    source = Listing([a, b, c, *history()])  # new c below known a and b, which tie
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT), (0, 10)]
    assert "r0032" in {r.id for r in result.rows} and "r0032" not in result.previous
    source = Listing([a, b, *history()])  # nothing new: the tie still costs a page
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT), (0, 10)]
    await store.close()


@settings(max_examples=60, deadline=None)
@given(
    tied=st.integers(1, 4),
    position=st.integers(0, 6),
    page_size=st.integers(PROBE_LIMIT + 1, 8),
)
def test_no_new_record_is_missed_among_ties(tied: int, position: int, page_size: int) -> None:
    """`tied` known records share the newest `created_at`; a new record with that same
    `created_at` is listed anywhere among them: the scan finds it whenever the scan without
    a probe does, and always within the first page."""
    known = [rec(40 + i, created=TOP) for i in range(tied)] + history()
    new = rec(99, created=TOP)
    listed = list(known)
    listed.insert(min(position, tied), new)

    async def run(probe: bool) -> set[str]:
        with tempfile.TemporaryDirectory() as tmp:
            store = await open_store(Path(tmp) / "s.db", known)
            try:
                source = Listing(listed)
                result = await scan(
                    source, store, page_size=page_size, max_pages=200, now=2.0, probe=probe
                )
            finally:
                await store.close()
        return {r.id for r in result.rows}

    found = "r0099" in asyncio.run(run(True))
    assert found == ("r0099" in asyncio.run(run(False)))
    assert found or min(position, tied) >= page_size
