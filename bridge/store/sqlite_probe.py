"""Looking at a SQLite store without changing it: for `check` and `status`, which must
create nothing (no directory, database or lock file) and must work beside a running bridge.

The database is opened with `mode=ro` only when it exists; the lock is probed with a
non-blocking shared `flock` released at once (a `run` starting in that very instant would be
refused as if another run held the store, and can simply be started again).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import StoreError
from bridge.store import sqlite_file as files
from bridge.store.sqlite_open import explain
from bridge.store.sqlite_schema import MIGRATIONS, read_store_id, schema_version


@dataclass(frozen=True, slots=True)
class Probed:
    """What the store file holds, as far as a reader can tell."""

    path: Path
    exists: bool
    schema_version: int = 0
    store_id: str | None = None
    last_seen_at: float | None = None  # when a scan last saw a record (a successful poll)


@dataclass(frozen=True, slots=True)
class Holder:
    """Whether a process holds the store's lock (a `run` is using it), and its pid."""

    held: bool
    pid: int | None = None


def probe(path: Path, *, busy_timeout_s: float) -> Probed:
    """Read the store at `path` read-only, or report that it does not exist. `StoreError`
    (saying why) when `run` could not use it: unreadable, read-only, a newer schema, or not
    the store its lock file records."""
    lock = files.lock_path(path)
    recorded = files.read_record(lock).get("store")
    if not path.exists():
        files.check_store_id(path, lock, recorded, None)
        _check_creatable(path)
        return Probed(path, exists=False)
    try:
        # without a write-ahead log no bridge has the store open and the file holds it all;
        # a read-only connection would still create the log: read the file as it is
        quiet = "" if Path(f"{path}-wal").exists() else "&immutable=1"
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro{quiet}", uri=True, timeout=busy_timeout_s
        )
        try:
            version = schema_version(conn)
            store_id = read_store_id(conn) if version else None
            seen = conn.execute("SELECT MAX(seen_at) FROM records").fetchone() if version else None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {explain(path, busy_timeout_s, exc)}") from exc
    if version > len(MIGRATIONS):
        raise StoreError(
            f"cannot open store {path}: schema version {version} is newer than this bridge"
            f" knows ({len(MIGRATIONS)})"
        )
    if version:
        files.check_store_id(path, lock, recorded, store_id or "(none)")
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise StoreError(
            f"cannot open store {path}: attempt to write a readonly database: the file or its"
            " directory is read-only for this process"
        )
    last = None if seen is None or seen[0] is None else float(seen[0])
    return Probed(path, True, version, store_id, last)


def lock_holder(path: Path) -> Holder:
    """Whether a process holds the lock of the store at `path`, without taking it."""
    try:
        fd = os.open(files.lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return Holder(False)  # no lock file: no run has used this store (or it is unreadable)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder(True, files.holder_pid(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return Holder(False)
    finally:
        os.close(fd)


def _check_creatable(path: Path) -> None:
    """`StoreError` unless the first run can create `path` (and its missing directories)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(f"cannot open store {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot open store {path}: unable to open database file: its directory"
            f" {ancestor} is read-only for this process"
        )
