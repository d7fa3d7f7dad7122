"""The scan stop rule: reach a known record and pass the oldest pending one, or the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bridge.detect.scan import PROBE_LIMIT, StopRule, scan
from bridge.models import Record, RecordState
from bridge.store.base import BASELINE_MARK, ScanCommit
from bridge.store.sqlite import SqliteStore


def rec(n: int, status: str = "success") -> Record:
    created = f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z"
    rid = f"r{n:04d}"
    return Record(rid, status, created, {"id": rid, "status": status, "created_at": created})


def st(n: int, status: str = "success") -> RecordState:
    r = rec(n, status)
    return RecordState(r.id, r.status, r.created_at)


class ListSource:
    """An in-memory newest-first list; `before_fetch` may change it between page fetches."""

    def __init__(self, count: int) -> None:
        self.rows = [rec(n) for n in range(count, 0, -1)]
        self.calls: list[tuple[int, int]] = []
        self.before_fetch: Callable[[int], None] | None = None

    async def list_page(self, offset: int, limit: int) -> list[Record]:
        if self.before_fetch is not None:
            self.before_fetch(len(self.calls))
        self.calls.append((offset, limit))
        return self.rows[offset : offset + limit]

    def insert_top(self, n: int, status: str = "pending") -> None:
        self.rows.insert(0, rec(n, status))


def test_rule_needs_both_known_and_pending_passed() -> None:
    rule = StopRule({"r0005": st(5, "pending")})
    rule.observe([rec(9), rec(8)], known_ids={"r0008"})
    assert rule.reached_known and not rule.passed_pending
    assert not rule.done(2, 2)
    rule.observe([rec(5, "success"), rec(4)], known_ids={"r0005", "r0004"})
    assert rule.done(2, 2)


def test_rule_stops_at_end_of_list_and_reports_vanished_pending() -> None:
    rule = StopRule({"r0003": st(3, "pending")})
    rule.observe([rec(2)], known_ids=set())
    assert rule.done(1, 2)
    assert rule.vanished == {"r0003"}


def test_rule_passes_a_deleted_pending_record_by_creation_time() -> None:
    rule = StopRule({"r0005": st(5, "pending")})
    rule.observe([rec(6), rec(4)], known_ids={"r0006", "r0004"})
    assert rule.passed_pending and rule.vanished == {"r0005"}
    assert rule.done(2, 2)


async def _store(tmp_path: Path, states: list[RecordState]) -> SqliteStore:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.commit_scan(ScanCommit(states=states, events=[], now=1.0, meta={BASELINE_MARK: ""}))
    return store


async def test_baseline_pages_to_the_end(tmp_path: Path) -> None:
    store = await _store(tmp_path, [])
    source = ListSource(7)
    result = await scan(source, store, page_size=3, max_pages=200, now=2.0)
    assert source.calls == [(0, 3), (3, 3), (6, 3)]
    assert [r.id for r in result.rows] == [f"r{n:04d}" for n in range(7, 0, -1)]
    await store.close()


async def test_steady_state_costs_one_request(tmp_path: Path) -> None:
    source = ListSource(100)
    store = await _store(tmp_path, [st(n) for n in range(1, 101)])
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert source.calls == [(0, PROBE_LIMIT)]  # nothing pending: the probe is the whole scan
    assert result.pages == 1
    await store.close()


async def test_deep_pending_record_is_reached(tmp_path: Path) -> None:
    source = ListSource(100)
    states = [st(n) for n in range(1, 101)]
    states[19] = st(20, "pending")  # 81st from the top
    store = await _store(tmp_path, states)
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    assert len(source.calls) == 9  # offsets 0..80
    assert "r0020" in {r.id for r in result.rows}
    await store.close()


async def test_inserts_between_page_fetches_are_deduplicated(tmp_path: Path) -> None:
    source = ListSource(10)
    store = await _store(tmp_path, [])
    inserted = iter(range(500, 600))
    source.before_fetch = lambda call: source.insert_top(next(inserted)) if call else None
    result = await scan(source, store, page_size=3, max_pages=200, now=2.0)
    ids = [r.id for r in result.rows]
    assert len(ids) == len(set(ids))
    assert {f"r{n:04d}" for n in range(1, 11)} <= set(ids)
    await store.close()


async def test_many_new_records_are_all_collected(tmp_path: Path) -> None:
    source = ListSource(20)
    store = await _store(tmp_path, [st(n) for n in range(1, 21)])
    for n in range(21, 46):
        source.insert_top(n, "success")
    result = await scan(source, store, page_size=10, max_pages=200, now=2.0)
    new = {r.id for r in result.rows} - {f"r{n:04d}" for n in range(1, 21)}
    assert new == {f"r{n:04d}" for n in range(21, 46)}
    assert source.calls == [(0, PROBE_LIMIT), (0, 10), (10, 10), (20, 10)]  # probe, then pages
    await store.close()


async def test_status_change_mid_scan_takes_latest_fetch(tmp_path: Path) -> None:
    source = ListSource(6)
    states = [st(n) for n in range(1, 7)]
    states[0] = st(1, "pending")
    store = await _store(tmp_path, states)

    def flip(call: int) -> None:
        if call == 1:
            source.rows[-1] = rec(1, "success")
            source.insert_top(50, "pending")  # pushes row 4 onto the second page again

    source.before_fetch = flip
    result = await scan(source, store, page_size=3, max_pages=200, now=2.0)
    by_id = {r.id: r for r in result.rows}
    assert by_id["r0001"].status == "success"
    assert result.previous["r0001"].status == "pending"
    await store.close()
