"""One scan of the Munsit list: page from the top until the stop rule says enough, then carry
on with an unfinished sweep (a baseline, a runaway scan or a reconciliation) within a page budget.

While nothing is pending, a scan first reads a probe (`PROBE_LIMIT` records): when the top of
the list is known and unchanged, that is the whole scan; otherwise it pages as usual.

A page may come with quarantined records (`models.Page`): they count for its length (offsets,
the end of the list) and, when their id is readable, as seen: a known record that is
quarantined is reached, and a pending one is passed, not taken for gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from bridge.models import Page, Record, RecordState
from bridge.store.base import DetectionStore

REALIGN_TRIES = 3
# Two records, not one: a record listed below the newest known one (a job created in the same
# millisecond, or listed late) is then either the second row or makes the two rows tie.
PROBE_LIMIT = 2


class ListPages(Protocol):
    """What a scan needs from the upstream client."""

    async def list_page(self, offset: int, limit: int) -> list[Record]: ...


@dataclass(slots=True)
class StopRule:
    """Pure bookkeeping of the rule: stop after reaching a known record *and* passing the
    oldest record still known as pending, or at the end of the list.
    """

    pending: dict[str, RecordState]
    reached_known: bool = False
    oldest_pending_created: str | None = None
    vanished: set[str] = field(default_factory=set)
    _pending_left: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._pending_left = set(self.pending)
        if self.pending:
            self.oldest_pending_created = min(s.created_at for s in self.pending.values())

    def observe(
        self, page: Sequence[Record], known_ids: set[str], skipped: Sequence[str] = ()
    ) -> None:
        """Account for one fetched page (`known_ids`: those rows known before this scan;
        `skipped`: ids of its quarantined records, present though unread)."""
        for record_id in skipped:
            self.reached_known |= record_id in known_ids
            self._pending_left.discard(record_id)
        for record in page:
            if record.id in known_ids:
                self.reached_known = True
            self._pending_left.discard(record.id)
            if (
                self.oldest_pending_created is not None
                and record.created_at < self.oldest_pending_created
            ):
                # older than every pending record: those not seen are gone from the list
                self.vanished |= self._pending_left
                self._pending_left.clear()

    @property
    def passed_pending(self) -> bool:
        return not self._pending_left

    def done(self, page_len: int, limit: int) -> bool:
        """Whether to stop after a page of `page_len` rows was fetched with `limit`."""
        if page_len < limit:
            self.vanished |= self._pending_left
            self._pending_left.clear()
            return True
        return self.reached_known and self.passed_pending


@dataclass(frozen=True, slots=True)
class Sweep:
    """An unfinished pass to the end of the list, resumed by the next scans.

    `offset` is where the next page starts; `last_id`/`last_created` name the oldest record
    seen so far, to re-align when the list moved meanwhile; records not seen since
    `started_at` when the sweep reaches the end are gone from the list.
    """

    offset: int
    last_id: str
    last_created: str
    started_at: float
    reason: str

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str | None) -> Sweep | None:
        return None if not text else cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Rows of a completed scan, newest first, each id once, with what was known of them."""

    rows: list[Record]
    previous: dict[str, RecordState]
    pages: int
    vanished: list[str]
    sweep: Sweep | None  # what to persist: None when no sweep is left unfinished
    finished_sweep: Sweep | None  # a sweep that reached the end of the list in this scan
    truncated: bool  # the page budget stopped the scan before its rule was satisfied
    skipped: list[str] = field(default_factory=list)  # ids of quarantined records, seen too
    unread: bool = False  # an answer held an item that could not be read (quarantined)
    probed: bool = False  # the probe was the whole scan: the top of the list is unchanged


@dataclass(frozen=True, slots=True)
class _Fetched:
    records: Sequence[Record]
    size: int  # items in the answer, quarantined ones included
    known: set[str]  # ids in it (readable ones of quarantined records too) known before
    skipped: list[str]  # readable ids of its quarantined records


class _Pager:
    """Fetches pages within a budget, keeping each row once (its latest fetch) and what the
    store knew of it before this scan."""

    def __init__(
        self, client: ListPages, store: DetectionStore, page_size: int, max_pages: int
    ) -> None:
        self.client, self.store = client, store
        self.page_size, self.budget = page_size, max_pages
        self.pages = 0
        self.rows: dict[str, Record] = {}
        self.previous: dict[str, RecordState] = {}
        self.skipped: dict[str, bool] = {}  # quarantined id -> known before this scan
        self.unread = False  # an answer held an item that could not be read

    @property
    def exhausted(self) -> bool:
        return self.pages >= self.budget

    async def fetch(self, offset: int, limit: int | None = None) -> _Fetched:
        """One page (`limit` rows, a page by default), its length and the ids in it that
        were known before this scan."""
        page = await self.client.list_page(offset, limit or self.page_size)
        self.pages += 1
        size, skipped = len(page), []
        if isinstance(page, Page):
            size = page.size
            skipped = [q.record_id for q in page.quarantined if q.record_id is not None]
        self.unread |= size > len(page)
        fresh = [r.id for r in page if r.id not in self.rows]
        unread = [rid for rid in skipped if rid not in self.skipped]
        found = await self.store.known_states(fresh + unread)
        self.previous.update((rid, found[rid]) for rid in fresh if rid in found)
        self.skipped.update((rid, rid in found) for rid in unread)
        for record in page:
            self.rows[record.id] = record
        known = {r.id for r in page if r.id in self.previous}
        known.update(rid for rid in skipped if self.skipped[rid])
        return _Fetched(page, size, known, skipped)


