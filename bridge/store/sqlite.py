"""SQLite adapter of the store port: one WAL-mode file, a connection on a worker thread (and
one on the event loop's thread for the delivery hot path, see `sqlite_inline`)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from bridge.errors import StoreError
from bridge.models import (
    Attempt,
    Delivery,
    DeliveryState,
    DeliveryView,
    Event,
    RecordState,
    Replayed,
)
from bridge.store import sqlite_ops as ops
from bridge.store.base import (
    BASELINE_MARK,
    AttemptOutcome,
    Committed,
    ScanCommit,
    SubscriberHealth,
)
from bridge.store.sqlite_inline import Busy, InlineWriter, commit_or_roll_back

T = TypeVar("T")

GATHER_TURNS = 3  # turns of the event loop a batch of finished attempts waits to grow

# I/O errors of a file that cannot grow: what a full disk or a file-size limit looks like
_GROWTH_ERRORS = frozenset({"SQLITE_IOERR_WRITE", "SQLITE_IOERR_SHMSIZE", "SQLITE_IOERR_TRUNCATE"})

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE records (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        seen_at REAL NOT NULL
    );
    CREATE INDEX records_open ON records (created_at) WHERE status NOT IN ('success', 'failed');
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        record_id TEXT NOT NULL,
        occurred_at REAL NOT NULL,
        previous_status TEXT,
        data TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq INTEGER NOT NULL REFERENCES events (seq),
        subscriber_id TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_until REAL,
        lease_token TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (event_seq, subscriber_id)
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
        attempted_at REAL NOT NULL,
        status_code INTEGER,
        latency_ms REAL NOT NULL,
        error TEXT,
        response_excerpt TEXT NOT NULL
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id);
    """,
    """
    CREATE INDEX records_created ON records (created_at);
    """,
    """
    CREATE TABLE subscriber_health (
        id TEXT PRIMARY KEY,
        failing_since REAL,
        disabled_at REAL,
        reason TEXT
    );
    """,
    """
    CREATE INDEX events_record ON events (record_id, seq);
    CREATE INDEX deliveries_lane ON deliveries (subscriber_id, state, event_seq);
    """,
    """
    CREATE INDEX deliveries_claim ON deliveries (subscriber_id, next_attempt_at, id)
        WHERE state = 'pending';
    """,
    """
    DROP INDEX deliveries_due;
    DROP INDEX deliveries_lane;
    """,
    # a record missing from the list is first marked missed, and only if it is missed again
    # at the next scan is it gone (a tombstone keeping its last status, not tracked)
    """
    ALTER TABLE records ADD COLUMN missed_at REAL;
    ALTER TABLE records ADD COLUMN gone_at REAL;
    DROP INDEX records_open;
    CREATE INDEX records_open ON records (created_at)
        WHERE status NOT IN ('success', 'failed') AND gone_at IS NULL;
    """,
)


