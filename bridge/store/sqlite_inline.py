"""The delivery hot path's short write transactions (claims, batches of attempts), run on the
event loop's own thread when the write lock is free at once.

A transaction that went to the store's worker thread paid a thread hop and handed the
interpreter lock back and forth with the event loop; these are a fraction of a millisecond.
This connection never waits for the lock (busy timeout 0): when another connection holds it,
the caller sends the transaction to the worker thread, which waits. Nor does it checkpoint the
write-ahead log (that can take a disk flush): the store has the worker thread do it every
`CHECKPOINT_EVERY` commits made here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CHECKPOINT_EVERY = 500


class Busy:
    """Another connection holds the write lock: nothing was done."""


BUSY = Busy()


def commit_or_roll_back(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """`fn` in the transaction just begun, then COMMIT; on any error (COMMIT's own included)
    the transaction is rolled back, unless SQLite already did (it does on SQLITE_FULL and some
    I/O errors), so the first error is the one raised and the connection is left usable."""
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


class InlineWriter:
    """A second connection to the store's file, used only from the event loop's thread."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=0.0)
        try:
            for pragma in (
                "busy_timeout = 0",
                "synchronous = NORMAL",
                "foreign_keys = ON",
                "wal_autocheckpoint = 0",
            ):
                self._conn.execute(f"PRAGMA {pragma}")
        except BaseException:
            self._conn.close()
            raise
        self.commits = 0

    def try_run(self, fn: Callable[[sqlite3.Connection], T]) -> T | Busy:
        """`fn` inside BEGIN IMMEDIATE … COMMIT and its result, or `BUSY`, having done nothing,
        when another connection holds the write lock."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                return BUSY
            raise
        result = commit_or_roll_back(conn, fn)
        self.commits += 1
        return result

    @property
    def checkpoint_due(self) -> bool:
        return self.commits % CHECKPOINT_EVERY == 0

    def close(self) -> None:
        self._conn.close()
