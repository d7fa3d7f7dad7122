"""One Munsit account as the poller and progress streams see it: the store scoped to the
account (its records, baseline and sweep), and the upstream with records named by their
key (`models.record_key`), so the same Munsit id in two accounts is two records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

from bridge.models import DEFAULT_ACCOUNT, Page, Record, RecordState, record_key, split_key
from bridge.store.base import Committed, DetectionStore, ScanCommit, meta_key


class Upstream(Protocol):
    """What an account's poller and progress streams ask Munsit."""

    async def list_page(self, offset: int, limit: int) -> Page: ...

    def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]: ...


class AccountStore:
    """`DetectionStore` limited to one account: its records, its service state."""

    def __init__(self, store: DetectionStore, account: str) -> None:
        self._store = store
        self.account = account
        self.created = store.created

    async def get_meta(self, key: str) -> str | None:
        return await self._store.get_meta(meta_key(self.account, key))

    async def baseline_done(self, account: str = DEFAULT_ACCOUNT) -> bool:
        return await self._store.baseline_done(self.account)

    async def newest_created_at(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        return await self._store.newest_created_at(self.account)

    async def known_states(self, record_ids: Sequence[str]) -> dict[str, RecordState]:
        return await self._store.known_states(record_ids)

    async def tracked_pending(self, account: str | None = None) -> list[RecordState]:
        return await self._store.tracked_pending(self.account)

    async def commit_scan(self, commit: ScanCommit) -> Committed:
        meta = {meta_key(self.account, k): v for k, v in commit.meta.items()}
        return await self._store.commit_scan(replace(commit, account=self.account, meta=meta))


class AccountUpstream:
    """An account's upstream, its records named by key (the Munsit id for `default`)."""

    def __init__(self, upstream: Upstream, account: str) -> None:
        self._upstream = upstream
        self.account = account

    async def list_page(self, offset: int, limit: int) -> Page:
        page = await self._upstream.list_page(offset, limit)
        if self.account == DEFAULT_ACCOUNT:
            return page
        key = self.account
        return Page(
            (Record(record_key(key, r.id), r.status, r.created_at, r.data) for r in page),
            size=page.size,
            quarantined=[
                replace(q, record_id=None if q.record_id is None else record_key(key, q.record_id))
                for q in page.quarantined
            ],
        )

    def progress(self, record_id: str) -> AsyncIterator[dict[str, Any]]:
        return self._upstream.progress(split_key(record_id)[1])
