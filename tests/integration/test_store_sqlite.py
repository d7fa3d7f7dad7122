"""The SQLite store on a real file: a versioned WAL-mode schema, files it refuses to open, use
before opening. The rules every store follows (scans, claims, leases, operations, retention,
restarts) are in the store contract, tests/contract, run on this adapter too."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bridge.errors import StoreError
from bridge.store.sqlite import MIGRATIONS, SqliteStore


async def test_schema_is_versioned_and_wal(tmp_path: Path, store: SqliteStore) -> None:
    conn = sqlite3.connect(tmp_path / "b.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await SqliteStore(tmp_path / "b.db").open()


async def test_not_a_database_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        await SqliteStore(path).open()
    assert path.read_bytes() == b"this is not sqlite" * 100


async def test_using_a_closed_store_is_a_store_error(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "b.db")
    with pytest.raises(StoreError, match="not open"):
        await s.ping()
