"""The PostgreSQL store on a real server (BRIDGE_TEST_PG_URL; each test in a schema of its
own): migrations, the database's clock, the counts, wake-ups, probing and its errors. Two
replicas on one database: test_store_pg_replicas. The port's rules, shared with SQLite:
tests/contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import structlog

from bridge.errors import StoreError
from bridge.models import (
    DEAD_LETTERED,
    Attempt,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    Event,
    RecordState,
    Report,
)
from bridge.store.base import AttemptOutcome, ScanCommit, SubscriberHealth
from bridge.store.factory import build_store
from bridge.store.pg import PgStore
from bridge.store.pg_probe import probe_pg
from bridge.store.pg_schema import lock_key, migrations
from bridge.store.pg_url import scrubbed
from tests.conftest import make_secret
from tests.integration.helpers import settings_for
from tests.pgdb import fresh_schema, require_pg

DEADLINE_S = 10.0


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL whose connections use a new, empty schema (dropped afterwards)."""
    with fresh_schema(require_pg(request.node.nodeid)) as url:
        yield url


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PgStore]:
    """An open store on that schema, on the clock its callers give (like the contract's)."""
    store = PgStore(pg_url, db_clock=False)
    await store.open()
    yield store
    await store.close()


def event(n: int, rid: str = "r1") -> Event:
    return Event(f"evt_{n}", "denoise.completed", rid, float(n), None, {"id": rid, "n": n})


async def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of `query`, on a connection of the test's own."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query, params or None)
        return await cur.fetchall() if cur.description else []


