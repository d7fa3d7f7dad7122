"""Several Munsit accounts in one store: each record belongs to the account whose scan stored
it (its key, `models.record_key`, is unique across accounts); the poller's reads and a
sweep's forgetting are per account, its meta under `meta_key`; replay routes by record key.
A store made before accounts existed keeps its records as the `default` account's."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import psycopg

from bridge.models import CREATED, DEFAULT_ACCOUNT, RecordState, Replayed, record_key, split_key
from bridge.store.base import BASELINE_MARK, SWEEP, ScanCommit, Store, meta_key
from bridge.store.pg_scan import NEWEST_CREATED as PG_NEWEST
from bridge.store.pg_schema import migrations
from bridge.store.sqlite import NEWEST_CREATED as SQLITE_NEWEST
from bridge.store.sqlite_schema import MIGRATIONS, statements
from tests.contract.conftest import OpenStore, event, everything, record

B = "b"
X, BX = record_key(DEFAULT_ACCOUNT, "x"), record_key(B, "x")  # "x" and "b/x"
SQLITE_BEFORE_ACCOUNTS = 11  # the SQLite schema version before `records.account`
PG_BEFORE_ACCOUNTS = 3  # … and the PostgreSQL one
MANY = 100_000


def scan(account: str, *states: RecordState, now: float, **more: Any) -> ScanCommit:
    return ScanCommit(list(states), [], now=now, account=account, **more)


def test_meta_keys_of_the_default_account_are_the_keys_themselves() -> None:
    assert meta_key(DEFAULT_ACCOUNT, BASELINE_MARK) == BASELINE_MARK
    assert meta_key(B, BASELINE_MARK) == "b/baseline_mark"
    assert meta_key(B, SWEEP) != meta_key("c", SWEEP)


async def test_two_accounts_records_with_the_same_munsit_id_coexist(store: Store) -> None:
    assert X == "x" and BX == "b/x"
    await store.commit_scan(scan(DEFAULT_ACCOUNT, record(X, "running"), now=1.0))
    await store.commit_scan(scan(B, record(BX, "pending"), now=2.0))
    await store.commit_scan(scan(B, record(BX, "success"), now=3.0))
    known = await store.known_states([X, BX])
    assert {rid: s.status for rid, s in known.items()} == {X: "running", BX: "success"}
    assert [s.id for s in await store.tracked_pending(DEFAULT_ACCOUNT)] == [X]
    assert await store.tracked_pending(B) == []


async def test_newest_created_at_and_tracked_pending_are_per_account(store: Store) -> None:
    assert await store.newest_created_at() is None and await store.newest_created_at(B) is None
    await store.commit_scan(
        scan(
            DEFAULT_ACCOUNT,
            record("d1", "pending", "2026-01-01T00:00:00Z"),
            record("d2", "success", "2026-01-04T00:00:00Z"),
            now=1.0,
        )
    )
    await store.commit_scan(
        scan(
            B,
            record("b/b1", "running", "2026-01-03T00:00:00Z"),
            record("b/b2", "pending", "2026-01-02T00:00:00Z"),
            now=2.0,
        )
    )
    # another account's newer record does not move an account's newest
    assert await store.newest_created_at() == "2026-01-04T00:00:00Z"
    assert await store.newest_created_at(DEFAULT_ACCOUNT) == "2026-01-04T00:00:00Z"
    assert await store.newest_created_at(B) == "2026-01-03T00:00:00Z"
    assert await store.newest_created_at("c") is None
    assert [s.id for s in await store.tracked_pending(DEFAULT_ACCOUNT)] == ["d1"]
    assert [s.id for s in await store.tracked_pending(B)] == ["b/b1", "b/b2"]
    assert await store.tracked_pending("c") == []
    # None: every account's, newest first
    assert [s.id for s in await store.tracked_pending()] == ["b/b1", "b/b2", "d1"]
    assert [s.id for s in await store.tracked_pending(None)] == ["b/b1", "b/b2", "d1"]


async def test_a_sweep_forgets_only_its_own_accounts_unseen_records(store: Store) -> None:
    await store.commit_scan(scan(DEFAULT_ACCOUNT, record("d1"), record("d2"), now=1.0))
    await store.commit_scan(scan(B, record("b/b1"), record("b/b2"), now=1.0))
    # account b's sweep, begun at 2, saw b/b2 only: b/b1 is gone, default's records stay
    done = await store.commit_scan(scan(B, now=3.0, seen=["b/b2"], forget_unseen_before=2.0))
    assert done.forgotten == ["b/b1"]
    assert [s.id for s in await store.tracked_pending(B)] == ["b/b2"]
    assert sorted(s.id for s in await store.tracked_pending(DEFAULT_ACCOUNT)) == ["d1", "d2"]
    # and the other way round: default's sweep leaves b's unseen record alone
    done = await store.commit_scan(
        scan(DEFAULT_ACCOUNT, now=5.0, seen=["d1"], forget_unseen_before=4.0)
    )
    assert done.forgotten == ["d2"]
    assert [s.id for s in await store.tracked_pending(B)] == ["b/b2"]
    assert [s.id for s in await store.tracked_pending()] in (["d1", "b/b2"], ["b/b2", "d1"])
    # a commit that names no account is the default account's
    done = await store.commit_scan(ScanCommit([], [], now=7.0, forget_unseen_before=6.0))
    assert done.forgotten == ["d1"]
    assert [s.id for s in await store.tracked_pending()] == ["b/b2"]


async def test_baseline_done_is_per_account(store: Store) -> None:
    await store.commit_scan(
        scan(B, now=1.0, meta={meta_key(B, BASELINE_MARK): "2026-01-01T00:00:00Z"})
    )
    assert await store.baseline_done(B)
    assert not await store.baseline_done() and not await store.baseline_done(DEFAULT_ACCOUNT)
    await store.commit_scan(scan(DEFAULT_ACCOUNT, now=2.0, meta={BASELINE_MARK: "2026-01-02"}))
    assert await store.baseline_done() and await store.baseline_done(B)
    assert not await store.baseline_done("c")
    await store.commit_scan(scan(B, now=3.0, meta={meta_key(B, BASELINE_MARK): None}))
    assert not await store.baseline_done(B) and await store.baseline_done()


async def test_replay_gives_targets_each_events_record_key(store: Store) -> None:
    await store.commit_scan(
        ScanCommit([], [(event(1, X, CREATED), []), (event(2, BX, CREATED), [])], now=1.0)
    )
    asked: list[tuple[str, str]] = []

    def by_account(event_type: str, record_id: str) -> Sequence[str]:
        asked.append((event_type, record_id))
        return ["to-" + split_key(record_id)[0]]

    replayed = await store.replay(since=0.0, event_type=None, targets=by_account, now=2.0)
    assert replayed == Replayed(events=2, deliveries=2, unmatched=0, already_pending=0)
    assert asked == [(CREATED, X), (CREATED, BX)]
    assert sorted((v.subscriber_id, v.event_id) for v in await everything(store)) == [
        ("to-b", "evt_2"),
        ("to-default", "evt_1"),
    ]


# --- a store made before this step, and the index --------------------------------------------

OLD_RECORDS = [  # (id, status, created_at, seen_at)
    ("r1", "pending", "2026-01-01T00:00:00Z", 1.0),
    ("r2", "success", "2026-01-02T00:00:00Z", 1.0),
    ("r3", "running", "2026-01-03T00:00:00Z", 5.0),
]


async def make_old_store(backend: str, where: str) -> None:
    """The store as the schema before accounts made it, holding `OLD_RECORDS` and a
    baseline mark."""
    rows = [(*r, None, None) for r in OLD_RECORDS]  # neither missed nor gone
    if backend == "sqlite":
        with closing(sqlite3.connect(where, isolation_level=None)) as conn:
            for version, script in enumerate(MIGRATIONS[:SQLITE_BEFORE_ACCOUNTS], start=1):
                for statement in statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("INSERT INTO meta VALUES ('baseline_mark', '2026-01-03T00:00:00Z')")
        return
    async with await psycopg.AsyncConnection.connect(where, autocommit=True) as pg:
        await pg.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, script in enumerate(migrations()[:PG_BEFORE_ACCOUNTS], start=1):
            await pg.execute(script)
            await pg.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        async with pg.cursor() as cur:
            await cur.executemany(
                "INSERT INTO records (id, status, created_at, seen_at, missed_at, gone_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )
        await pg.execute("INSERT INTO meta VALUES ('baseline_mark', '2026-01-03T00:00:00Z')")


async def query(backend: str, where: str, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Rows of `sql` on the store's database, besides the store (`?` placeholders)."""
    if backend == "sqlite":
        with closing(sqlite3.connect(where)) as conn:
            return conn.execute(sql, params).fetchall()
    async with await psycopg.AsyncConnection.connect(where, autocommit=True) as pg:
        cur = await pg.execute(sql.replace("?", "%s"), params or None)
        return await cur.fetchall() if cur.description else []


