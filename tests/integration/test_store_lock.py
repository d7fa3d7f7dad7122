"""The SQLite store's file: one `run` per file (a lock beside it), private modes, and a
database file deleted or replaced under the bridge noticed at once and never silently
replaced by an empty one."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bridge.clock import SystemClock
from bridge.errors import StoreError
from bridge.models import Attempt, DeliveryState, Event, RecordState
from bridge.sim.simulator import Simulator
from bridge.store.base import BASELINE_MARK, AttemptOutcome, ScanCommit, SubscriberHealth
from bridge.store.sqlite import SqliteStore, StoreLocked
from tests.integration.helpers import bridge_process

ServerFactory = Callable[..., Any]

GONE = "was deleted or replaced while running"


def event(n: int) -> Event:
    return Event(f"evt_{n}", "denoise.completed", f"r{n}", float(n), None, {"id": f"r{n}"})


def baseline(n: int = 1) -> ScanCommit:
    return ScanCommit(
        [RecordState(f"r{n}", "success", "t")],
        [(event(n), ["a"])],
        now=float(n),
        meta={BASELINE_MARK: "t"},
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def lock_text(path: Path) -> dict[str, str]:
    lines = path.with_name(path.name + ".lock").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines if " " in line)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


async def opened(path: Path, *, exclusive: bool = True) -> SqliteStore:
    store = SqliteStore(path, exclusive=exclusive)
    await store.open()
    return store


# --- one process per file -------------------------------------------------------------------


async def test_a_second_exclusive_store_is_refused_naming_the_file_and_the_holder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    first = await opened(path)
    assert lock_text(path) == {"pid": str(os.getpid()), "store": first.store_id}
    with pytest.raises(StoreLocked) as info:
        await opened(path)
    assert info.value.holder_pid == os.getpid()
    assert str(info.value) == (
        f"store {path} is in use by another munsit-bridge process (pid {os.getpid()}, holding"
        f" {path}.lock); one process per SQLite file: stop that one first"
    )
    # reads and operator writes (check, replay, status) still work alongside
    other = await opened(path, exclusive=False)
    await other.commit_scan(baseline())
    assert await first.baseline_done()
    await other.close()
    await first.close()
    # closed: the lock is free again, and its file stays, naming the store
    again = await opened(path)
    assert again.store_id == first.store_id and not again.created
    await again.close()
    assert lock_text(path)["store"] == first.store_id


async def test_a_store_that_is_not_exclusive_takes_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    reader = await opened(path, exclusive=False)
    assert not path.with_name("b.db.lock").exists()
    holder = await opened(path)  # `run` starts while `check` has the file open
    await holder.close()
    await reader.close()


class Run:
    """`munsit-bridge run` as a real process; its output read as it comes (never blocked)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[bytes] = []
        self.changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: Path) -> Run:
        process = await bridge_process(
            "run",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line)
            self.changed.set()
        self.changed.set()

    async def until(self, text: bytes) -> None:
        async with asyncio.timeout(30):
            while not any(text in line for line in self.lines):
                assert not self._reader.done(), b"".join(self.lines).decode()
                self.changed.clear()
                await self.changed.wait()

    async def ended(self) -> tuple[int, str]:
        async with asyncio.timeout(30):
            await self._reader
            code = await self.process.wait()
        return code, b"".join(self.lines).decode()