class SqliteStore:
    """The `Store` port on a SQLite file. All SQL of the project lives here."""

    busy_timeout_s = 5.0  # how long a write waits for another connection's lock

    def __init__(self, path: Path, *, busy_timeout_s: float | None = None) -> None:
        self.path = path
        if busy_timeout_s is not None:
            self.busy_timeout_s = busy_timeout_s
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
        """SQLite's message, with what it means for the operator when that is not obvious."""
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return f"{exc}: another connection holds its lock (waited {self.busy_timeout_s:g} s)"
        if name.startswith("SQLITE_READONLY"):
            return f"{exc}: the file or its directory is read-only for this process"
        if name == "SQLITE_FULL":
            return f"disk full ({exc})"
        if name in _GROWTH_ERRORS:
            return f"{exc} while writing (is the disk full?)"
        if name.startswith("SQLITE_CANTOPEN") and not os.access(self.path.parent, os.W_OK):
            return f"{exc}: its directory {self.path.parent} is read-only for this process"
        return str(exc)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside BEGIN IMMEDIATE … COMMIT, rolling back on any error."""
        return await self._run(partial(_in_transaction, fn))

    async def _hot_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`_tx` for the delivery hot path: on the event loop's thread when the write lock is
        free at once (see `sqlite_inline`), else on the worker thread, which waits for it."""
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
        return await self._tx(fn)

    async def _checkpoint_wal(self) -> None:
        """Copy the write-ahead log into the database without blocking anyone (PASSIVE)."""
        try:
            await self._run(lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())
            self.checkpoints += 1
        except StoreError:
            pass  # the next one tries again; SQLite's own checkpoints still run

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout_s,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode {mode})")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                _migrate(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, connect)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {self._explain(exc)}") from exc
        except OSError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        try:
            self._inline = InlineWriter(self.path)
        except sqlite3.Error as exc:
            conn, self._conn = self._conn, None
            await loop.run_in_executor(self._executor, conn.close)
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

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def get_meta(self, key: str) -> str | None:
        row = await self._run(
            lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def baseline_done(self) -> bool:
        return await self.get_meta(BASELINE_MARK) is not None

    async def newest_created_at(self) -> str | None:
        row = await self._run(lambda c: c.execute("SELECT MAX(created_at) FROM records").fetchone())
        return None if row[0] is None else str(row[0])

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

    async def tracked_pending(self) -> list[RecordState]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT id, status, created_at FROM records WHERE status NOT IN"
                " ('success', 'failed') AND gone_at IS NULL ORDER BY created_at DESC"
            ).fetchall()
        )
        return [RecordState(*row) for row in rows]

    async def commit_scan(self, commit: ScanCommit) -> Committed:
        def write(conn: sqlite3.Connection) -> Committed:
            conn.executemany(
                "INSERT INTO records (id, status, created_at, seen_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
                " seen_at = excluded.seen_at, missed_at = NULL, gone_at = NULL",
                [(s.id, s.status, s.created_at, commit.now) for s in commit.states],
            )
            conn.executemany(
                "UPDATE records SET seen_at = ?, missed_at = NULL, gone_at = NULL WHERE id = ?",
                [(commit.now, rid) for rid in commit.seen],
            )
            forgotten = _forget(conn, commit)
            for key, value in commit.meta.items():
                if value is None:
                    conn.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
            created = 0
            recorded: set[str] = set()
            for event, subscribers in commit.events:
                cur = conn.execute(
                    "INSERT INTO events (id, type, record_id, occurred_at, previous_status, data) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (
                        event.id,
                        event.type,
                        event.record_id,
                        event.occurred_at,
                        event.previous_status,
                        json.dumps(event.data, separators=(",", ":")),
                    ),
                )
                if cur.rowcount == 0:
                    continue  # the same event id was recorded before: never deliver it twice
                recorded.add(event.id)
                seq = cur.lastrowid
                for sub in subscribers:
                    conn.execute(
                        "INSERT INTO deliveries (event_seq, subscriber_id, state, next_attempt_at,"
                        " created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                        (seq, sub, commit.now, commit.now, commit.now),
                    )
                    created += 1
            return Committed(created, forgotten, frozenset(recorded))

        return await self._tx(write)

    async def claim_due(
        self, *, now: float, limit: int, lease_s: float, subscribers: Sequence[str]
    ) -> list[Delivery]:
        subs = list(subscribers)
        if not subs or limit <= 0:
            return []
        token = uuid.uuid4().hex
        return await self._tx(
            lambda c: ops.claim(c, subs, limit, now=now, until=now + lease_s, token=token)
        )

    async def claim_lanes(
        self, *, now: float, lease_s: float, rooms: Sequence[tuple[str, int]]
    ) -> list[Delivery]:
        token = uuid.uuid4().hex

        return await self._hot_tx(
            lambda c: ops.claim_lanes(c, rooms, now=now, until=now + lease_s, token=token)
        )

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
                    partial(ops.finish_attempts, [(d, a, o) for d, a, o, _ in batch])
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
        marks = ",".join("?" * len(subs))
        row = await self._run(
            lambda c: c.execute(
                "SELECT MIN(MAX(d.next_attempt_at, COALESCE(d.lease_until, 0)))"
                " FROM deliveries d JOIN events e ON e.seq = d.event_seq"
                f" WHERE d.state = 'pending' AND d.subscriber_id IN ({marks}) AND {ops.IN_ORDER}",
                subs,
            ).fetchone()
        )
        value = row[0]
        return float(value) if value is not None else None

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        subscriber: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryView]:
        return await self._run(lambda c: ops.list_deliveries(c, state, subscriber, limit, before))

    async def get_delivery(self, delivery_id: int) -> DeliveryView | None:
        return await self._run(lambda c: ops.get_delivery(c, delivery_id))

    async def list_events(
        self, *, event_type: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[Event] | None:
        return await self._run(lambda c: ops.list_events(c, event_type, limit, before))

    async def retry(self, delivery_id: int, *, now: float) -> DeliveryState | None:
        return await self._tx(lambda c: ops.retry(c, delivery_id, now))

    async def replay(
        self,
        *,
        since: float,
        event_type: str | None,
        targets: Callable[[str], Sequence[str]],
        now: float,
    ) -> Replayed:
        return await self._tx(lambda c: ops.replay(c, since, event_type, targets, now))

    async def release(self, delivery: Delivery, *, now: float) -> bool:
        return await self._tx(lambda c: ops.release(c, delivery.id, delivery.lease_token, now))

    async def counts_by_subscriber(self) -> dict[str, dict[DeliveryState, int]]:
        return await self._run(ops.counts_by_subscriber)

    async def subscriber_health(self) -> dict[str, SubscriberHealth]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT id, failing_since, disabled_at, reason FROM subscriber_health"
            ).fetchall()
        )
        return {row[0]: SubscriberHealth(*row[1:]) for row in rows}

    async def set_subscriber_health(self, subscriber_id: str, health: SubscriberHealth) -> None:
        await self._tx(
            lambda c: c.execute(
                "INSERT INTO subscriber_health (id, failing_since, disabled_at, reason)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " failing_since = excluded.failing_since, disabled_at = excluded.disabled_at,"
                " reason = excluded.reason",
                (subscriber_id, health.failing_since, health.disabled_at, health.reason),
            )
        )

    async def count_deliveries(self) -> dict[DeliveryState, int]:
        rows = await self._run(
            lambda c: c.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        )
        counts = dict.fromkeys(DeliveryState, 0)
        counts.update({DeliveryState(state): n for state, n in rows})
        return counts


