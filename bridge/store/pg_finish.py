"""Recording finished attempts on the PostgreSQL store, as a group commit: attempts that
finish while a write is running are recorded together in the next transaction, so many
concurrent deliveries cost few commits. With `db_clock`, each next due time is moved to the
database's clock (as far from its now as it is from this process's)."""

from __future__ import annotations

import asyncio
import time
from functools import partial

from bridge.models import Attempt, Delivery
from bridge.store import pg_claim as claims
from bridge.store.base import AttemptOutcome
from bridge.store.pg_pool import Pool
from bridge.store.pg_schema import Conn

GATHER_TURNS = 3  # turns of the event loop a batch of finished attempts waits to grow

Item = tuple[Delivery, Attempt, AttemptOutcome]


class Finisher:
    """`finish(…)`: the attempt recorded and the lease released, False if it was lost."""

    def __init__(self, db: Pool) -> None:
        self._db = db
        self._waiting: list[tuple[Item, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def finish(self, delivery: Delivery, attempt: Attempt, outcome: AttemptOutcome) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(((delivery, attempt, outcome), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # a cancelled caller cancels only its future: the batch still records the attempt
        return await future

    async def close(self) -> None:
        """Wait for the batches under way."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush(self) -> None:
        for _ in range(GATHER_TURNS):  # answers arriving meanwhile join the batch
            await asyncio.sleep(0)
        while self._waiting:
            batch, self._waiting = self._waiting, []
            items = [item for item, _ in batch]
            try:
                kept = await self._db.tx("recording attempts", partial(self._record, items))
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, kept, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _record(self, items: list[Item], conn: Conn) -> list[bool]:
        if self._db.db_clock and any(o.next_attempt_at is not None for _, _, o in items):
            offset = await self._db.now(conn, 0.0) - time.time()
            items = [(d, a, _rebased(o, offset)) for d, a, o in items]
        return await claims.finish_attempts(conn, items)


def _rebased(outcome: AttemptOutcome, offset_s: float) -> AttemptOutcome:
    if outcome.next_attempt_at is None:
        return outcome
    return AttemptOutcome(outcome.state, outcome.next_attempt_at + offset_s)
