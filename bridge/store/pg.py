"""PostgreSQL adapter of the store port, for replicas sharing one database: the rules of the
SQLite store, a transaction per operation on a small pool (`pg_pool`); the SQL is in
`pg_scan`, `pg_claim`, `pg_ops`, `pg_retention` and `pg_leader`, the schema in `pg_schema`,
the group commit of attempts in `pg_finish`, the wake-ups between replicas in `pg_listen`.

Clock: with `db_clock` (production), lease and due times are the database's, so replicas
whose clocks disagree still agree on when a lease runs out: the `now` given to claims,
release, retry, retry_failed, replay and reconcile, and the due time of the deliveries a
scan or a report queues, are replaced by the database's clock; an attempt's next due time
is turned into a delay on this process's clock and set that far from the database's;
`next_due_at` answers on this process's clock. Without it (tests with a fake clock), every
time is used as given.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

from bridge.models import (
    ALL_DELIVERIES,
    DEFAULT_ACCOUNT,
    Attempt,
    Callback,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliveryView,
    Event,
    Job,
    RecordState,
    Replayed,
    Report,
)
from bridge.store import pg_claim as claims
from bridge.store import pg_jobs as jobs
from bridge.store import pg_leader as leases
from bridge.store import pg_ops as ops
from bridge.store import pg_retention as retention
from bridge.store import pg_scan as scans
from bridge.store.base import (
    BASELINE_MARK,
    AttemptOutcome,
    Committed,
    FeedPage,
    LeaderState,
    ScanCommit,
    SubscriberHealth,
    meta_key,
)
from bridge.store.claims_common import Claimed, log_lost, storable
from bridge.store.jobs_common import job_target
from bridge.store.pg_finish import Finisher, store_report
from bridge.store.pg_listen import EVENTS, HEALTH, OUTBOX, channel_name, listen, notify
from bridge.store.pg_pool import Pool
from bridge.store.pg_schema import Conn

DEFAULT_MAX_ATTEMPTS = 8  # 1 + len(delivery.retry_schedule_s) with the default schedule


class PgStore:
    """The `Store` and `LeaderStore` ports on a PostgreSQL database (in the schema the URL's
    search_path names first). `replica_id`: this process's name in the poller's lease; a
    scan is refused while another replica holds it (a name may end in `#<token>`, told apart
    but not shown). `max_attempts`: a delivery whose lease runs out with no outcome counts
    an attempt, and is dead-lettered after this many. `migrate` off (commands that only
    read, beside running replicas): `open()` never creates nor migrates the schema.
    After `open()`: `created` (the schema held no store), `store_id`, `schema_version`."""

    shared = True  # replicas share the database: leases decide who does what

    def __init__(
        self,
        url: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        replica_id: str = "",
        db_clock: bool = True,
        pool_max: int = 8,
        open_timeout_s: float = 10.0,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.max_attempts = max_attempts
        self.replica_id = replica_id
        self.db_clock = db_clock
        self.created = False
        self.store_id: str | None = None
        self.schema_version = 0
        self.schema: str | None = None  # where the store is (after `open()`)
        self._db = Pool(
            url, size=pool_max, open_timeout_s=open_timeout_s, db_clock=db_clock, migrate=migrate
        )
        self._channel = ""
        self._purged_up_to = 0  # events up to this seq were looked at by purges
        self._finisher = Finisher(self._db)

    async def open(self) -> None:
        """Create or migrate the schema (with `migrate` off: `StoreError` unless the store
        is there at this bridge's version), then open the pool of connections."""
        migrated = await self._db.open()
        self.created, self.store_id = migrated.created, migrated.store_id
        self.schema_version, self.schema = migrated.version, migrated.schema
        self._channel = channel_name(migrated.schema)
        self._finisher.channel = self._channel

    async def close(self) -> None:
        """Within a few seconds, even when the server stopped answering: the attempts being
        recorded get `CLOSE_S` to finish, then fail."""
        await self._finisher.close()
        await self._db.close()

    @property
    def reconnects_failed(self) -> int:
        """Times the pool gave a lost connection up (after `pg_pool.RECONNECT_S`) and began
        anew: each a server that did not answer for that long."""
        return self._db.reconnects_failed

    async def _now(self, conn: Conn, now: float) -> float:
        return await self._db.now(conn, now)

    async def ping(self) -> None:
        await self._db.read("ping", lambda c: c.execute("SELECT 1"))

    async def get_meta(self, key: str) -> str | None:
        return await self._db.read("reading service state", lambda c: scans.get_meta(c, key))

    async def baseline_done(self, account: str = DEFAULT_ACCOUNT) -> bool:
        return await self.get_meta(meta_key(account, BASELINE_MARK)) is not None

    async def newest_created_at(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        return await self._db.read("reading records", lambda c: scans.newest_created_at(c, account))

    async def known_states(self, record_ids: Sequence[str]) -> dict[str, RecordState]:
        return await self._db.read("reading records", lambda c: scans.known_states(c, record_ids))

    async def tracked_pending(self, account: str | None = None) -> list[RecordState]:
        return await self._db.read("reading records", lambda c: scans.tracked_pending(c, account))

    async def commit_scan(self, commit: ScanCommit) -> Committed:
        async def run(conn: Conn) -> Committed:
            await scans.serialize(conn)  # scans commit one at a time: seqs in commit order
            done = await scans.commit_scan(conn, commit, due_at=await self._now(conn, commit.now))
            if done.deliveries:
                await notify(conn, self._channel, OUTBOX)
            if done.recorded:
                await notify(conn, self._channel, EVENTS)  # the pull feed's waiters
            await leases.fence(conn, self.replica_id)  # last: the lease's row locked briefly
            return done

        return await self._db.tx("committing a scan", run)

    async def claim_due(
        self,
        *,
        now: float,
        limit: int,
        lease_s: float,
        subscribers: Sequence[str],
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        if not subscribers or limit <= 0:
            return []
        token, subs = uuid.uuid4().hex, list(subscribers)

        async def run(conn: Conn, reporting: claims.Reporting | None) -> Claimed:
            at = await self._now(conn, now)
            return await claims.claim(
                conn,
                subs,
                limit,
                now=at,
                until=at + lease_s,
                token=token,
                max_attempts=self.max_attempts,
                reporting=reporting,
            )

        return await self._claim_tx(run, on_dead)

    async def claim_lanes(
        self,
        *,
        now: float,
        lease_s: float,
        rooms: Sequence[tuple[str, int]],
        caps: Mapping[str, int] | None = None,
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        if not any(room > 0 for _, room in rooms):
            return []
        token = uuid.uuid4().hex

        async def run(conn: Conn, reporting: claims.Reporting | None) -> Claimed:
            if caps:  # before reading the clock: the lease runs from when the claim can go
                await claims.lock_lanes(conn, [sub for sub, _ in rooms if sub in caps])
            at = await self._now(conn, now)
            return await claims.claim_lanes(
                conn,
                rooms,
                now=at,
                until=at + lease_s,
                token=token,
                max_attempts=self.max_attempts,
                caps=caps,
                reporting=reporting,
            )

        return await self._claim_tx(run, on_dead)

    async def _claim_tx(
        self,
        run: Callable[[Conn, claims.Reporting | None], Awaitable[Claimed]],
        on_dead: Callable[[Delivery, Attempt], Report | None] | None,
    ) -> list[Delivery]:
        """A claim's transaction (its lost leases logged), storing the reports of the
        deliveries it dead-letters (`on_dead`). Those writes take the scan lock first, as
        every write storing an event does (events are numbered in commit order): a claim
        runs without it, and only when it would dead-letter a delivery is it rolled back
        and run again, the lock taken first (`on_dead` is asked then only)."""

        async def attempt(conn: Conn, locked: bool) -> Claimed:
            if locked:  # first, before any row or claim lock (see `ScanLockFirst`)
                await scans.serialize(conn)
            reporting = None if on_dead is None else claims.Reporting(on_dead, locked)
            claimed = await run(conn, reporting)
            for report, at in claimed.reports:
                # due and created when the lease ran out (by the clock leases are on): due
                # at once, as that is before the claim's now
                await store_report(conn, self._channel, report, due_at=at, at=at)
            return claimed

        try:
            claimed = await self._db.tx("claiming deliveries", lambda c: attempt(c, False))
        except claims.ScanLockFirst:
            claimed = await self._db.tx("claiming deliveries", lambda c: attempt(c, True))
        log_lost(claimed.lost)
        return claimed.deliveries

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, outcome: AttemptOutcome
    ) -> bool:
        """Group commit (see `pg_finish`)."""
        return await self._finisher.finish(delivery, attempt, outcome)

    async def next_due_at(self, subscribers: Sequence[str]) -> float | None:
        if not subscribers:
            return None
        sent = time.time()
        due, db_now = await self._db.read(
            "reading due times", lambda c: claims.next_due_at(c, list(subscribers))
        )
        if due is None or not self.db_clock:
            return due
        self._db.measured(sent, db_now)
        return due - self._db.clock_offset_s

    async def release(self, delivery: Delivery, *, now: float) -> bool:
        async def run(conn: Conn) -> bool:
            at = await self._now(conn, now)
            done = await claims.release(conn, delivery.id, delivery.lease_token, at)
            if done:
                await notify(conn, self._channel, OUTBOX)
            return done

        return await self._db.tx("releasing a delivery", run)

    async def list_deliveries(
        self,
        *,
        where: DeliveryFilter = ALL_DELIVERIES,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryView]:
        return await self._db.read(
            "listing deliveries", lambda c: ops.list_deliveries(c, where, limit, before)
        )

    async def get_delivery(self, delivery_id: int) -> DeliveryView | None:
        return await self._db.read("reading a delivery", lambda c: ops.get_delivery(c, delivery_id))

    async def events_after(
        self, *, after_seq: int | None, limit: int, event_type: str | None = None
    ) -> FeedPage:
        return await self._db.read(
            "reading the feed", lambda c: ops.events_after(c, after_seq, limit, event_type)
        )

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        limit: int = 100,
        before: str | None = None,
        record_id: str | None = None,
    ) -> list[Event] | None:
        return await self._db.read(
            "listing events", lambda c: ops.list_events(c, event_type, limit, before, record_id)
        )

    async def retry(self, delivery_id: int, *, now: float) -> DeliveryState | None:
        async def run(conn: Conn) -> DeliveryState | None:
            state = await ops.retry(conn, delivery_id, await self._now(conn, now))
            if state in (DeliveryState.FAILED, DeliveryState.PENDING):
                await notify(conn, self._channel, OUTBOX)
            return state

        return await self._db.tx("retrying a delivery", run)

    async def retry_failed(
        self, where: DeliveryFilter, *, now: float, subscribers: Sequence[str]
    ) -> int:
        subs = list(subscribers)

        async def run(conn: Conn) -> int:
            retried = await ops.retry_failed(conn, where, await self._now(conn, now), subs)
            if retried:
                await notify(conn, self._channel, OUTBOX)
            return retried

        return await self._db.tx("retrying dead letters", run)

    async def replay(
        self,
        *,
        since: float,
        event_type: str | None,
        targets: Callable[[str, str], Sequence[str]],
        now: float,
    ) -> Replayed:
        async def run(conn: Conn) -> Replayed:
            done = await ops.replay(conn, since, event_type, targets, await self._now(conn, now))
            if done.deliveries:
                await notify(conn, self._channel, OUTBOX)
            return done

        return await self._db.tx("replaying events", run)

    async def counts_by_subscriber(self) -> dict[str, dict[DeliveryState, int]]:
        return await self._db.tx("counting deliveries", ops.folded(ops.counts_by_subscriber))

    async def count_deliveries(self) -> dict[DeliveryState, int]:
        """Deliveries by state, from the counters the store keeps (not a scan)."""
        return await self._db.tx("counting deliveries", ops.folded(ops.count_deliveries))

    async def subscriber_health(self) -> dict[str, SubscriberHealth]:
        return await self._db.read("reading subscriber health", ops.subscriber_health)

    async def set_subscriber_health(
        self,
        subscriber_id: str,
        health: SubscriberHealth,
        *,
        keep_disabled: bool = False,
        report: Report | None = None,
    ) -> bool:
        """With a `report` for a write that disables: the report is stored when this write
        is the one that disabled the subscriber (see `pg_ops.disable_subscriber`), due and
        created at `health.disabled_at` (due by the database's clock with `db_clock`).
        Whether the report was stored."""
        disabled_at = health.disabled_at

        async def run(conn: Conn) -> bool:
            stored = False
            if report is None or disabled_at is None:
                await ops.set_subscriber_health(conn, subscriber_id, health, keep_disabled)
            else:
                await scans.serialize(conn)  # first, as scans: events numbered in commit order
                if await ops.disable_subscriber(conn, subscriber_id, health, keep_disabled):
                    due_at = await self._now(conn, disabled_at)
                    stored = await store_report(
                        conn, self._channel, report, due_at=due_at, at=disabled_at
                    )
            await notify(conn, self._channel, HEALTH)
            return stored

        return await self._db.tx("recording subscriber health", run)

    async def purge(self, *, now: float, retention_s: float, batch: int = 500) -> int:
        """One step of retention, with the rules and the answer of `SqliteStore.purge`; it
        also folds the count deltas."""
        deleted, self._purged_up_to = await retention.purge(
            self._db, now=now, retention_s=retention_s, batch=batch, after=self._purged_up_to
        )
        return deleted

    async def reconcile_subscribers(
        self, configured: Sequence[str], *, now: float
    ) -> tuple[int, int]:
        async def run(conn: Conn) -> tuple[int, int]:
            at = await self._now(conn, now)
            orphaned, restored = await retention.reconcile_subscribers(conn, configured, at)
            if restored:
                await notify(conn, self._channel, OUTBOX)
            return orphaned, restored

        return await self._db.tx("reconciling subscribers", run)

    async def register_job(self, job: Job, *, now: float) -> int:
        """Insert the job unless its record has one, and queue (due `now`, by the database's
        clock with `db_clock`) its callback's deliveries of the record's events already
        stored, in one transaction holding the scan lock (see `pg_jobs`). Wakes the
        replicas: `outbox` when it queued some, `job:<record id>` when it registered it."""

        async def run(conn: Conn) -> int:
            await scans.serialize(conn)
            registered, queued = await jobs.register(conn, job, await self._now(conn, now))
            if queued:
                await notify(conn, self._channel, OUTBOX)
            if registered:
                await notify(conn, self._channel, storable(job_target(job.record_id)))
            return queued

        return await self._db.tx("registering a job", run)

    async def job(self, record_id: str) -> Job | None:
        return await self._db.read("reading a job", lambda c: jobs.get_job(c, record_id))

    async def client_jobs(
        self, client_id: str, *, limit: int, before: str | None = None
    ) -> list[Job]:
        return await self._db.read(
            "listing jobs", lambda c: jobs.client_jobs(c, client_id, limit, before)
        )

    async def callbacks(self, record_ids: Sequence[str]) -> dict[str, tuple[str, Callback]]:
        ids = list(record_ids)
        return await self._db.read("reading callbacks", lambda c: jobs.callbacks(c, ids))

    async def claim_jobs(
        self,
        *,
        now: float,
        lease_s: float,
        limit: int,
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        if limit <= 0:
            return []
        token = uuid.uuid4().hex

        async def run(conn: Conn, reporting: claims.Reporting | None) -> Claimed:
            at = await self._now(conn, now)
            return await claims.claim_jobs(
                conn,
                limit,
                now=at,
                until=at + lease_s,
                token=token,
                max_attempts=self.max_attempts,
                reporting=reporting,
            )

        return await self._claim_tx(run, on_dead)

    async def next_job_due_at(self) -> float | None:
        sent = time.time()
        due, db_now = await self._db.read("reading due times", claims.next_job_due_at)
        if due is None or not self.db_clock:
            return due
        self._db.measured(sent, db_now)
        return due - self._db.clock_offset_s

    async def hold_leadership(
        self, replica: str, lease_s: float, *, last_poll_at: float | None
    ) -> bool:
        return await self._db.read(
            "holding the poller's lease", lambda c: leases.hold(c, replica, lease_s, last_poll_at)
        )

    async def leader(self) -> LeaderState:
        return await self._db.read("reading the poller's lease", leases.read)

    async def resign(self, replica: str) -> None:
        await self._db.read("giving up the poller's lease", lambda c: leases.resign(c, replica))

    async def listen(self, on_notify: Callable[[str], None], stop: asyncio.Event) -> None:
        """Wake-ups from every replica (see `pg_listen`) until `stop` is set."""
        await listen(self.url, on_notify, stop)