def _forget(conn: sqlite3.Connection, commit: ScanCommit) -> list[str]:
    """Records missing from the list: missed twice in a row, or not seen by a whole sweep,
    they are gone (kept as tombstones, so one that comes back is compared with its last
    status); missed once, they are only marked. Returns the ids gone now."""
    gone: list[str] = []
    for rid in commit.removed:
        row = conn.execute(
            "UPDATE records SET gone_at = ? WHERE id = ? AND missed_at IS NOT NULL"
            " AND gone_at IS NULL RETURNING id",
            (commit.now, rid),
        ).fetchone()
        if row is not None:
            gone.append(rid)
        else:
            conn.execute(
                "UPDATE records SET missed_at = ? WHERE id = ? AND missed_at IS NULL",
                (commit.now, rid),
            )
    if commit.forget_unseen_before is not None:
        gone += [
            row[0]
            for row in conn.execute(
                "UPDATE records SET gone_at = ? WHERE seen_at < ? AND gone_at IS NULL RETURNING id",
                (commit.now, commit.forget_unseen_before),
            ).fetchall()
        ]
    return gone


def _in_transaction(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """`fn` inside BEGIN IMMEDIATE … COMMIT (see `commit_or_roll_back`)."""
    conn.execute("BEGIN IMMEDIATE")
    return commit_or_roll_back(conn, fn)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to the newest version, each step in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this bridge knows ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        statements = [s for s in script.split(";") if s.strip()]
        _in_transaction(partial(_apply, statements, number), conn)


def _apply(statements: list[str], version: int, conn: sqlite3.Connection) -> None:
    for statement in statements:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
