"""The store contract's fixtures and helpers.

`store` is an open store of each backend in turn (`sqlite`, `postgresql`): a new SQLite file,
or a new schema on the PostgreSQL server `BRIDGE_TEST_PG_URL` names (skipped, saying why,
without it). `open_store` opens more stores of the same backend on the same database: a
restart, another process, or another `max_attempts`. The tests reach the store through the
port only, so both backends run the very same code.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from bridge.models import COMPLETED, Attempt, DeliveryState, DeliveryView, Event, RecordState
from bridge.store.base import AttemptOutcome, ScanCommit, Store
from bridge.store.sqlite import SqliteStore
from tests.pgdb import fresh_schema, require_pg

BACKENDS = ["sqlite", "postgresql"]
DONE = AttemptOutcome(DeliveryState.DELIVERED)
DEAD = AttemptOutcome(DeliveryState.FAILED)


class OpenStore:
    """Opens stores of one backend on one database; closes them at the test's end."""

    def __init__(self, backend: str, where: str) -> None:
        self.backend = backend
        self.where = where  # a file path, or a PostgreSQL URL (with its schema)
        self._open: list[Store] = []

    async def __call__(self, *, max_attempts: int = 8) -> Store:
        store: Store
        if self.backend == "sqlite":
            store = SqliteStore(Path(self.where), max_attempts=max_attempts)
        else:  # imported here: the adapter may not exist while the SQLite half runs
            pg = importlib.import_module("bridge.store.pg")
            store = pg.PgStore(self.where, max_attempts=max_attempts, db_clock=False)
        await store.open()
        self._open.append(store)
        return store

    async def close(self, store: Store) -> None:
        """Close `store` now (a restart): not again at the end."""
        self._open.remove(store)
        await store.close()

    async def close_all(self) -> None:
        while self._open:
            await self._open.pop().close()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(backend, where its data lives) for this test, new and empty."""
    backend = str(request.param)
    if backend == "sqlite":
        yield backend, str(tmp_path / "bridge.db")
    else:
        url = require_pg(request.node.nodeid)
        with fresh_schema(url) as schema_url:
            yield backend, schema_url


@pytest.fixture
async def open_store(database: tuple[str, str]) -> AsyncIterator[OpenStore]:
    stores = OpenStore(*database)
    yield stores
    await stores.close_all()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    """An open store of the test's backend, new and empty (max_attempts 8)."""
    return await open_store()


# --- helpers --------------------------------------------------------------------------------


def event(
    n: int | str, rid: str = "r1", type_: str = COMPLETED, *, at: float | None = None
) -> Event:
    """Event `evt_<n>` of record `rid`, occurred at `at` (100 + n by default)."""
    occurred = at if at is not None else 100.0 + (n if isinstance(n, int) else 0)
    return Event(f"evt_{n}", type_, rid, occurred, "pending", {"id": rid, "n": n})


def attempt(at: float, code: int | None = 500, excerpt: str = "busy") -> Attempt:
    return Attempt(at, code, 12.5, None if code == 200 else f"HTTP {code}", excerpt)


def later(at: float) -> AttemptOutcome:
    """Failed for now, due again at `at`."""
    return AttemptOutcome(DeliveryState.PENDING, at)


async def enqueue(
    store: Store, now: float, *events: Event, to: Sequence[str] = ("a",)
) -> list[str]:
    """Record `events` (in order) for subscribers `to` in one scan at `now`; their ids."""
    await store.commit_scan(ScanCommit([], [(e, list(to)) for e in events], now=now))
    return [e.id for e in events]


def record(
    rid: str, status: str = "pending", created_at: str = "2026-01-01T00:00:00Z"
) -> RecordState:
    return RecordState(rid, status, created_at)


async def everything(store: Store) -> list[DeliveryView]:
    """Every delivery, newest first."""
    return await store.list_deliveries(limit=100_000)


async def assert_counts(store: Store, expected: dict[DeliveryState, int]) -> None:
    """The store's counters say `expected` (states not named: 0), and agree, subscriber by
    subscriber, with the deliveries it lists."""
    listed: dict[str, dict[DeliveryState, int]] = {}
    for view in await everything(store):
        listed.setdefault(view.subscriber_id, dict.fromkeys(DeliveryState, 0))[view.state] += 1
    totals = dict.fromkeys(DeliveryState, 0) | expected
    assert await store.count_deliveries() == totals
    assert await store.counts_by_subscriber() == listed
    assert {s: sum(c[s] for c in listed.values()) for s in DeliveryState} == totals