async def test_a_store_made_before_accounts_keeps_its_records_as_the_default_accounts(
    database: tuple[str, str], open_store: OpenStore
) -> None:
    backend, where = database
    await make_old_store(backend, where)
    store = await open_store()
    assert not store.created
    assert sorted(await query(backend, where, "SELECT id, account FROM records")) == [
        ("r1", DEFAULT_ACCOUNT),
        ("r2", DEFAULT_ACCOUNT),
        ("r3", DEFAULT_ACCOUNT),
    ]
    assert await store.newest_created_at() == "2026-01-03T00:00:00Z"
    assert await store.newest_created_at(B) is None
    assert [s.id for s in await store.tracked_pending()] == ["r3", "r1"]
    assert [s.id for s in await store.tracked_pending(DEFAULT_ACCOUNT)] == ["r3", "r1"]
    assert await store.tracked_pending(B) == []
    assert await store.baseline_done() and not await store.baseline_done(B)
    # account b's sweep leaves them alone; the default account's forgets its unseen ones
    b_sweep = await store.commit_scan(scan(B, now=9.0, forget_unseen_before=8.0))
    assert b_sweep.forgotten == []
    swept = await store.commit_scan(scan(DEFAULT_ACCOUNT, now=9.0, forget_unseen_before=2.0))
    assert sorted(swept.forgotten) == ["r1", "r2"]
    # new records of both accounts join them
    await store.commit_scan(scan(B, record("b/r1", "pending", "2026-02-01T00:00:00Z"), now=10.0))
    assert await store.newest_created_at() == "2026-01-03T00:00:00Z"
    assert await store.newest_created_at(B) == "2026-02-01T00:00:00Z"


