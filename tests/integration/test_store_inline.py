"""The hot path's write transactions on the event loop's thread: they never wait for another
connection's lock (the worker thread does), roll back whole, and the log gets checkpointed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from bridge.errors import StoreError
from bridge.models import Attempt, DeliveryState, Event
from bridge.store import sqlite_inline
from bridge.store.base import AttemptOutcome, ScanCommit
from bridge.store.sqlite import SqliteStore


def event(n: int) -> Event:
    return Event(f"evt_{n}", "denoise.completed", f"r{n}", float(n), None, {"id": f"r{n}"})


async def test_a_claim_waits_on_the_worker_thread_while_another_connection_writes(
    store: SqliteStore, tmp_path: Path
) -> None:
    await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=1.0))
    other = sqlite3.connect(tmp_path / "b.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO meta (key, value) VALUES ('other', 'x')")
    claim = asyncio.create_task(store.claim_lanes(now=1.0, lease_s=30, rooms=[("a", 5)]))
    started = time.perf_counter()
    await asyncio.sleep(0)  # the claim tries the loop's connection, then goes to the thread
    assert time.perf_counter() - started < 1.0  # the loop never waited for the lock (5 s)
    assert not claim.done()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, other.execute, "COMMIT")
    [claimed] = await asyncio.wait_for(claim, 5)
    assert claimed.event.id == "evt_1"
    assert await store.get_meta("other") == "x"
    other.close()


async def test_a_failed_transaction_changes_nothing_and_says_why(store: SqliteStore) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('half', 'done')")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StoreError, match="no such table"):
        await store._hot_tx(half_then_fail)
    assert await store.get_meta("half") is None
    await store.commit_scan(ScanCommit([], [(event(2), ["a"])], now=2.0))  # still usable
    assert len(await store.claim_lanes(now=2.0, lease_s=30, rooms=[("a", 5)])) == 1


async def test_the_log_is_checkpointed_every_so_many_commits(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_inline, "CHECKPOINT_EVERY", 10)
    await store.commit_scan(ScanCommit([], [(event(n), ["a"]) for n in range(25)], now=1.0))
    done = AttemptOutcome(DeliveryState.DELIVERED)
    for _ in range(25):
        [d] = await store.claim_lanes(now=1.0, lease_s=30, rooms=[("a", 1)])
        assert await store.finish_attempt(d, Attempt(1.0, 200, 1.0, None, "ok"), done)
        if store._checkpoint is not None:  # one at a time: let it end before the next is due
            await store._checkpoint
    await store.close()
    assert store.checkpoints == 5  # 50 commits on the loop's thread
    check = sqlite3.connect(tmp_path / "b.db")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert check.execute("SELECT COUNT(*) FROM attempts").fetchone() == (25,)
    check.close()


async def test_attempts_answered_a_few_turns_apart_share_one_transaction(
    store: SqliteStore,
) -> None:
    await store.commit_scan(ScanCommit([], [(event(n), ["a"]) for n in range(3)], now=1.0))
    claimed = await store.claim_lanes(now=1.0, lease_s=30, rooms=[("a", 3)])
    assert store._inline is not None
    before = store._inline.commits
    done = AttemptOutcome(DeliveryState.DELIVERED)

    async def answered_later(turns: int, n: int) -> bool:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await store.finish_attempt(claimed[n], Attempt(1.0, 200, 1.0, None, "ok"), done)

    assert await asyncio.gather(*(answered_later(turn, turn) for turn in range(3))) == [True] * 3
    assert store._inline.commits == before + 1
