"""Gateway jobs on each backend's own terms (their rules for both are the store contract's,
tests/contract/test_jobs.py): the migrations that add them keep what a store held (and give
each job its record as last seen), the wake-ups a registration sends on PostgreSQL, a
registration racing a scan never loses an event, and the claim of every job target by its
index, whatever the database's collation."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.models import COMPLETED, CREATED, Callback, DeliveryFilter, DeliveryState, Event, Job
from bridge.store.base import ScanCommit
from bridge.store.pg import PgStore
from bridge.store.pg_claim import _DUE_JOBS
from bridge.store.pg_schema import migrations
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_schema import MIGRATIONS, statements
from tests.pgdb import fresh_schema, require_pg

DEADLINE_S = 10.0
BEFORE_JOBS_SQLITE = 9  # the SQLite schema version before the jobs table
BEFORE_SEEN_SQLITE = 10  # … and before a job's record as last seen was kept in `jobs.record`
BEFORE_SEEN_PG = 2
# a store's rows before `jobs.record` was kept: r1's job with its events (the newest one of
# its record neither progress nor the bridge's own), r2's with none, as the submission said
STUB = '{"id":"r1","status":"pending"}'
HELD = [
    "INSERT INTO events (id, type, record_id, occurred_at, data) VALUES"
    " ('e1', 'denoise.created', 'r1', 1, '{\"id\":\"r1\",\"v\":1}'),"
    " ('e2', 'denoise.completed', 'r1', 2, '{\"id\":\"r1\",\"status\":\"success\"}'),"
    " ('e3', 'denoise.progress', 'r1', 3, '{\"id\":\"r1\",\"progress\":1}'),"
    " ('e4', 'bridge.delivery_dead_lettered', 'r1', 4, '{}'),"
    " ('e5', 'denoise.completed', 'r9', 5, '{\"id\":\"r9\"}')",
    "INSERT INTO jobs (record_id, client_id, submitted_at, record) VALUES"
    f" ('r1', 'acme', 0, '{STUB}'), ('r2', 'acme', 0, '{STUB.replace('r1', 'r2')}'),"
    " ('r3', 'acme', 0, NULL)",
]
SEEN = {
    "r1": {"id": "r1", "status": "success"},
    "r2": {"id": "r2", "status": "pending"},
    "r3": None,
}


def job(rid: str, events: tuple[str, ...] = (CREATED, COMPLETED)) -> Job:
    return Job(rid, "acme", 1.0, f"cb_{rid}", Callback(f"https://cb.example/{rid}", events))


def event(rid: str, type_: str = COMPLETED, n: int = 1) -> Event:
    return Event(f"evt_{rid}_{type_}", type_, rid, float(n), None, {"id": rid, "n": n})


async def job_targets(store: SqliteStore | PgStore, rid: str) -> list[str]:
    views = await store.list_deliveries(where=DeliveryFilter(subscriber=f"job:{rid}"))
    return sorted(v.event_id for v in views)


# --- SQLite ----------------------------------------------------------------------------------


def test_the_sqlite_migration_keeps_what_the_store_held(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, script in enumerate(MIGRATIONS[:BEFORE_JOBS_SQLITE], start=1):
            for statement in statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'jobs'").fetchall() == []
        conn.execute(
            "INSERT INTO records (id, status, created_at, seen_at) VALUES ('r1', 'pending', 't', 0)"
        )
        conn.execute(
            "INSERT INTO events (id, type, record_id, occurred_at, data)"
            " VALUES ('evt_old', 'denoise.created', 'r1', 0, '{\"id\":\"r1\"}')"
        )
        conn.execute(
            "INSERT INTO deliveries (event_seq, subscriber_id, state, next_attempt_at,"
            " created_at, updated_at) VALUES (1, 'a', 'pending', 0, 0, 0)"
        )

    async def reopen() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            assert not store.created
            [view] = await store.list_deliveries()
            assert (view.event_id, view.subscriber_id, view.state) == (
                "evt_old",
                "a",
                DeliveryState.PENDING,
            )
            assert (await store.known_states(["r1"]))["r1"].status == "pending"
            # the event stored before the jobs table existed reaches the job registered now
            assert await store.register_job(job("r1"), now=5.0) == 1
            got = await store.job("r1")
            assert got is not None and got.record == {"id": "r1"}
            assert [d.event.id for d in await store.claim_jobs(now=5.0, lease_s=1, limit=5)] == [
                "evt_old"
            ]
        finally:
            await store.close()

    asyncio.run(reopen())
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_the_sqlite_migration_keeps_each_jobs_record_as_last_seen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, script in enumerate(MIGRATIONS[:BEFORE_SEEN_SQLITE], start=1):
            for statement in statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        for statement in HELD:
            conn.execute(statement)

    async def reopen() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            listed = await store.client_jobs("acme", limit=10)
            assert {j.record_id: j.record for j in listed} == SEEN
        finally:
            await store.close()

    asyncio.run(reopen())
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_the_sqlite_job_claim_reads_the_claim_index(tmp_path: Path) -> None:
    path = tmp_path / "b.db"

    async def create() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(create())
    from bridge.store.sqlite_claim import _DUE_JOBS as due

    with closing(sqlite3.connect(path)) as conn:
        plan = " ".join(
            str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {due}", (0.0, 0.0, 10))
        )
    assert "deliveries_claim (subscriber_id>? AND subscriber_id<?)" in plan, plan


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_schema(require_pg(request.node.nodeid)) as url:
        yield url


async def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query, params or None)
        return await cur.fetchall() if cur.description else []


async def test_the_postgresql_migration_keeps_what_the_store_held(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(migrations()[0])
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        await conn.execute(
            "INSERT INTO events (id, type, record_id, occurred_at, data)"
            " VALUES ('evt_old', 'denoise.created', 'r1', 0, '{\"id\":\"r1\"}')"
        )
        await conn.execute(
            "INSERT INTO deliveries (event_seq, subscriber_id, record_id, state,"
            " next_attempt_at, created_at, updated_at)"
            " SELECT seq, 'a', 'r1', 'pending', 0, 0, 0 FROM events"
        )
    store = PgStore(pg_url, db_clock=False)
    await store.open()
    try:
        assert not store.created and store.schema_version == len(migrations()) == 4
        [view] = await store.list_deliveries()
        assert (view.event_id, view.subscriber_id) == ("evt_old", "a")
        assert await store.register_job(job("r1"), now=5.0) == 1
        [claimed] = await store.claim_jobs(now=5.0, lease_s=1, limit=5)
        assert (claimed.subscriber_id, claimed.event.id) == ("job:r1", "evt_old")
    finally:
        await store.close()


async def test_the_postgresql_migration_keeps_each_jobs_record_as_last_seen(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, script in enumerate(migrations()[:BEFORE_SEEN_PG], start=1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        for statement in HELD:
            await conn.execute(statement)
    store = PgStore(pg_url, db_clock=False)
    await store.open()
    try:
        assert store.schema_version == len(migrations())
        listed = await store.client_jobs("acme", limit=10)
        assert {j.record_id: j.record for j in listed} == SEEN
    finally:
        await store.close()


async def test_a_registration_wakes_the_replicas(pg_url: str) -> None:
    pg, other = PgStore(pg_url, db_clock=False), PgStore(pg_url, db_clock=False)
    await pg.open()
    await other.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()
    listening = asyncio.create_task(pg.listen(heard.put_nowait, stop))

    async def next_ones(n: int) -> list[str]:
        return sorted([await asyncio.wait_for(heard.get(), DEADLINE_S) for _ in range(n)])

    try:
        assert await next_ones(1) == ["reconnected"]
        # nothing stored yet: the job only (the leader opens its progress stream)
        assert await other.register_job(job("r1"), now=1.0) == 0
        assert await next_ones(1) == ["job:r1"]
        # events a poll stored first: queued, so the outbox too
        await other.commit_scan(ScanCommit([], [(event("r2"), [])], now=2.0))
        assert await next_ones(1) == ["events"]  # nothing queued: no outbox
        assert await other.register_job(job("r2"), now=3.0) == 1
        assert await next_ones(2) == ["job:r2", "outbox"]
        # registering again: nothing changes, nobody is woken
        assert await other.register_job(job("r2"), now=4.0) == 0
        # a scan routing an event to a job wakes the outbox as any scan that queued
        await other.commit_scan(ScanCommit([], [(event("r1", CREATED), [])], now=5.0))
        assert await next_ones(2) == ["events", "outbox"]
        assert heard.empty()
    finally:
        stop.set()
        await asyncio.gather(listening, return_exceptions=True)
        await other.close()
        await pg.close()


async def test_a_registration_racing_a_scan_never_loses_the_event(pg_url: str) -> None:
    scanner, gateway = PgStore(pg_url, db_clock=False), PgStore(pg_url, db_clock=False)
    await scanner.open()
    await gateway.open()
    try:
        rids = [f"r{i}" for i in range(30)]
        await asyncio.gather(
            *(scanner.commit_scan(ScanCommit([], [(event(rid), ["a"])], now=1.0)) for rid in rids),
            *(gateway.register_job(job(rid), now=1.0) for rid in rids),
        )
        for rid in rids:  # by the scan or by the registration: once
            assert await job_targets(scanner, rid) == [f"evt_{rid}_{COMPLETED}"]
    finally:
        await scanner.close()
        await gateway.close()


async def test_every_job_target_whatever_the_collation_by_its_index(pg_url: str) -> None:
    store = PgStore(pg_url, db_clock=False)
    await store.open()
    try:
        await store.register_job(job("r1"), now=0.0)
        await store.commit_scan(ScanCommit([], [(event("r1"), ["job;", "jobs", "a"])], now=1.0))
        # a collation blind to punctuation sorts `job:r1` after `job;`: not a range of ids
        icu = await sql(pg_url, "SELECT 1 FROM pg_collation WHERE collname = 'en-US-x-icu'")
        assert icu, "this test needs a PostgreSQL built with ICU (collation en-US-x-icu)"
        assert await sql(pg_url, "SELECT 'job:r1' COLLATE \"en-US-x-icu\" < 'job;'") == [(False,)]
        await sql(
            pg_url,
            'ALTER TABLE deliveries ALTER COLUMN subscriber_id TYPE text COLLATE "en-US-x-icu"',
        )
        [claimed] = await store.claim_jobs(now=1.0, lease_s=60, limit=10)
        assert claimed.subscriber_id == "job:r1"
        assert await store.next_job_due_at() == 61.0
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            await conn.execute("SET LOCAL enable_seqscan = off")
            cur = await conn.execute(
                "EXPLAIN " + _DUE_JOBS.replace("%(now)s", "0").replace("%(limit)s", "10")
            )
            plan = "\n".join(str(row[0]) for row in await cur.fetchall())
        assert "deliveries_jobs" in plan, plan
    finally:
        await store.close()