async def test_reopening_does_not_migrate_again(pg_url: str) -> None:
    first = PgStore(pg_url)
    await first.open()
    await first.close()
    again = PgStore(pg_url)
    await again.open()
    await again.close()
    known = len(migrations())
    assert (first.created, again.created) == (True, False)
    assert first.schema_version == again.schema_version == known
    assert first.store_id == again.store_id and len(first.store_id or "") == 32
    versions = await sql(pg_url, "SELECT version FROM schema_migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, known + 1)]


async def test_replicas_opening_an_empty_database_at_once_migrate_it_once(pg_url: str) -> None:
    stores = [PgStore(pg_url, pool_max=2) for _ in range(5)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert sorted(s.created for s in stores) == [False] * 4 + [True]
        assert len({s.store_id for s in stores}) == 1
        assert {s.schema_version for s in stores} == {len(migrations())}
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    counted = await sql(pg_url, "SELECT version, COUNT(*) FROM schema_migrations GROUP BY 1")
    assert sorted(counted) == [(v, 1) for v in range(1, len(migrations()) + 1)]


async def test_a_newer_schema_is_refused(pg: PgStore, pg_url: str) -> None:
    await sql(pg_url, "INSERT INTO schema_migrations (version) VALUES (99)")
    with pytest.raises(StoreError, match="schema version 99 is newer than this bridge knows"):
        await PgStore(pg_url).open()
    probe = asyncio.create_task(probe_pg(pg_url))
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await probe


async def test_db_clock_claims_on_the_database_time_whatever_the_caller_says(
    pg_url: str,
) -> None:
    store = PgStore(pg_url, db_clock=True)
    await store.open()
    try:
        # a scan's deliveries are due by the database's clock, not at the commit's `now`
        await store.commit_scan(ScanCommit([], [(event(1), ["a"])], now=5e9))
        [d] = await store.claim_due(now=0.0, limit=5, lease_s=60.0, subscribers=["a"])
        [(left,)] = await sql(
            pg_url,
            "SELECT lease_until - extract(epoch FROM clock_timestamp())::float8 FROM deliveries",
        )
        assert 50.0 < left <= 60.0  # the lease runs from the database's now
        # answered on this process's clock: when the lease runs out, about a minute from now
        due = await store.next_due_at(["a"])
        assert due is not None and abs(due - (time.time() + 60.0)) < 10.0
        # an absolute time from the caller becomes that delay on the database's clock
        outcome = AttemptOutcome(DeliveryState.PENDING, time.time() + 1000.0)
        assert await store.finish_attempt(
            d, Attempt(time.time(), 500, 1.0, "HTTP 500", ""), outcome
        )
        [(delay,)] = await sql(
            pg_url,
            "SELECT next_attempt_at - extract(epoch FROM clock_timestamp())::float8"
            " FROM deliveries",
        )
        assert 990.0 < delay <= 1000.0
        assert await store.claim_due(now=1e12, limit=5, lease_s=60.0, subscribers=["a"]) == []
    finally:
        await store.close()


async def test_counts_equal_a_group_by_through_every_transition_and_fold(
    pg: PgStore, pg_url: str
) -> None:
    async def group_by() -> dict[DeliveryState, int]:
        counts = dict.fromkeys(DeliveryState, 0)
        for state, n in await sql(pg_url, "SELECT state, COUNT(*) FROM deliveries GROUP BY 1"):
            counts[DeliveryState(state)] = n
        return counts

    await pg.commit_scan(
        ScanCommit([], [(event(n, f"r{n}"), ["a", "b"]) for n in range(6)], now=0.0)
    )
    claimed = await pg.claim_due(now=0.0, limit=4, lease_s=30.0, subscribers=["a"])
    outcomes = [DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.DELIVERED]
    for d, state in zip(claimed, outcomes, strict=False):
        assert await pg.finish_attempt(d, Attempt(1.0, 200, 1.0, None, ""), AttemptOutcome(state))
    assert await pg.count_deliveries() == await group_by()
    assert await pg.reconcile_subscribers(["a"], now=2.0) == (6, 0)
    assert await pg.count_deliveries() == await group_by()
    assert await pg.purge(now=1e9, retention_s=10.0) > 0
    assert await pg.count_deliveries() == await group_by()
    # the purge folded the deltas: the counters alone hold the counts now
    assert await sql(pg_url, "SELECT * FROM delivery_count_deltas") == []
    by_sub = await pg.counts_by_subscriber()
    assert by_sub == {"a": {**dict.fromkeys(DeliveryState, 0), DeliveryState.PENDING: 3}}


async def test_listen_hears_what_another_store_does_and_returns_when_stopped(
    pg: PgStore, pg_url: str
) -> None:
    other = PgStore(pg_url, db_clock=False)
    await other.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()
    listening = asyncio.create_task(pg.listen(heard.put_nowait, stop))
    try:
        assert await asyncio.wait_for(heard.get(), DEADLINE_S) == "reconnected"
        await other.commit_scan(ScanCommit([], [(event(1), ["a"])], now=0.0))
        assert await asyncio.wait_for(heard.get(), DEADLINE_S) == "outbox"
        assert await asyncio.wait_for(heard.get(), DEADLINE_S) == "events"  # the pull feed's
        await other.commit_scan(ScanCommit([RecordState("r9", "pending", "t")], [], now=1.0))
        await other.set_subscriber_health("a", SubscriberHealth(failing_since=1.0))
        # the scan that queued nothing said nothing
        assert await asyncio.wait_for(heard.get(), DEADLINE_S) == "health"
        # a lost connection: a warning, a pause, then listening again
        with structlog.testing.capture_logs() as logs:
            await sql(
                pg_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN %%' AND query LIKE %s",
                (f"%{pg.schema}%",),
            )
            assert await asyncio.wait_for(heard.get(), DEADLINE_S) == "reconnected"
        [warning] = [e for e in logs if e["log_level"] == "warning"]
        assert warning["event"] == "lost the wake-ups' connection" and warning["retry_in_s"] == 1.0
        await other.retry(1, now=2.0)
        assert await asyncio.wait_for(heard.get(), DEADLINE_S) == "outbox"
        stop.set()
        await asyncio.wait_for(listening, 2.0)
    finally:
        stop.set()
        await asyncio.gather(listening, return_exceptions=True)
        await other.close()


async def test_probe_reads_without_creating_anything(pg_url: str) -> None:
    empty = await probe_pg(pg_url)
    assert (empty.schema_version, empty.store_id, empty.leader) == (0, None, None)
    assert await sql(pg_url, "SELECT * FROM pg_tables WHERE schemaname = current_schema()") == []
    store = PgStore(pg_url, db_clock=False, replica_id="r1")
    await store.open()
    try:
        await store.commit_scan(ScanCommit([RecordState("r1", "pending", "t")], [], now=1234.5))
        assert await store.hold_leadership("r1", 30.0, last_poll_at=1234.0)
        found = await probe_pg(pg_url)
    finally:
        await store.close()
    assert (found.schema_version, found.store_id) == (len(migrations()), store.store_id)
    assert found.last_seen_at == 1234.5
    assert found.leader is not None and found.leader.replica == "r1"
    assert found.leader.last_poll_at == 1234.0


@pytest.mark.parametrize("what", ["probe", "open"])
async def test_an_unreachable_server_is_one_line_without_the_password(what: str) -> None:
    url = "postgresql://bridge:S3cretPw@127.0.0.1:1/bridgedb?sslmode=disable"
    with pytest.raises(StoreError) as raised:
        if what == "probe":
            await probe_pg(url, timeout_s=2)
        else:
            await PgStore(url, open_timeout_s=2).open()
    message = str(raised.value)
    assert message.startswith("cannot reach PostgreSQL at postgresql://127.0.0.1:1/bridgedb: ")
    assert "\n" not in message and "refused" in message
    assert "S3cretPw" not in message and "bridge@" not in message


async def test_listen_retries_an_unreachable_server_until_stopped() -> None:
    stop = asyncio.Event()
    store = PgStore("postgresql://bridge:S3cretPw@127.0.0.1:1/bridgedb")
    with structlog.testing.capture_logs() as logs:
        listening = asyncio.create_task(store.listen(lambda _: None, stop))
        deadline = time.monotonic() + DEADLINE_S
        while not logs:
            assert time.monotonic() < deadline, "no warning"
            await asyncio.sleep(0.02)
        stop.set()  # in the pause before the next try: it returns at once
        await asyncio.wait_for(listening, 2.0)
    assert logs[0]["event"] == "cannot listen for wake-ups" and "S3cretPw" not in str(logs)


def with_password(url: str) -> tuple[str, str]:
    """`url` with a password (the server trusts the test user: any will do), and it."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or 'postgres'}:S3cretPw@{host}"
    return urlunsplit(parts._replace(netloc=netloc)), "S3cretPw"


async def test_a_failing_query_says_what_failed_without_the_password(pg_url: str) -> None:
    url, password = with_password(pg_url)
    store = PgStore(url, db_clock=False)
    await store.open()
    try:
        await sql(pg_url, "ALTER TABLE meta RENAME TO meta_gone")
        with pytest.raises(StoreError) as raised:
            await store.get_meta("baseline_mark")
    finally:
        await store.close()
    message = str(raised.value)
    host = urlsplit(url).hostname
    assert message.startswith(f"store postgresql://{host}:")
    assert "reading service state: UndefinedTable:" in message and '"meta"' in message
    assert "\n" not in message and password not in message


async def test_nul_characters_from_outside_are_stored_as_u_fffd(pg: PgStore) -> None:
    """PostgreSQL's text cannot hold NUL: record, event and service-state text is stored
    with U+FFFD in its place instead of failing the whole scan (again at every poll)."""
    odd = Event("evt\x00", "type\x00", "r\x00", 1.0, "pend\x00", {"s": "a\x00b"})
    scan = ScanCommit(
        [RecordState("r\x00", "pending\x00", "2026\x00")],
        [(odd, ["sub\x00"])],
        now=1.0,
        seen=["r\x00"],
        meta={"sweep": "{\x00}"},
    )
    done = await pg.commit_scan(scan)
    assert (done.deliveries, done.recorded) == (1, frozenset({"evt\x00"}))
    # found by the id the poller knows it by
    assert await pg.known_states(["r\x00"]) == {
        "r\x00": RecordState("r\x00", "pending\ufffd", "2026\ufffd")
    }
    assert await pg.get_meta("sweep") == "{\ufffd}"
    [stored] = await pg.list_events(event_type="type\x00") or []
    assert stored == Event("evt\ufffd", "type\ufffd", "r\ufffd", 1.0, "pend\ufffd", odd.data)
    assert await pg.list_events(before="evt\x00") == []
    [view] = await pg.list_deliveries(where=DeliveryFilter(subscriber="sub\x00"))
    assert (view.event_id, view.subscriber_id) == ("evt\ufffd", "sub\ufffd")
    # the same event again is recorded once
    assert (await pg.commit_scan(ScanCommit([], [(odd, ["sub\x00"])], now=2.0))).deliveries == 0


async def test_a_batch_of_attempts_the_database_refuses_is_recorded_one_by_one(
    pg: PgStore,
) -> None:
    await pg.commit_scan(ScanCommit([], [(event(n, f"r{n}"), ["a"]) for n in range(3)], now=0.0))
    claimed = await pg.claim_due(now=0.0, limit=3, lease_s=60.0, subscribers=["a"])
    bad = Attempt(1.0, 2**40, 1.0, "HTTP ?", "")  # a status no integer column holds
    ok = Attempt(1.0, 200, 1.0, None, "")
    done = AttemptOutcome(DeliveryState.DELIVERED)
    results = await asyncio.gather(
        pg.finish_attempt(claimed[0], ok, done),
        pg.finish_attempt(claimed[1], bad, done),
        pg.finish_attempt(claimed[2], ok, done),
        return_exceptions=True,
    )
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], StoreError) and "NumericValueOutOfRange" in str(results[1])
    states = {v.id: v.state for v in await pg.list_deliveries()}
    assert states == {
        claimed[0].id: DeliveryState.DELIVERED,
        claimed[1].id: DeliveryState.PENDING,  # still leased: it goes again when that ends
        claimed[2].id: DeliveryState.DELIVERED,
    }


async def test_without_migrate_open_creates_nothing_and_names_both_versions(
    pg_url: str,
) -> None:
    known = len(migrations())
    with pytest.raises(StoreError) as raised:
        await PgStore(pg_url, migrate=False).open()
    message = str(raised.value)
    assert "holds no store" in message and f"schema version 0, this bridge's is {known}" in message
    assert await sql(pg_url, "SELECT * FROM pg_tables WHERE schemaname = current_schema()") == []
    created = PgStore(pg_url)
    await created.open()
    await created.close()
    reader = PgStore(pg_url, migrate=False, db_clock=False)
    await reader.open()  # at this bridge's version: opened as it is
    try:
        assert (reader.created, reader.store_id) == (False, created.store_id)
        assert reader.schema_version == known
        assert await reader.list_deliveries() == []
    finally:
        await reader.close()
    await sql(pg_url, "INSERT INTO schema_migrations (version) VALUES (%s)", (known + 7,))
    with pytest.raises(StoreError, match=f"schema version {known + 7}, this bridge's is {known}"):
        await PgStore(pg_url, migrate=False).open()
    await sql(pg_url, "DELETE FROM schema_migrations")
    with pytest.raises(StoreError, match=f"schema version 0, this bridge's is {known}"):
        await PgStore(pg_url, migrate=False).open()
    assert await sql(pg_url, "SELECT * FROM schema_migrations") == []


@pytest.mark.parametrize("migrate", [True, False])
async def test_build_store_passes_migrate_to_the_postgresql_store(
    pg_url: str, tmp_path: Path, migrate: bool
) -> None:
    db = tmp_path / "b.db"
    base = settings_for("http://127.0.0.1:9", "http://127.0.0.1:9/hook", make_secret(), db)
    settings = base.model_copy(update={"store": base.store.model_copy(update={"url": pg_url})})
    store = build_store(settings, migrate=migrate)
    assert isinstance(store, PgStore)
    if migrate:
        await store.open()
        await store.close()
        assert store.created
    else:
        with pytest.raises(StoreError, match="holds no store"):
            await store.open()
    sqlite = build_store(base, migrate=False)  # SQLite: the argument is ignored
    await sqlite.open()
    await sqlite.close()
    assert sqlite.created


async def test_last_poll_at_never_moves_back(pg: PgStore) -> None:
    assert await pg.hold_leadership("r1", 30.0, last_poll_at=None)
    assert (await pg.leader()).last_poll_at is None
    assert await pg.hold_leadership("r1", 30.0, last_poll_at=10.0)
    assert await pg.hold_leadership("r1", 30.0, last_poll_at=None)  # nothing polled: kept
    assert (await pg.leader()).last_poll_at == 10.0
    assert await pg.hold_leadership("r1", 30.0, last_poll_at=7.0)  # an older one: kept
    assert (await pg.leader()).last_poll_at == 10.0
    await pg.resign("r1")
    assert await pg.hold_leadership("r2", 30.0, last_poll_at=12.0)  # a new holder: newer
    assert (await pg.leader()).last_poll_at == 12.0


async def test_a_holders_per_process_suffix_is_not_shown(pg_url: str) -> None:
    a = PgStore(pg_url, db_clock=False, replica_id="web-1#4f2a")
    b = PgStore(pg_url, db_clock=False, replica_id="web-1#77c0")  # the same replica id
    await a.open()
    await b.open()
    try:
        assert await a.hold_leadership("web-1#4f2a", 30.0, last_poll_at=3.0)
        assert not await b.hold_leadership("web-1#77c0", 30.0, last_poll_at=None)
        assert (await b.leader()).replica == "web-1"
        probed = await probe_pg(pg_url)
        assert probed.leader is not None and probed.leader.replica == "web-1"
        with pytest.raises(StoreError, match=r"^another replica \(web-1\) holds the poller's"):
            await b.commit_scan(ScanCommit([], [(event(1), ["x"])], now=1.0))
        assert (await a.commit_scan(ScanCommit([], [(event(1), ["x"])], now=1.0))).deliveries
    finally:
        await a.close()
        await b.close()


SECRET_URLS = [
    # libpq cannot parse these: its messages quote the text, password and all
    ("postgresql://bridge:S3cretPW%zz@127.0.0.1:5432/bridgedb", "S3cretPW"),
    ("postgresql://bridge:S3cret PW@127.0.0.1:5432/bridgedb", "S3cret"),
    ("postgresql://127.0.0.1:5432/bridgedb?password=S3cretPW&bogus=1", "S3cretPW"),
    # an unencoded @: the rest of the password would be taken for the host
    ("postgresql://bridge:S3c@retPW@127.0.0.1:5432/bridgedb", "retPW"),
    # the server refuses: in the query string, and then in the user-info
    ("postgresql://127.0.0.1:1/bridgedb?password=S3cretPW&user=bridge", "S3cretPW"),
    ("postgresql://bridge:S3cretPW@127.0.0.1:1/bridgedb", "S3cretPW"),
]


@pytest.mark.parametrize(("url", "secret"), SECRET_URLS)
@pytest.mark.parametrize("what", ["probe", "open", "listen"])
async def test_no_error_quotes_the_password(url: str, secret: str, what: str) -> None:
    if what == "listen":
        stop = asyncio.Event()
        with structlog.testing.capture_logs() as logs:
            listening = asyncio.create_task(PgStore(url).listen(lambda _: None, stop))
            deadline = time.monotonic() + DEADLINE_S
            while not logs:
                assert time.monotonic() < deadline, "no warning"
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(listening, 2.0)
        message = str(logs)
    else:
        with pytest.raises(StoreError) as raised:
            if what == "probe":
                await probe_pg(url, timeout_s=2)
            else:
                await PgStore(url, open_timeout_s=2).open()
        message = str(raised.value)
        assert "\n" not in message and message.startswith("can")
    assert secret not in message and "PW" not in message and "bridge@" not in message


def test_the_scrubber_hides_user_info_and_password_parameters() -> None:
    url = "postgresql://us%40er:p%40ss%3Aword@db.example:5432/app?password=S3cretPW"
    text = (
        "failed for user us@er (p@ss:word); conninfo password=S3cretPW host=db,"
        " password = 'other one' us%40er:p%40ss%3Aword postgresql://us:pw@db.example/app"
    )
    shown = scrubbed(text, url)
    for secret in ("us@er", "p@ss:word", "S3cretPW", "other one", "p%40ss", "us:pw"):
        assert secret not in shown
    assert "postgresql://db.example" in shown and "password=<redacted>" in shown


async def test_reports_and_bulk_retries_wake_the_other_replicas(pg: PgStore, pg_url: str) -> None:
    other = PgStore(pg_url, db_clock=False)
    await other.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()
    listening = asyncio.create_task(pg.listen(heard.put_nowait, stop))

    async def next_ones(n: int) -> list[str]:
        return sorted([await asyncio.wait_for(heard.get(), DEADLINE_S) for _ in range(n)])

    def report(n: int, rid: str, targets: tuple[str, ...]) -> Report:
        return Report(Event(f"rpt_{n}", DEAD_LETTERED, rid, 5.0, None, {}), targets)

    try:
        assert await asyncio.wait_for(heard.get(), DEADLINE_S) == "reconnected"
        await other.commit_scan(
            ScanCommit([], [(event(1), ["a"]), (event(2, "r2"), ["a"])], now=0.0)
        )
        assert await next_ones(2) == ["events", "outbox"]
        one, two = await other.claim_due(now=1.0, limit=2, lease_s=60, subscribers=["a"])
        # an attempt with a report: its deliveries are due and its event is on the feed
        dead = AttemptOutcome(DeliveryState.FAILED, report=report(1, "delivery:1", ("ops",)))
        assert await other.finish_attempt(one, Attempt(2.0, 500, 1.0, "HTTP 500", ""), dead)
        assert await next_ones(2) == ["events", "outbox"]
        # a report with no target: on the feed only
        quiet = AttemptOutcome(DeliveryState.FAILED, report=report(2, "delivery:2", ()))
        assert await other.finish_attempt(two, Attempt(2.0, 500, 1.0, "HTTP 500", ""), quiet)
        assert await next_ones(1) == ["events"]
        # a subscriber disabled, with its report
        health = SubscriberHealth(failing_since=1.0, disabled_at=3.0, reason="gone")
        await other.set_subscriber_health("a", health, report=report(3, "subscriber:a", ("ops",)))
        assert await next_ones(3) == ["events", "health", "outbox"]
        # a bulk retry that retried something; one that retried nothing says nothing
        assert (
            await other.retry_failed(DeliveryFilter(record_id="r1"), now=4.0, subscribers=["a"])
            == 1
        )
        assert await next_ones(1) == ["outbox"]
        assert (
            await other.retry_failed(DeliveryFilter(record_id="r1"), now=4.0, subscribers=["a"])
            == 0
        )
        await other.set_subscriber_health("a", health, report=report(4, "subscriber:a", ("ops",)))
        assert await next_ones(1) == ["health"]  # already disabled: no report
        assert heard.empty()
    finally:
        stop.set()
        await asyncio.gather(listening, return_exceptions=True)
        await other.close()


async def test_reports_wait_for_the_scan_committing_and_come_after_it_on_the_feed(
    pg: PgStore, pg_url: str
) -> None:
    """A report's event is numbered under the scan lock: while a scan's transaction holds it,
    a report waits, so the feed never sees a lower seq appear after a higher one."""
    await pg.commit_scan(ScanCommit([], [(event(1), ["a"])], now=0.0))
    [held] = await pg.claim_due(now=1.0, limit=1, lease_s=60, subscribers=["a"])
    outcome = AttemptOutcome(
        DeliveryState.FAILED,
        report=Report(Event("rpt_1", DEAD_LETTERED, "delivery:1", 2.0, None, {}), ("ops",)),
    )
    async with await psycopg.AsyncConnection.connect(pg_url) as scan:
        await scan.execute(f"SELECT pg_advisory_xact_lock({lock_key('%s')})", ("scan",))
        finishing = asyncio.create_task(
            pg.finish_attempt(held, Attempt(2.0, 500, 1.0, "HTTP 500", ""), outcome)
        )
        await asyncio.sleep(0.3)
        assert not finishing.done()  # waits for the scan's transaction
        await scan.rollback()
    assert await asyncio.wait_for(finishing, DEADLINE_S)
    disabled = Report(Event("rpt_2", DEAD_LETTERED, "subscriber:a", 3.0, None, {}), ("ops",))
    async with await psycopg.AsyncConnection.connect(pg_url) as scan:
        await scan.execute(f"SELECT pg_advisory_xact_lock({lock_key('%s')})", ("scan",))
        health = SubscriberHealth(failing_since=1.0, disabled_at=3.0, reason="gone")
        disabling = asyncio.create_task(pg.set_subscriber_health("a", health, report=disabled))
        await asyncio.sleep(0.3)
        assert not disabling.done()
        await scan.rollback()
    await asyncio.wait_for(disabling, DEADLINE_S)
    page = await pg.events_after(after_seq=None, limit=10)
    assert [e.id for _, e in page.events] == ["evt_1", "rpt_1", "rpt_2"]


async def test_a_claim_storing_a_dead_letters_report_waits_for_the_scan_committing(
    pg_url: str,
) -> None:
    """A claim that dead-letters a delivery whose lease ran out stores its report under the
    scan lock (taken first: the claim runs again with it), so the report comes after the
    scan on the feed; a claim with nothing to report never waits for the lock."""
    url = pg_url
    pg = PgStore(url, max_attempts=1, db_clock=False)
    await pg.open()
    try:
        await pg.commit_scan(ScanCommit([], [(event(1), ["a"]), (event(2, "r2"), ["b"])], now=0.0))
        [held] = await pg.claim_due(now=1.0, limit=1, lease_s=10, subscribers=["a"])

        def on_dead(delivery: Delivery, tried: Attempt) -> Report | None:
            rid = f"delivery:{delivery.id}"
            data = {"error": tried.error}
            dead = Event("rpt_1", DEAD_LETTERED, rid, tried.attempted_at, None, data)
            return Report(dead, ("ops",))

        async with await psycopg.AsyncConnection.connect(url) as scan:
            await scan.execute(f"SELECT pg_advisory_xact_lock({lock_key('%s')})", ("scan",))
            # nothing lost: no report, no wait
            [other] = await asyncio.wait_for(
                pg.claim_lanes(now=20.0, lease_s=10, rooms=[("b", 1)], on_dead=on_dead),
                DEADLINE_S,
            )
            assert other.event.id == "evt_2"
            claiming = asyncio.create_task(
                pg.claim_lanes(now=20.0, lease_s=10, rooms=[("a", 1)], on_dead=on_dead)
            )
            await asyncio.sleep(0.3)
            assert not claiming.done()  # waits for the scan's transaction
            await scan.execute(
                "INSERT INTO events (id, type, record_id, occurred_at, previous_status,"
                " data) VALUES ('evt_3', 'denoise.completed', 'r3', 3.0, NULL, '{}')"
            )
            await scan.commit()
        assert await asyncio.wait_for(claiming, DEADLINE_S) == []
        [view] = await pg.list_deliveries(where=DeliveryFilter(subscriber="a"))
        assert (view.id, view.state) == (held.id, DeliveryState.FAILED)
        page = await pg.events_after(after_seq=None, limit=10)
        assert [e.id for _, e in page.events] == ["evt_1", "evt_2", "evt_3", "rpt_1"]
        [report] = await pg.list_events(event_type=DEAD_LETTERED) or []
        assert (report.record_id, report.occurred_at) == (f"delivery:{held.id}", 11.0)
        [queued] = await pg.list_deliveries(where=DeliveryFilter(subscriber="ops"))
        assert (queued.event_id, queued.state) == ("rpt_1", DeliveryState.PENDING)
    finally:
        await pg.close()
