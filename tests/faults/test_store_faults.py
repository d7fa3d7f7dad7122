"""The SQLite store under faults: file locked, read-only, disk full.

Every condition is real: a second SQLite connection holding the lock, a process without write
permission, a page limit or a file-size limit that the database cannot grow past. Each time
the error is a `StoreError` naming the file and the condition, and nothing is corrupted: the
rows written before are intact, `PRAGMA integrity_check` is ok, and once the condition ends
the store works again without losing or duplicating anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from bridge.errors import StoreError
from bridge.models import Attempt, DeliveryState, Event, RecordState
from bridge.store.base import BASELINE_MARK, AttemptOutcome, ScanCommit, SubscriberHealth
from bridge.store.sqlite import SqliteStore

TABLES = ("meta", "records", "events", "deliveries", "attempts", "subscriber_health")
BUSY_S = 0.2  # the store's own wait for a lock; short, so a locked store fails fast


def event(name: str, rid: str, blob: int = 0) -> Event:
    return Event(
        f"evt_{name}", "denoise.completed", rid, 100.0, "pending", {"id": rid, "b": "x" * blob}
    )


async def seed(store: SqliteStore) -> None:
    """A baseline, three events to two subscribers, one delivered attempt, one health row."""
    await store.commit_scan(
        ScanCommit(
            [RecordState(f"r{i}", "success", f"t{i}") for i in range(3)],
            [(event(str(i), f"r{i}"), ["a", "b"]) for i in range(3)],
            now=10.0,
            meta={BASELINE_MARK: "t2"},
        )
    )
    [claimed] = await store.claim_due(now=10.0, limit=1, lease_s=60.0, subscribers=["a"])
    assert await store.finish_attempt(
        claimed, Attempt(11.0, 200, 12.5, None, "ok"), AttemptOutcome(DeliveryState.DELIVERED)
    )
    await store.set_subscriber_health("b", SubscriberHealth(failing_since=10.0))


def big_commit(count: int = 200) -> ScanCommit:
    """A scan far larger than the seeded database: it needs many new pages."""
    return ScanCommit(
        [RecordState(f"big{i}", "success", "t9") for i in range(count)],
        [(event(f"big{i}", f"big{i}", blob=2000), ["a"]) for i in range(count)],
        now=20.0,
    )


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in key order, read by a connection of its own."""
    with closing(sqlite3.connect(path)) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def seeded_store(path: Path, busy_timeout_s: float | None = None) -> SqliteStore:
    store = SqliteStore(path, busy_timeout_s=busy_timeout_s)
    await store.open()
    await seed(store)
    return store


def seeded_file(path: Path) -> None:
    """A seeded store file, closed (so its WAL is checkpointed into it)."""

    async def go() -> None:
        await (await seeded_store(path)).close()

    asyncio.run(go())


def reopened(path: Path, scan: ScanCommit | None = None) -> tuple[bool, int, int]:
    """Open the store anew: whether the baseline is there, pending deliveries, and how many
    deliveries `scan` created."""

    async def go() -> tuple[bool, int, int]:
        store = SqliteStore(path)
        await store.open()
        try:
            created = (await store.commit_scan(scan)).deliveries if scan else 0
            pending = (await store.count_deliveries())[DeliveryState.PENDING]
            return await store.baseline_done(), pending, created
        finally:
            await store.close()

    return asyncio.run(go())


def config(directory: Path, db: Path) -> Path:
    path = directory / "bridge.toml"
    path.write_text(
        f'[upstream]\napi_key = "k"\n[store]\nurl = "sqlite:///{db}"\n[admin]\nenabled = false\n'
    )
    return path


# --- locked ---------------------------------------------------------------------------------


