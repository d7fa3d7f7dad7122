"""The SQLite store's files: private modes, the lock that keeps one `run` per file, and the
checks that notice a database file deleted or replaced under the bridge.

`bridge.db.lock` lives beside `bridge.db`. `run` holds an exclusive `flock` on it (the OS
drops it when the process ends, however it ends) and writes its pid and the store's id in
it. The file stays after the process ends: a lock file naming a store whose database is
missing or different means the database was deleted or replaced, and the bridge refuses to
start with an empty one (that would silently record a new baseline).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from bridge.errors import StoreError

FILE_MODE = 0o600
DIR_MODE = 0o700
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class StoreLocked(StoreError):
    """Another process holds the store's lock file (one `run` per SQLite file)."""

    def __init__(self, path: Path, lock: Path, holder_pid: int | None) -> None:
        self.path = path
        self.lock = lock
        self.holder_pid = holder_pid
        holder = f"pid {holder_pid}" if holder_pid is not None else "pid unknown"
        super().__init__(
            f"store {path} is in use by another munsit-bridge process ({holder}, holding"
            f" {lock}); one process per SQLite file: stop that one first"
        )


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def make_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each 0700 whatever the umask."""
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        path.chmod(DIR_MODE)


def create_private(path: Path) -> bool:
    """Create `path` empty and 0600 (whatever the umask) unless it exists; True if created.
    Not allowed to create it: False, and SQLite's own attempt says why."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in _DENIED:
            return False
        raise
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def identity(path: Path) -> tuple[int, int]:
    """(device, inode) of the file at `path` now."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def check_identity(path: Path, expected: tuple[int, int]) -> None:
    """Raise `StoreError` unless `path` is still the file the store opened (one `stat`)."""
    try:
        found: tuple[int, int] | None = identity(path)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise StoreError(f"store {path}: cannot check the database file: {exc}") from exc
    if found != expected:
        raise StoreError(
            f"database file {path} was deleted or replaced while running; this process stops"
            " writing (what it wrote would be lost): restore the file from a backup and"
            " restart the bridge"
        )


def parse_record(text: str) -> dict[str, str]:
    """`key value` lines of a lock file."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and value:
            fields[key] = value.strip()
    return fields


def read_record(lock: Path) -> dict[str, str]:
    """What a lock file records, read without taking it ({} when there is none, or it cannot
    be read)."""
    try:
        return parse_record(lock.read_text(errors="replace"))
    except OSError:
        return {}


def check_store_id(path: Path, lock: Path, recorded: str | None, found: str | None) -> None:
    """Refuse a database that is not the store `lock` records (`found` None: no database, or
    one without an id)."""
    if recorded is None or recorded == found:
        return
    if found is None:
        raise StoreError(
            f"cannot open store {path}: the database file is missing or empty, but {lock}"
            f" records store {recorded} there (was it deleted or moved?); restore the file,"
            f" or delete {lock} to start afresh with an empty store (its first poll records"
            " a new baseline)"
        )
    raise StoreError(
        f"cannot open store {path}: it holds store {found}, but {lock} records store"
        f" {recorded} there (was the file replaced?); restore the original file, or delete"
        f" {lock} to use this one"
    )


class LockFile:
    """The store's lock file, held with `flock` for as long as this object is open."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, store: Path) -> LockFile:
        """Take the lock, creating the file 0600 if needed; `StoreLocked` if another open
        file holds it (another process, or another store object of this one)."""
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
                os.fchmod(fd, FILE_MODE)
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            hint = ""
            if exc.errno in _DENIED:
                hint = ": the file or its directory is read-only for this process"
            raise StoreError(
                f"cannot open store {store}: cannot open its lock file {path}: {exc}{hint}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(fd)
            os.close(fd)
            raise StoreLocked(store, path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def recorded(self) -> dict[str, str]:
        return parse_record(_read_fd(self._opened()))

    def record(self, *, pid: int, store_id: str) -> None:
        """Write who holds the lock and which store it guards (flushed to disk)."""
        fd = self._opened()
        data = f"pid {pid}\nstore {store_id}\n".encode()
        os.pwrite(fd, data, 0)  # then cut: a reader sees the old text or the new one
        os.ftruncate(fd, len(data))
        os.fsync(fd)

    def release(self) -> None:
        """Close the file, which drops the lock; the file stays (it names the store)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _opened(self) -> int:
        if self._fd is None:
            raise StoreError(f"lock file {self.path} is not held")
        return self._fd


def _read_fd(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


def holder_pid(fd: int) -> int | None:
    """The pid an open lock file records, if it records one."""
    pid = parse_record(_read_fd(fd)).get("pid", "")
    return int(pid) if pid.isdecimal() else None
