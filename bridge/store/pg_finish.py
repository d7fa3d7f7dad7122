"""Recording finished attempts on the PostgreSQL store, as a group commit: attempts that
finish while a write is running are recorded together in the next transaction, so many
concurrent deliveries cost few commits. With `db_clock`, each next due time is moved to the
database's clock (as far from its now as it is from this process's).

An outcome's report (`AttemptOutcome.report`) is stored in the same transaction when its
attempt is recorded (the lease still held), and not when it is not; a batch with a report
takes the scan lock first, as a scan's commit does (events numbered in commit order).

A batch the database refuses for its data (a value out of range: text is made storable
before) is recorded again one attempt per transaction, so that one bad attempt fails alone
instead of failing, again and again, every attempt that happened to share its batch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from functools import partial

import psycopg

from bridge.errors import StoreError
from bridge.models import Attempt, Delivery, Report
from bridge.store import pg_claim as claims
from bridge.store import pg_scan as scans
from bridge.store.base import AttemptOutcome
from bridge.store.pg_listen import EVENTS, OUTBOX, notify
from bridge.store.pg_pool import Pool
from bridge.store.pg_schema import Conn

GATHER_TURNS = 3  # turns of the event loop a batch of finished attempts waits to grow
CLOSE_S = 2.0  # how long closing waits for the batch under way (a dead server: not longer)
CANCEL_WAITS_S = (0.5, 1.0)  # then, after each cancellation of it, how long it has to end

Item = tuple[Delivery, Attempt, AttemptOutcome]
Waiting = tuple[Item, asyncio.Future[bool]]


class Finisher:
    """`finish(…)`: the attempt recorded and the lease released, False if it was lost."""

    def __init__(self, db: Pool) -> None:
        self._db = db
        self.channel = ""  # where reports' wake-ups go (set when the store opens)
        self._waiting: list[Waiting] = []
        self._flusher: asyncio.Task[None] | None = None

    async def finish(self, delivery: Delivery, attempt: Attempt, outcome: AttemptOutcome) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(((delivery, attempt, outcome), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # a cancelled caller cancels only its future: the batch still records the attempt
        return await future

    async def close(self) -> None:
        """Wait for the batches under way, `CLOSE_S` at most; then they fail (the store is
        closing). A batch whose query hangs is cancelled twice: the driver answers the
        first by asking the server to cancel the query, which a server that stopped
        answering never does, and the second by closing the connection."""
        flusher = self._flusher
        if flusher is None:
            return
        await asyncio.wait({flusher}, timeout=CLOSE_S)
        for patience_s in CANCEL_WAITS_S:
            if flusher.done():
                break
            flusher.cancel()
            await asyncio.wait({flusher}, timeout=patience_s)
        closed = StoreError(f"store {self._db.where} is closed")
        for _, future in self._waiting:
            if not future.done():
                future.set_exception(closed)
        self._waiting = []

    async def _flush(self) -> None:
        for _ in range(GATHER_TURNS):  # answers arriving meanwhile join the batch
            await asyncio.sleep(0)
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._record(batch)
            except asyncio.CancelledError:
                _settle(batch, StoreError(f"store {self._db.where} is closed"))
                raise

    async def _record(self, batch: list[Waiting]) -> None:
        """Record `batch` and settle its futures; one by one if the database refused its
        data."""
        try:
            kept = await self._tx([item for item, _ in batch])
        except StoreError as exc:
            if len(batch) > 1 and isinstance(exc.__cause__, psycopg.DataError):
                for one in batch:
                    await self._record([one])
                return
            _settle(batch, exc)
            return
        except Exception as exc:
            _settle(batch, exc)
            return
        for (_, future), result in zip(batch, kept, strict=True):
            if not future.done():
                future.set_result(result)

    async def _tx(self, items: list[Item]) -> list[bool]:
        return await self._db.tx("recording attempts", partial(self._write, items))

    async def _write(self, items: list[Item], conn: Conn) -> list[bool]:
        reports = any(o.report is not None for _, _, o in items)
        if reports:  # first, as scans do: events are numbered in the order they commit
            await scans.serialize(conn)
        if self._db.db_clock and any(o.next_attempt_at is not None for _, _, o in items):
            offset = await self._db.now(conn, 0.0) - time.time()
            items = [(d, a, _rebased(o, offset)) for d, a, o in items]
        kept = await claims.finish_attempts(conn, items)
        if reports:
            for (_, tried, outcome), recorded in zip(items, kept, strict=True):
                if recorded and outcome.report is not None:
                    due_at = await self._db.now(conn, tried.attempted_at)
                    await store_report(
                        conn, self.channel, outcome.report, due_at=due_at, at=tried.attempted_at
                    )
        return kept


async def store_report(
    conn: Conn, channel: str, report: Report, *, due_at: float, at: float
) -> bool:
    """Store the bridge's `report` in the caller's transaction, which holds the scan lock
    (`pg_scan.serialize`): its event and a delivery to each target, due at `due_at` (the
    database's clock with `db_clock`), created at `at`; nothing when its event id is
    recorded already. Wakes the replicas' dispatchers and the pull feed's waiters. Not
    fenced by the poller's lease: any replica may report. Whether it was stored."""
    created, recorded = await scans.insert_report(conn, report, due_at=due_at, at=at)
    if created:
        await notify(conn, channel, OUTBOX)
    if recorded:
        await notify(conn, channel, EVENTS)
    return recorded


def _settle(batch: list[Waiting], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _rebased(outcome: AttemptOutcome, offset_s: float) -> AttemptOutcome:
    if outcome.next_attempt_at is None:
        return outcome
    return replace(outcome, next_attempt_at=outcome.next_attempt_at + offset_s)