async def command(*args: str) -> tuple[int, str]:
    process = await bridge_process(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_a_second_run_on_one_file_exits_1_naming_the_holder(
    aiohttp_server: ServerFactory, tmp_path: Path, secret: str
) -> None:
    sim = Simulator(api_key="lock-key", clock=SystemClock(), processing_s=3600)
    sim.add_records(2, status="success")
    up: TestServer = await aiohttp_server(sim.make_app())
    db = tmp_path / "state.db"
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[upstream]
base_url = "{str(up.make_url("")).rstrip("/")}"
api_key = "lock-key"
poll_interval_s = 0.2
idle_poll_interval_s = 0.2
progress_stream = false
[store]
url = "sqlite:///{db}"
[admin]
enabled = false
[log]
format = "json"
[[subscribers]]
id = "rx"
url = "http://127.0.0.1:9/hook"
secret = "{secret}"
"""
    )
    runs: list[Run] = []
    try:
        runs.append(first := await Run.start(config))
        await first.until(b"baseline recorded")
        runs.append(second := await Run.start(config))
        code, out = await second.ended()
        assert code == 1, out
        holder = f"pid {first.process.pid}, holding {db}.lock"
        assert f"store {db} is in use by another munsit-bridge process ({holder})" in out
        assert "Traceback" not in out
        # the operator's commands work alongside the running bridge
        code, out = await command("check", "--config", str(config))
        assert code == 0 and "config ok" in out, out
        code, out = await command("replay", "--since", "2020-01-01", "--config", str(config))
        assert code == 0, out
        # a crash leaves the lock to nobody: the next run starts on the same file and polls
        first.process.send_signal(signal.SIGKILL)
        await first.ended()
        runs.append(third := await Run.start(config))
        await third.until(b'"event":"poll"')
        assert lock_text(db)["pid"] == str(third.process.pid)
        third.process.send_signal(signal.SIGTERM)
        code, out = await third.ended()
        assert code == 0, out
    finally:
        for run in runs:
            if run.process.returncode is None:
                run.process.send_signal(signal.SIGKILL)
                await run.ended()


# --- file modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
async def test_files_and_directories_the_store_creates_are_private(
    tmp_path: Path, mask: int
) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "state" / "deep" / "b.db"
    with umask(mask):
        store = await opened(path)
        await store.commit_scan(baseline())
        try:
            for name in ("b.db", "b.db-wal", "b.db-shm", "b.db.lock"):
                assert mode(path.with_name(name)) == 0o600, name
            assert mode(tmp_path / "state") == 0o700
            assert mode(tmp_path / "state" / "deep") == 0o700
            assert mode(tmp_path) == 0o755  # a directory the bridge did not create is left alone
        finally:
            await store.close()


async def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with closing(sqlite3.connect(path)):
        pass
    path.chmod(0o640)
    store = await opened(path)
    await store.close()
    assert mode(path) == 0o640


# --- deleted or replaced while running ------------------------------------------------------


async def writes_all_fail(store: SqliteStore) -> None:
    """Every write of the store (and its health check) refuses, saying why."""
    with pytest.raises(StoreError, match=GONE):
        await store.ping()
    with pytest.raises(StoreError, match=GONE):
        await store.commit_scan(ScanCommit([], [(event(9), ["a"])], now=9.0))
    with pytest.raises(StoreError, match=GONE):
        await store.claim_lanes(now=9.0, lease_s=30, rooms=[("a", 5)])
    with pytest.raises(StoreError, match=GONE):
        await store.claim_due(now=9.0, limit=5, lease_s=30, subscribers=["a"])
    with pytest.raises(StoreError, match=GONE):
        await store.set_subscriber_health("a", SubscriberHealth(failing_since=9.0))
    with pytest.raises(StoreError, match=GONE):
        await store.purge(now=9.0, retention_s=1.0)


async def test_a_database_deleted_while_running_stops_every_write(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = await opened(path)
    await store.commit_scan(baseline())
    [claimed] = await store.claim_lanes(now=1.0, lease_s=30, rooms=[("a", 5)])
    path.unlink()
    await writes_all_fail(store)
    with pytest.raises(StoreError, match=GONE):
        await store.finish_attempt(
            claimed, Attempt(2.0, 200, 1.0, None, "ok"), AttemptOutcome(DeliveryState.DELIVERED)
        )
    with pytest.raises(StoreError) as info:
        await store.release(claimed, now=2.0)
    assert str(info.value) == (
        f"database file {path} was deleted or replaced while running; this process stops"
        " writing (what it wrote would be lost): restore the file from a backup and restart"
        " the bridge"
    )
    assert not path.exists()  # nothing made a new, empty one
    await store.close()
    assert not path.exists()


async def test_a_database_replaced_while_running_stops_every_write(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    other = tmp_path / "other.db"
    store = await opened(path)
    await store.commit_scan(baseline())
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(other)) as dst:
        src.backup(dst)  # the same content, another file: still not the file being written
    os.replace(other, path)
    await writes_all_fail(store)
    await store.close()
    assert await (await opened(path, exclusive=False)).baseline_done()


async def test_the_next_start_refuses_a_missing_database_until_restored(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    backup = tmp_path / "backup.db"
    store = await opened(path)
    await store.commit_scan(baseline())
    with closing(sqlite3.connect(path)) as src, closing(sqlite3.connect(backup)) as dst:
        src.backup(dst)
    await store.close()
    path.unlink()
    for exclusive in (True, False):  # `run`, and `check` or `replay`
        with pytest.raises(StoreError) as info:
            await opened(path, exclusive=exclusive)
        assert str(info.value) == (
            f"cannot open store {path}: the database file is missing or empty, but"
            f" {path}.lock records store {store.store_id} there (was it deleted or moved?);"
            f" restore the file, or delete {path}.lock to start afresh with an empty store"
            " (its first poll records a new baseline)"
        )
        assert not path.exists()
    # the way out that keeps everything: restore the file
    shutil.copyfile(backup, path)
    restored = await opened(path)
    assert restored.store_id == store.store_id and not restored.created
    assert await restored.baseline_done()
    await restored.close()


async def test_deleting_the_lock_file_starts_afresh_as_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = await opened(path)
    assert store.created
    await store.commit_scan(baseline())
    await store.claim_lanes(now=1.0, lease_s=30, rooms=[("a", 5)])
    path.unlink()  # while running: the log files stay behind as a crash would leave them
    assert path.with_name("b.db-wal").exists()
    path.with_name("b.db.lock").unlink()
    fresh = await opened(path)
    assert fresh.created and fresh.store_id != store.store_id
    assert not await fresh.baseline_done()  # nothing of the old store's log came back
    assert sum((await fresh.count_deliveries()).values()) == 0
    assert lock_text(path)["store"] == fresh.store_id
    await fresh.close()
    await store.close()


async def test_another_store_put_in_place_while_stopped_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    elsewhere = tmp_path / "elsewhere" / "b.db"
    first = await opened(path)
    await first.close()
    second = await opened(elsewhere)
    await second.commit_scan(baseline())
    await second.close()
    shutil.copyfile(elsewhere, path)
    with pytest.raises(StoreError) as info:
        await opened(path)
    assert str(info.value) == (
        f"cannot open store {path}: it holds store {second.store_id}, but {path}.lock records"
        f" store {first.store_id} there (was the file replaced?); restore the original file,"
        f" or delete {path}.lock to use this one"
    )
    path.with_name("b.db.lock").unlink()
    adopted = await opened(path)
    assert adopted.store_id == second.store_id and await adopted.baseline_done()
    await adopted.close()
