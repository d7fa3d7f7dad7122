"""One scan of the Munsit list: page from offset 0 until the stop rule says enough."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.models import Record, RecordState
from bridge.store.base import Store


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

    def observe(self, page: Sequence[Record], known_ids: set[str]) -> None:
        """Account for one fetched page (`known_ids`: those rows known before this scan)."""
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
class ScanResult:
    """Rows of a completed scan, newest first, each id once, with what was known of them."""

    rows: list[Record]
    previous: dict[str, RecordState]
    pages: int
    vanished: list[str]


async def scan(client: ListPages, store: Store, *, page_size: int) -> ScanResult:
    """Fetch pages until the stop rule holds. Raises on any upstream error: a partial scan
    returns nothing, so nothing of it is ever committed.
    """
    pending = {s.id: s for s in await store.tracked_pending()}
    rule = StopRule(pending)
    rows: dict[str, Record] = {}
    previous: dict[str, RecordState] = {}
    offset = pages = 0
    while True:
        page = await client.list_page(offset, page_size)
        pages += 1
        fresh = [r for r in page if r.id not in rows]
        known = await store.known_states([r.id for r in fresh])
        previous.update(known)
        for record in page:
            rows[record.id] = record  # a row seen twice (drift): its latest fetch wins
        rule.observe(page, set(known))
        offset += len(page)
        if rule.done(len(page), page_size):
            return ScanResult(
                rows=_newest_first(rows.values()),
                previous=previous,
                pages=pages,
                vanished=sorted(rule.vanished),
            )


def _newest_first(rows: Iterable[Record]) -> list[Record]:
    items = list(rows)
    order = {r.id: i for i, r in enumerate(items)}
    return sorted(items, key=lambda r: (r.created_at, -order[r.id]), reverse=True)
