"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open SQLite store on a fresh file (busy timeout 5 s, the default)."""
    s = SqliteStore(tmp_path / "b.db")
    await s.open()
    yield s
    await s.close()
