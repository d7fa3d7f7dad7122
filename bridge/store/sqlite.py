"""SQLite adapter of the store port: one WAL-mode file, a connection on a worker thread (and
one on the event loop's thread for the delivery hot path, see `sqlite_inline`). The files,
their modes and the one-process lock are in `sqlite_file`; the schema in `sqlite_schema`."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from bridge.errors import StoreError
from bridge.models import (
    ALL_DELIVERIES,
    DEFAULT_ACCOUNT,
    Attempt,
    Callback,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliveryView,
    Event,
    Job,
    RecordState,
    Replayed,
    Report,
)
from bridge.store import sqlite_claim as claims
from bridge.store import sqlite_file as files
from bridge.store import sqlite_jobs
from bridge.store import sqlite_ops as ops
from bridge.store import sqlite_retention as retention
from bridge.store.base import (
    BASELINE_MARK,
    AttemptOutcome,
    Committed,
    FeedPage,
    ScanCommit,
    SubscriberHealth,
    meta_key,
)
from bridge.store.claims_common import Claimed
from bridge.store.sqlite_file import StoreLocked
from bridge.store.sqlite_inline import Busy, InlineWriter
from bridge.store.sqlite_open import explain, open_store
from bridge.store.sqlite_scan import commit_scan
from bridge.store.sqlite_schema import MIGRATIONS, in_transaction

__all__ = ["MIGRATIONS", "SqliteStore", "StoreLocked"]

T = TypeVar("T")

# `account`'s newest record, by the index records_account
NEWEST_CREATED = "SELECT created_at FROM records WHERE account = ? ORDER BY created_at DESC LIMIT 1"
GATHER_TURNS = 3  # turns of the event loop a batch of finished attempts waits to grow
DEFAULT_MAX_ATTEMPTS = 8  # 1 + len(delivery.retry_schedule_s) with the default schedule


class SqliteStore:
    """The `Store` port on a SQLite file. All SQL of the project lives here.

    `exclusive` (for `run`): hold the file's lock (`StoreLocked` when another process has
    it). `max_attempts`: a delivery whose lease runs out with no outcome counts an attempt,
    and is dead-lettered after this many (1 + len(delivery.retry_schedule_s)).
    After `open()`, `created` says whether the store was new (no schema yet)."""

    busy_timeout_s = 5.0  # how long a write waits for another connection's lock
    shared = False  # one process per file (its lock file says which)

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float | None = None,
        exclusive: bool = False,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.path = path
        if busy_timeout_s is not None:
            self.busy_timeout_s = busy_timeout_s
        self.exclusive = exclusive
        self.max_attempts = max_attempts
        self.created = False
        self.store_id: str | None = None
        self._lock: files.LockFile | None = None
        self._identity: tuple[int, int] | None = None
        self._purged_up_to = 0  # events up to this seq were looked at by purges
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._finished: list[tuple[Delivery, Attempt, AttemptOutcome, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inline: InlineWriter | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self.checkpoints = 0

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"store {self.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {self._explain(exc)}") from exc

    def _explain(self, exc: sqlite3.Error) -> str:
        return explain(self.path, self.busy_timeout_s, exc)

    def _check_file(self) -> None:
        """`StoreError` if the database file was deleted or replaced since it was opened:
        writes to it would go to a file nobody will read again."""
        if self._identity is not None:
            files.check_identity(self.path, self._identity)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside BEGIN IMMEDIATE … COMMIT, rolling back on any error."""
        self._check_file()
        return await self._run(partial(in_transaction, fn))

    async def _hot_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`_tx` for the delivery hot path: on the event loop's thread when the write lock is
        free at once (see `sqlite_inline`), else on the worker thread, which waits for it."""
        self._check_file()
        inline = self._inline
        if inline is not None:
            try:
                result = inline.try_run(fn)
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {self._explain(exc)}") from exc
            if not isinstance(result, Busy):
                if inline.checkpoint_due and (self._checkpoint is None or self._checkpoint.done()):
                    self._checkpoint = asyncio.create_task(self._checkpoint_wal())
                return result
        return await self._run(partial(in_transaction, fn))  # the file was checked above

    async def _checkpoint_wal(self) -> None:
        """Copy the write-ahead log into the database without blocking anyone (PASSIVE)."""
        try:
            await self._run(lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            self.checkpoints += 1
        except StoreError:
            pass  # the next one tries again; SQLite's own checkpoints still run

    async def open(self) -> None:
        """Create or migrate the store. Exclusive: take the lock first. Refuses a database
        that is not the store the lock file records (deleted, replaced)."""
        loop = asyncio.get_running_loop()
        connect = partial(
            open_store, self.path, busy_timeout_s=self.busy_timeout_s, exclusive=self.exclusive
        )
        try:
            opened = await loop.run_in_executor(self._executor, connect)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {self._explain(exc)}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._conn, self._lock, self._identity = opened.conn, opened.lock, opened.identity
        self.created, self.store_id = opened.created, opened.store_id
        try:
            self._inline = InlineWriter(self.path)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"cannot open store {self.path}: {self._explain(exc)}") from exc

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        if self._inline is not None:
            inline, self._inline = self._inline, None
            inline.close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    async def ping(self) -> None:
        """Raise `StoreError` unless the store answers and its file is still the one opened."""
        self._check_file()
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def get_meta(self, key: str) -> str | None:
        row = await self._run(
            lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def baseline_done(self, account: str = DEFAULT_ACCOUNT) -> bool:
        return await self.get_meta(meta_key(account, BASELINE_MARK)) is not None

    async def newest_created_at(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        """By the index records_account (a lookup, however many records there are)."""
        row = await self._run(lambda c: c.execute(NEWEST_CREATED, (account,)).fetchone())
        return None if row is None else str(row[0])

    async def known_states(self, record_ids: Sequence[str]) -> dict[str, RecordState]:
        ids = list(dict.fromkeys(record_ids))

        def query(conn: sqlite3.Connection) -> dict[str, RecordState]:
            found: dict[str, RecordState] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for rid, status, created in conn.execute(
                    f"SELECT id, status, created_at FROM records WHERE id IN ({marks})", chunk
                ):
                    found[rid] = RecordState(rid, status, created)
            return found

        return await self._run(query)

    async def tracked_pending(self, account: str | None = None) -> list[RecordState]:
        of_account = "" if account is None else " AND account = ?"
        query = (
            "SELECT id, status, created_at FROM records WHERE status NOT IN"
            f" ('success', 'failed') AND gone_at IS NULL{of_account} ORDER BY created_at DESC"
        )
        params = () if account is None else (account,)
        rows = await self._run(lambda c: c.execute(query, params).fetchall())
        return [RecordState(*row) for row in rows]

    async def commit_scan(self, commit: ScanCommit) -> Committed:
        return await self._tx(partial(commit_scan, commit))

    async def claim_due(
        self,
        *,
        now: float,
        limit: int,
        lease_s: float,
        subscribers: Sequence[str],
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        subs = list(subscribers)
        if not subs or limit <= 0:
            return []
        claim = partial(claims.claim, subscribers=subs, limit=limit, on_dead=on_dead)
        return await self._lease(claim, now=now, lease_s=lease_s)

    async def claim_lanes(
        self,
        *,
        now: float,
        lease_s: float,
        rooms: Sequence[tuple[str, int]],
        caps: Mapping[str, int] | None = None,
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        claim = partial(claims.claim_lanes, rooms=rooms, caps=caps, on_dead=on_dead)
        return await self._lease(claim, now=now, lease_s=lease_s, hot=True)

    async def _lease(
        self, claim: Callable[..., Claimed], *, now: float, lease_s: float, hot: bool = False
    ) -> list[Delivery]:
        """Run `claim` (a `sqlite_claim` function of a connection) in a transaction with a
        fresh lease token, until `now + lease_s`; log the leases it found lost."""
        token, max_attempts = uuid.uuid4().hex, self.max_attempts

        def run(conn: sqlite3.Connection) -> Claimed:
            until = now + lease_s
            return claim(conn, now=now, until=until, token=token, max_attempts=max_attempts)

        claimed = await (self._hot_tx(run) if hot else self._tx(run))
        claims.log_lost(claimed.lost)
        return claimed.deliveries

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, outcome: AttemptOutcome
    ) -> bool:
        """Group commit: attempts that finish while a write is running are recorded together
        in the next transaction, so many concurrent deliveries cost few commits."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finished.append((delivery, attempt, outcome, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_finished())
        # a cancelled caller cancels only its future: the batch still records the attempt
        return await future

    async def _flush_finished(self) -> None:
        for _ in range(GATHER_TURNS):  # answers arriving meanwhile join the batch
            await asyncio.sleep(0)
        while self._finished:
            batch, self._finished = self._finished, []
            try:
                kept = await self._hot_tx(
                    partial(claims.finish_attempts, [(d, a, o) for d, a, o, _ in batch])
                )
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), result in zip(batch, kept, strict=True):
                if not future.done():
                    future.set_result(result)

    async def next_due_at(self, subscribers: Sequence[str]) -> float | None:
        subs = list(subscribers)
        if not subs:
            return None
        return await self._run(lambda c: claims.next_due_at(c, subs))

    async def list_deliveries(
        self,
        *,
        where: DeliveryFilter = ALL_DELIVERIES,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryView]:
        return await self._run(lambda c: ops.list_deliveries(c, where, limit, before))

    async def get_delivery(self, delivery_id: int) -> DeliveryView | None:
        return await self._run(lambda c: ops.get_delivery(c, delivery_id))

    async def events_after(
        self, *, after_seq: int | None, limit: int, event_type: str | None = None
    ) -> FeedPage:
        return await self._run(lambda c: ops.events_after(c, after_seq, limit, event_type))

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        limit: int = 100,
        before: str | None = None,
        record_id: str | None = None,
    ) -> list[Event] | None:
        return await self._run(lambda c: ops.list_events(c, event_type, limit, before, record_id))

    async def retry(self, delivery_id: int, *, now: float) -> DeliveryState | None:
        return await self._tx(lambda c: ops.retry(c, delivery_id, now))

    async def retry_failed(
        self, where: DeliveryFilter, *, now: float, subscribers: Sequence[str]
    ) -> int:
        subs = list(subscribers)
        return await self._tx(lambda c: ops.retry_failed(c, where, now, subs))

    async def replay(
        self,
        *,
        since: float,
        event_type: str | None,
        targets: Callable[[str, str], Sequence[str]],
        now: float,
    ) -> Replayed:
        return await self._tx(lambda c: ops.replay(c, since, event_type, targets, now))

    async def release(self, delivery: Delivery, *, now: float) -> bool:
        return await self._tx(lambda c: claims.release(c, delivery.id, delivery.lease_token, now))

    async def counts_by_subscriber(self) -> dict[str, dict[DeliveryState, int]]:
        return await self._run(ops.counts_by_subscriber)

    async def subscriber_health(self) -> dict[str, SubscriberHealth]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT id, failing_since, disabled_at, reason FROM subscriber_health"
            ).fetchall()
        )
        return {row[0]: SubscriberHealth(*row[1:]) for row in rows}

    async def set_subscriber_health(
        self,
        subscriber_id: str,
        health: SubscriberHealth,
        *,
        keep_disabled: bool = False,
        report: Report | None = None,
    ) -> bool:
        return await self._tx(
            lambda c: ops.set_subscriber_health(c, subscriber_id, health, keep_disabled, report)
        )

    async def count_deliveries(self) -> dict[DeliveryState, int]:
        """Deliveries by state, from the counters the store keeps (not a scan)."""
        return await self._run(ops.count_deliveries)

    async def purge(self, *, now: float, retention_s: float, batch: int = 500) -> int:
        """One step of retention: delete up to `batch` expired deliveries (delivered ones
        older than `retention_s`, dead letters and orphans older than twice that) with their
        attempts, and up to `batch` events older than `retention_s` with no delivery left,
        in short transactions, and up to `batch` gateway jobs submitted more than twice
        `retention_s` ago that have no delivery left. Returns the deliveries, events and
        jobs deleted; fewer than `batch` means nothing more is due now. Record states are
        kept."""
        kept_after, dead_after = now - retention_s, now - 2 * retention_s
        deliveries, events = await self._tx(
            lambda c: retention.purge_deliveries(
                c, kept_after=kept_after, dead_after=dead_after, batch=batch
            )
        )
        found: list[int] = []
        done, after = False, self._purged_up_to
        while not done and len(found) < batch:  # reads; other queries go between them
            scan = partial(
                retention.lone_events,
                after_seq=after,
                kept_after=kept_after,
                limit=batch - len(found),
            )
            seqs, after, done = await self._run(scan)
            found += seqs
        if found:
            events += await self._tx(
                lambda c: retention.delete_events(c, found, kept_after=kept_after)
            )
        self._purged_up_to = after
        jobs = await self._tx(
            lambda c: sqlite_jobs.purge_jobs(c, submitted_before=dead_after, batch=batch)
        )
        return deliveries + events + jobs

    async def reconcile_subscribers(
        self, configured: Sequence[str], *, now: float
    ) -> tuple[int, int]:
        """Set aside (`orphaned`) the pending deliveries of subscribers not in `configured`,
        and make orphaned ones of configured subscribers pending again, due `now`. Returns
        (orphaned, restored)."""
        ids = list(configured)
        return await self._tx(lambda c: retention.reconcile_subscribers(c, ids, now))

    async def register_job(self, job: Job, *, now: float) -> int:
        """Insert the job unless its record has one, and queue (due `now`) its callback's
        deliveries of the record's events already stored, in one transaction."""
        _, queued = await self._tx(partial(sqlite_jobs.register, job, now))
        return queued

    async def job(self, record_id: str) -> Job | None:
        return await self._run(lambda c: sqlite_jobs.get_job(c, record_id))

    async def client_jobs(
        self, client_id: str, *, limit: int, before: str | None = None
    ) -> list[Job]:
        return await self._run(lambda c: sqlite_jobs.client_jobs(c, client_id, limit, before))

    async def callbacks(self, record_ids: Sequence[str]) -> dict[str, tuple[str, Callback]]:
        ids = list(record_ids)
        return await self._run(lambda c: sqlite_jobs.callbacks(c, ids))

    async def claim_jobs(
        self,
        *,
        now: float,
        lease_s: float,
        limit: int,
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        if limit <= 0:
            return []
        claim = partial(claims.claim_jobs, limit=limit, on_dead=on_dead)
        return await self._lease(claim, now=now, lease_s=lease_s)

    async def next_job_due_at(self) -> float | None:
        return await self._run(claims.next_job_due_at)