@pytest.mark.parametrize("begin", ["BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"])
async def test_write_while_another_connection_holds_the_lock(tmp_path: Path, begin: str) -> None:
    path = tmp_path / "b.db"
    store = await seeded_store(path, busy_timeout_s=BUSY_S)
    before = snapshot(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute(begin)
        holder.execute("INSERT INTO meta (key, value) VALUES ('holder', 'uncommitted')")
        with pytest.raises(StoreError) as info:
            await store.commit_scan(ScanCommit([], [(event("new", "r9"), ["a"])], now=30.0))
        message = str(info.value)
        assert message.startswith(f"store {path}: database is locked")
        assert f"another connection holds its lock (waited {BUSY_S:g} s)" in message
        # the dispatcher's write path fails the same way, and reads still answer (WAL)
        with pytest.raises(StoreError, match="database is locked"):
            await store.claim_due(now=30.0, limit=10, lease_s=60.0, subscribers=["b"])
        assert (await store.count_deliveries())[DeliveryState.PENDING] == 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert snapshot(path) == before
    # the lock is gone: the same store writes, and the earlier rows are all still there
    assert (
        await store.commit_scan(ScanCommit([], [(event("new", "r9"), ["a"])], now=30.0))
    ).deliveries == 1
    await store.close()
    after = snapshot(path)
    assert [row[1] for row in after["events"]] == ["evt_0", "evt_1", "evt_2", "evt_new"]
    assert after["events"][:3] == before["events"]
    assert after["deliveries"][:6] == before["deliveries"]
    assert after["attempts"] == before["attempts"] and len(after["attempts"]) == 1
    assert ("holder", "uncommitted") not in after["meta"]
    assert integrity(path) == "ok"


def test_check_reports_a_store_locked_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.db"
    seeded_file(path)
    before = snapshot(path)
    cfg = config(tmp_path, path)
    monkeypatch.setattr(SqliteStore, "busy_timeout_s", BUSY_S)
    # exclusive locking mode keeps even readers out, as another tool holding the file would
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO meta (key, value) VALUES ('holder', 'uncommitted')")
        assert main(["check", "--config", str(cfg)]) == 1  # a store failure, not a config error
        err = capsys.readouterr().err
        assert f"munsit-bridge: cannot open store {path}: database is locked" in err
        assert "another connection holds its lock" in err
        assert "Traceback" not in err
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert main(["check", "--config", str(cfg)]) == 0
    assert "config ok" in capsys.readouterr().out
    assert snapshot(path) == before
    assert integrity(path) == "ok"


# --- read-only ------------------------------------------------------------------------------


def unprivileged(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` as this user but without the capabilities that override file permissions,
    so that it cannot write a file or directory whose mode says read-only (root otherwise
    writes everywhere). Staying the same user, it still reads the checkout and the virtual
    environment, wherever they are (a 0700 clone under /root included)."""
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]
    command = [*drop, *argv] if os.geteuid() == 0 else list(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "MUNSIT_"))}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=env, cwd="/"
    )


def read_only(*paths: Path) -> None:
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)


def writable(*paths: Path) -> None:
    for path in paths:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("command", ["check", "run"])
def test_read_only_database_is_refused_clearly_and_left_untouched(
    tmp_path: Path, command: str
) -> None:
    state = tmp_path / "state"
    path = state / "b.db"
    seeded_file(path)
    before = snapshot(path)
    assert integrity(path) == "ok"
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    cfg = config(tmp_path, path)
    cfg.chmod(0o644)
    read_only(path, state)
    try:
        probe = unprivileged("sh", "-c", f"test -w {path} || echo cannot-write")
        assert probe.stdout.strip() == "cannot-write"  # the condition is real
        listing, hashed = sorted(os.listdir(state)), digest(path)
        result = unprivileged(sys.executable, "-m", "bridge", command, "--config", str(cfg))
        assert result.returncode == 1, result.stderr
        assert f"munsit-bridge: cannot open store {path}: " in result.stderr
        if command == "run":  # it takes the store's lock first, beside the database
            assert f"cannot open its lock file {path}.lock: " in result.stderr
            assert "Permission denied" in result.stderr
        else:
            assert "attempt to write a readonly database" in result.stderr
        assert "the file or its directory is read-only for this process" in result.stderr
        assert "Traceback" not in result.stderr
        assert digest(path) == hashed
        assert sorted(os.listdir(state)) == listing
    finally:
        writable(path, state)
    assert snapshot(path) == before
    assert integrity(path) == "ok"
    # writable again: the store opens and writes, everything from before is still there
    scan = ScanCommit([], [(event("new", "r9"), ["a"])], now=30.0)
    assert reopened(path, scan) == (True, 6, 1)
    assert snapshot(path)["events"][:3] == before["events"]


def test_read_only_directory_without_a_database_is_refused_clearly(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "b.db"
    cfg = config(tmp_path, path)
    cfg.chmod(0o644)
    read_only(state)
    try:
        result = unprivileged(sys.executable, "-m", "bridge", "check", "--config", str(cfg))
        assert result.returncode == 1, result.stderr
        assert f"munsit-bridge: cannot open store {path}: unable to open database file" in (
            result.stderr
        )
        assert f"its directory {state} is read-only for this process" in result.stderr
        assert os.listdir(state) == []
    finally:
        writable(state)


# --- disk full ------------------------------------------------------------------------------


async def pragma(store: SqliteStore, sql: str) -> Any:
    """A PRAGMA on the store's own connection (a page limit is per connection)."""
    return await store._run(lambda conn: conn.execute(sql).fetchone()[0])


async def test_database_full_fails_cleanly_and_recovers_when_space_returns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    store = await seeded_store(path)
    before = snapshot(path)
    pages = await pragma(store, "PRAGMA page_count")
    assert await pragma(store, f"PRAGMA max_page_count = {pages}") == pages
    with pytest.raises(StoreError) as info:
        await store.commit_scan(big_commit())
    assert str(info.value) == f"store {path}: disk full (database or disk is full)"
    assert snapshot(path) == before  # the failed scan left nothing behind
    assert integrity(path) == "ok"
    # the connection is not stuck in the failed transaction: writes that fit still work
    await store.set_subscriber_health("b", SubscriberHealth(failing_since=12.0))
    assert (await store.subscriber_health())["b"].failing_since == 12.0
    # space again: the same scan goes through once, and a repeat of it adds nothing
    await pragma(store, "PRAGMA max_page_count = 1073741823")
    assert (await store.commit_scan(big_commit())).deliveries == 200
    assert (await store.commit_scan(big_commit())).deliveries == 0
    await store.close()
    after = snapshot(path)
    assert after["events"][:3] == before["events"]
    assert after["deliveries"][:6] == before["deliveries"]
    assert after["attempts"] == before["attempts"]
    assert len(after["events"]) == 203 and len(after["deliveries"]) == 206
    assert len({row[1] for row in after["events"]}) == 203
    assert integrity(path) == "ok"


FILL = """
import asyncio, resource, signal, sys
from pathlib import Path
from bridge.errors import StoreError
from bridge.store.sqlite import SqliteStore
from tests.faults.test_store_faults import big_commit

# a full disk refuses the write; the signal that comes with a file-size limit is not part of it
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


async def main() -> int:
    store = SqliteStore(Path(sys.argv[1]))
    await store.open()
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        await store.commit_scan(big_commit())
    except StoreError as exc:
        print(exc)
        code = 3
    else:
        code = 0
    print(sum((await store.count_deliveries()).values()))
    await store.close()
    return code


sys.exit(asyncio.run(main()))
"""


def test_file_size_limit_fails_the_write_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    seeded_file(path)
    before = snapshot(path)
    script = tmp_path / "fill.py"
    script.write_text(textwrap.dedent(FILL))
    # room for the files as they are (the WAL index is 32 KiB) but not for the big scan
    limit = max(path.stat().st_size, 32768) + 65536
    root = Path(__file__).parents[2]
    result = subprocess.run(
        [sys.executable, str(script), str(path), str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 3, result.stdout + result.stderr
    error, count = result.stdout.splitlines()
    assert error.startswith(f"store {path}: ")
    assert error.endswith(
        ("disk full (database or disk is full)", "disk I/O error while writing (is the disk full?)")
    ), error
    assert count == "6"  # the process itself still reads the six earlier deliveries
    # a new process, no limit: all the earlier rows, none of the failed scan, a sound file
    assert snapshot(path) == before
    assert integrity(path) == "ok"
    assert reopened(path, big_commit()) == (True, 205, 200)
    after = snapshot(path)
    assert after["events"][:3] == before["events"] and len(after["events"]) == 203
    assert integrity(path) == "ok"


async def open_and_close(path: Path) -> None:
    store = SqliteStore(path, exclusive=True)
    await store.open()
    await store.close()


def test_run_reports_a_full_disk_when_creating_the_store(tmp_path: Path) -> None:
    """`run` creates the store (`check` creates nothing): a full disk then is a clear error,
    and once there is space again the store is created whole over what was left."""
    path = tmp_path / "state" / "b.db"
    cfg = config(tmp_path, path)
    launch = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        " resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY));"
        " os.execv(sys.executable, [sys.executable, '-m', 'bridge', *sys.argv[1:]])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "MUNSIT_"))}
    result = subprocess.run(
        [sys.executable, "-c", launch, "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert f"munsit-bridge: cannot open store {path}: " in result.stderr
    assert "disk I/O error while writing (is the disk full?)" in result.stderr
    assert "Traceback" not in result.stderr
    # space again: the store is created whole over whatever the failed attempt left
    asyncio.run(open_and_close(path))
    assert integrity(path) == "ok"
    after = snapshot(path)
    assert {t: rows for t, rows in after.items() if t != "meta"} == {
        t: [] for t in TABLES if t != "meta"
    }
    assert [key for key, _ in after["meta"]] == ["store_id"]  # a new store, nothing else