def plan_of(backend: str, rows: list[Any]) -> str:
    """The query plan EXPLAIN gave, as text."""
    if backend == "sqlite":
        return " | ".join(str(row[3]) for row in rows)
    return json.dumps(rows[0][0])


async def test_newest_created_at_is_an_index_lookup_among_many_records(
    database: tuple[str, str], open_store: OpenStore
) -> None:
    backend, where = database
    store = await open_store()
    # MANY records, half of each account, their creation times interleaved
    created = [f"2026-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z" for n in range(MANY)]
    for account, start in ((DEFAULT_ACCOUNT, 0), (B, 1)):
        states = [
            record(record_key(account, f"r{n}"), "success", created[n])
            for n in range(start, MANY, 2)
        ]
        await store.commit_scan(scan(account, *states, now=1.0))
    assert await store.newest_created_at() == created[MANY - 2]
    assert await store.newest_created_at(B) == created[MANY - 1]
    if backend == "sqlite":
        rows = await query(backend, where, f"EXPLAIN QUERY PLAN {SQLITE_NEWEST}", [B])
        plan = plan_of(backend, rows)
        assert "USING COVERING INDEX records_account (account=?)" in plan, plan
    else:
        await query(backend, where, "ANALYZE records")
        sql = f"EXPLAIN (FORMAT JSON) {PG_NEWEST.replace('%s', '?')}"
        plan = plan_of(backend, await query(backend, where, sql, [B]))
        assert '"Index Name": "records_account"' in plan, plan
        assert '"Scan Direction": "Backward"' in plan and '"Sort"' not in plan, plan
