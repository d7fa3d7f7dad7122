"""Opening the SQLite store: the lock (exclusive use), private files, the store-id check,
the connection's settings and the schema. Runs on the store's worker thread."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bridge.store import sqlite_file as files
from bridge.store.sqlite_schema import migrate, read_store_id, schema_version

# I/O errors of a file that cannot grow: what a full disk or a file-size limit looks like
_GROWTH_ERRORS = frozenset({"SQLITE_IOERR_WRITE", "SQLITE_IOERR_SHMSIZE", "SQLITE_IOERR_TRUNCATE"})


@dataclass(frozen=True, slots=True)
class Opened:
    conn: sqlite3.Connection
    lock: files.LockFile | None  # held while the store is open (exclusive use)
    created: bool  # the store is new: it had no schema
    store_id: str | None
    identity: tuple[int, int]  # (device, inode) of the database file opened


def open_store(path: Path, *, busy_timeout_s: float, exclusive: bool) -> Opened:
    """Connect to the store at `path` (creating it and its directories, private to this
    user), migrated to the newest schema. `exclusive`: take its lock first and record this
    process's pid and the store's id in it. Refuses a database that is not the store the
    lock file records."""
    files.make_dirs(path.parent)
    lock_path = files.lock_path(path)
    lock = files.LockFile.acquire(lock_path, path) if exclusive else None
    try:
        recorded = (lock.recorded() if lock else files.read_record(lock_path)).get("store")
        if not path.exists():
            files.check_store_id(path, lock_path, recorded, None)
        # before SQLite would make it 0644 (its -wal and -shm follow its mode); SQLite deletes
        # the log an earlier file of the name may have left, as the new one has no pages
        files.create_private(path)
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            created = schema_version(conn) == 0
            if recorded is not None:
                found = None if created else (read_store_id(conn) or "(none)")
                files.check_store_id(path, lock_path, recorded, found)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn)
            store_id = read_store_id(conn)
            identity = files.identity(path)
            if lock is not None and store_id is not None:
                lock.record(pid=os.getpid(), store_id=store_id)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Opened(conn, lock, created, store_id, identity)


def explain(path: Path, busy_timeout_s: float, exc: sqlite3.Error) -> str:
    """SQLite's message, with what it means for the operator when that is not obvious."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"{exc}: another connection holds its lock (waited {busy_timeout_s:g} s)"
    if name.startswith("SQLITE_READONLY"):
        return f"{exc}: the file or its directory is read-only for this process"
    if name == "SQLITE_FULL":
        return f"disk full ({exc})"
    if name in _GROWTH_ERRORS:
        return f"{exc} while writing (is the disk full?)"
    if name.startswith("SQLITE_CANTOPEN") and not os.access(path.parent, os.W_OK):
        return f"{exc}: its directory {path.parent} is read-only for this process"
    return str(exc)