async def scan(
    client: ListPages,
    store: DetectionStore,
    *,
    page_size: int,
    max_pages: int,
    now: float,
    sweep: Sweep | None = None,
    probe: bool = True,
) -> ScanResult:
    """Fetch pages until the stop rule holds, then advance `sweep` with the pages left.

    With `probe`, a scan with nothing pending and no sweep first reads the top of the list
    (`PROBE_LIMIT` rows; it counts as a page): when `unchanged_top` holds, that is the whole
    scan. Raises on any upstream error: a partial scan returns nothing, so nothing of it is ever
    committed. Hitting `max_pages` is not an error: what was read is returned, and the rest
    continues as a sweep at the next scan.
    """
    pending = {s.id: s for s in await store.tracked_pending()}
    newest_known = await store.newest_created_at()
    pager = _Pager(client, store, page_size, max_pages)
    # (with pages of PROBE_LIMIT records or fewer, the first page costs no more than a probe)
    idle = not pending and sweep is None  # and not a baseline: newest_known is not None
    if probe and idle and newest_known is not None and page_size > PROBE_LIMIT:
        got = await pager.fetch(0, PROBE_LIMIT)
        if unchanged_top(got.records, got.size, pager.previous):
            return ScanResult(
                list(got.records), pager.previous, 1, [], None, None, False, probed=True
            )
    # While a baseline or overflow sweep is unfinished, the top scan only looks for new
    # records; the sweep passes the pending ones. A reconciliation sweep changes nothing.
    rule = StopRule(pending if sweep is None or sweep.reason == "full" else {})
    offset, at_end, truncated = 0, False, False
    last: Record | None = None
    # a sweep always gets two pages: one to re-align on its last record, one to advance
    top_budget = max_pages - 2 if sweep is not None else max_pages
    while True:
        if pager.pages >= top_budget:
            truncated = True
            break
        got = await pager.fetch(offset)
        rule.observe(got.records, got.known, got.skipped)
        offset += got.size
        last = got.records[-1] if got.records else last
        if rule.done(got.size, page_size):
            at_end = got.size < page_size
            break

    finished: Sweep | None = None
    if truncated and last is not None:
        started = min(sweep.started_at, now) if sweep else now
        sweep = Sweep(offset, last.id, last.created_at, started, "overflow")
    elif at_end:
        finished, sweep = sweep, None  # the whole list was read in this scan
    elif sweep is not None and not sweep.last_id and last is not None:
        # a sweep that starts now continues right below what this scan just read
        fresh = replace(sweep, offset=offset, last_id=last.id, last_created=last.created_at)
        sweep, finished = await _advance(pager, fresh, realign=False)
    elif sweep is not None:
        inserted = sum(
            1
            for r in pager.rows.values()
            if r.id not in pager.previous
            and newest_known is not None
            and r.created_at > newest_known
        )
        shifted = replace(sweep, offset=sweep.offset + inserted)
        sweep, finished = await _advance(pager, shifted, realign=True)

    return ScanResult(
        rows=_newest_first(pager.rows.values()),
        previous=pager.previous,
        pages=pager.pages,
        vanished=sorted(rule.vanished),
        sweep=sweep,
        finished_sweep=finished,
        truncated=truncated,
        skipped=list(pager.skipped),
        unread=pager.unread,
    )


async def _advance(
    pager: _Pager, sweep: Sweep, *, realign: bool
) -> tuple[Sweep | None, Sweep | None]:
    """Continue `sweep` within the budget; returns (still unfinished, finished).

    With `realign`, the first page starts one row above the expected position: finding the
    last record seen there (or a newer one) proves nothing was skipped; finding an older one
    means records were removed above, so it steps back a page, then reads on.
    """
    offset, last_id, last_created = sweep.offset, sweep.last_id, sweep.last_created
    if realign:
        offset = max(0, offset - 1)
    for attempt in range(REALIGN_TRIES if realign else 0):
        if pager.exhausted:  # keep the re-alignment done so far for the next scan
            return replace(sweep, offset=offset + 1), None
        got = await pager.fetch(offset)
        page = got.records
        aligned = bool(page) and (page[0].id == last_id or page[0].created_at > last_created)
        if aligned or offset == 0 or attempt == REALIGN_TRIES - 1:
            offset += got.size
            if page:
                last_id, last_created = page[-1].id, page[-1].created_at
            if got.size < pager.page_size:
                return None, sweep
            break
        offset = max(0, offset - pager.page_size)
    while not pager.exhausted:
        got = await pager.fetch(offset)
        offset += got.size
        if got.records:
            last_id, last_created = got.records[-1].id, got.records[-1].created_at
        if got.size < pager.page_size:
            return None, sweep
    return replace(sweep, offset=offset, last_id=last_id, last_created=last_created), None


def unchanged_top(rows: Sequence[Record], size: int, known: dict[str, RecordState]) -> bool:
    """Whether a probe answer (`size` items, `rows` of them readable) proves that nothing new
    is listed above the records the store knows: every item readable, known and in its known
    status, and either the list ends within the answer or its last row is strictly older
    than its first (so no unknown record can share the top `created_at` below it). The list
    is newest first, so a new record would be on top; the top row need not be the newest
    record the store knows, which may have been deleted since (an idle poll then still ends
    at the probe, rather than paging until a newer job comes)."""
    if not rows or size != len(rows):
        return False
    if any(r.id not in known or known[r.id].status != r.status for r in rows):
        return False
    return size < PROBE_LIMIT or rows[-1].created_at < rows[0].created_at


def _newest_first(rows: Iterable[Record]) -> list[Record]:
    items = list(rows)
    order = {r.id: i for i, r in enumerate(items)}
    return sorted(items, key=lambda r: (r.created_at, -order[r.id]), reverse=True)
