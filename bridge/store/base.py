"""The store ports: everything the service keeps between runs, cut by who uses it.

`DetectionStore` (the poller and progress streams), `OutboxStore` (the dispatcher),
`OperationsStore` (admin API, CLI, retention) and `LeaderStore` (who polls, when replicas
share a store). `Store` is all of the first three; adapters (SQLite, PostgreSQL) implement
it, and the store contract tests (tests/contract) hold both to the same rules. Nothing above
this line knows which database is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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

# meta keys (the poller's, each account's under `meta_key(account, key)`)
BASELINE_MARK = "baseline_mark"  # created_at of the newest record of the first scan
BASELINE_TIES = "baseline_ties"  # ids of the baseline records created at that same instant
SWEEP = "sweep"  # position of an unfinished deep scan (JSON)
LAST_FULL_SCAN = "last_full_scan_at"  # unix time the last reconciliation scan started
LAST_POLL = "last_poll_at"  # unix time of the account's last successful poll
PURGED_UP_TO = "purged_up_to_seq"  # the highest seq retention deleted (feed cursors below: 410)
# in `retry_failed`'s `subscribers`: every job target (`job:<record id>`, a gateway callback)
ALL_JOBS = "job:*"


def meta_key(account: str, key: str) -> str:
    """The meta key under which `account` keeps `key`: `key` itself for the default account
    (so a store made before accounts existed keeps its meta), `<account>/<key>` otherwise."""
    return key if account == DEFAULT_ACCOUNT else f"{account}/{key}"


@dataclass(frozen=True, slots=True)
class FeedPage:
    """A page of the pull feed: events past a seq, oldest first, each with its seq; the
    newest seq stored (0: none ever) and the highest seq retention deleted (0: none)."""

    events: list[tuple[int, Event]]
    newest_seq: int
    purged_up_to: int


@dataclass(frozen=True, slots=True)
class ScanCommit:
    """Everything one completed scan of one account changes, written in a single
    transaction. Record ids are keys (`models.record_key`), unique across accounts."""

    states: Sequence[RecordState]
    events: Sequence[tuple[Event, Sequence[str]]]  # each event with the subscriber ids it goes to
    now: float
    seen: Sequence[str] = ()  # every record id the scan saw (marks them present at `now`)
    removed: Sequence[str] = ()  # pending records missing from the list (gone if missed twice)
    # gone: records of `account` not seen since this time (the end of a sweep)
    forget_unseen_before: float | None = None
    meta: Mapping[str, str | None] = field(default_factory=dict)  # None deletes the key
    account: str = DEFAULT_ACCOUNT  # the account scanned: the records `states` adds are its


@dataclass(frozen=True, slots=True)
class SubscriberHealth:
    """What the bridge remembers of an endpoint: since when it fails, whether it disabled it."""

    failing_since: float | None = None
    disabled_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """What a scan commit did."""

    deliveries: int
    forgotten: list[str]
    recorded: frozenset[str] = frozenset()  # ids of the events stored now (not seen before)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """Where a delivery stands after an attempt: delivered, failed for good, or due again."""

    state: DeliveryState
    next_attempt_at: float | None = None
    report: Report | None = None  # stored with the attempt when its lease still holds


@dataclass(frozen=True, slots=True)
class LeaderState:
    """Who holds the poller's lease, as the store says."""

    replica: str | None  # the holder, None when no lease is held
    expires_in_s: float | None  # by the database's clock
    last_poll_at: float | None  # unix time of the leader's last successful poll


class DetectionStore(Protocol):
    """What the poller and the progress streams use: known states, a scan's commit, meta."""

    created: bool  # after `open()`: the store was new (the first poll records a baseline)

    async def get_meta(self, key: str) -> str | None:
        """A small piece of service state (baseline mark, sweep position …)."""
        ...

    async def baseline_done(self, account: str = DEFAULT_ACCOUNT) -> bool:
        """Whether `account`'s first scan has been committed (its baseline mark, meta key
        `meta_key(account, BASELINE_MARK)`, is set)."""
        ...

    async def newest_created_at(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        """`created_at` of the newest known record of `account` (an index lookup)."""
        ...

    async def known_states(self, record_ids: Sequence[str]) -> dict[str, RecordState]:
        """The remembered state of those of `record_ids` the store knows."""
        ...

    async def tracked_pending(self, account: str | None = None) -> list[RecordState]:
        """Known records of `account` (None: of every account) whose last status was not
        terminal and that are not gone, newest first."""
        ...

    async def commit_scan(self, commit: ScanCommit) -> Committed:
        """Apply a scan atomically."""
        ...


class OutboxStore(Protocol):
    """What the dispatcher uses: claims (leases), attempts, release, due times, health."""

    async def claim_due(
        self,
        *,
        now: float,
        limit: int,
        lease_s: float,
        subscribers: Sequence[str],
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        """Lease up to `limit` due pending deliveries of `subscribers` until `now + lease_s`.

        A due delivery whose earlier lease ran out with no outcome counts a lost attempt
        (status None, error `LOST_ATTEMPT`, dated when its lease ran out); one that has
        had its last attempt so is dead-lettered, and `on_dead(delivery, attempt)` (pure:
        the delivery as claimed before, its event included, and that attempt) gives the
        report stored with it in the claim's transaction (None: nothing to report)."""
        ...

    async def claim_lanes(
        self,
        *,
        now: float,
        lease_s: float,
        rooms: Sequence[tuple[str, int]],
        caps: Mapping[str, int] | None = None,
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        """`claim_due` for several subscribers at once, each up to its own room, in one
        round trip. `caps`: at most this many deliveries of a subscriber leased at once,
        counting every process's unexpired leases (its `max_concurrency` across replicas)."""
        ...

    async def finish_attempt(
        self, delivery: Delivery, attempt: Attempt, outcome: AttemptOutcome
    ) -> bool:
        """Record an attempt and release the lease; False if the lease was lost meanwhile."""
        ...

    async def next_due_at(self, subscribers: Sequence[str]) -> float | None:
        """When the earliest pending delivery of `subscribers` becomes claimable, if any."""
        ...

    async def release(self, delivery: Delivery, *, now: float) -> bool:
        """Give up a claimed delivery without an attempt (shutdown): due again at `now`."""
        ...

    async def subscriber_health(self) -> dict[str, SubscriberHealth]:
        """Every subscriber the bridge has a health record of."""
        ...

    async def set_subscriber_health(
        self,
        subscriber_id: str,
        health: SubscriberHealth,
        *,
        keep_disabled: bool = False,
        report: Report | None = None,
    ) -> bool:
        """Record `health` (the whole record, in one statement). `keep_disabled`: when the
        stored record is disabled, its `disabled_at` and `reason` stay (a writer whose view
        predates an operator's disable cannot enable it again). `report` is stored in the
        same transaction only when this write disables a subscriber the store had enabled
        (and its event id is not recorded yet). Returns whether `report` was stored."""
        ...


class OperationsStore(Protocol):
    """What operators use (admin API, CLI) and retention: lists, retry, replay, counts."""

    async def ping(self) -> None:
        """Raise `StoreError` unless the store answers."""
        ...

    async def list_deliveries(
        self,
        *,
        where: DeliveryFilter = ALL_DELIVERIES,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryView]:
        """Newest first (ids below `before` when given) of those `where` matches, with their
        attempt history."""
        ...

    async def get_delivery(self, delivery_id: int) -> DeliveryView | None: ...

    async def events_after(
        self, *, after_seq: int | None, limit: int, event_type: str | None = None
    ) -> FeedPage:
        """Up to `limit` events stored after seq `after_seq` (None: from the oldest kept),
        oldest first, in the order they were stored (commit order, on every backend)."""
        ...

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        limit: int = 100,
        before: str | None = None,
        record_id: str | None = None,
    ) -> list[Event] | None:
        """Stored events newest first (of one record's when `record_id` is given); with
        `before` (an event id) the ones recorded before it. None when `before` names no
        stored event."""
        ...

    async def retry(self, delivery_id: int, *, now: float) -> DeliveryState | None:
        """Send a delivery again now: a dead letter gets a fresh schedule, a pending one
        becomes due at once, a delivered one is left alone. Returns the state it was in
        (None: no such delivery)."""
        ...

    async def retry_failed(
        self, where: DeliveryFilter, *, now: float, subscribers: Sequence[str]
    ) -> int:
        """`retry` every dead letter (`failed`) of `subscribers` (the configured ones) that
        `where` matches, whatever its `state` says: each gets a fresh schedule, due `now`.
        A dead letter of a subscriber not in `subscribers` stays failed (no lane would send
        it). The id `ALL_JOBS` (`job:*`) in `subscribers` stands for every job target
        (`job:<record id>`, the gateway's callbacks). Returns how many."""
        ...

    async def replay(
        self,
        *,
        since: float,
        event_type: str | None,
        targets: Callable[[str, str], Sequence[str]],
        now: float,
    ) -> Replayed:
        """Enqueue again every stored event since `since` (of `event_type` if given) for the
        subscribers `targets(type, record_id)` names (the event's record key: its account
        can route it), same event ids. Deliveries already pending stay as they are;
        subscribers added since the event was recorded get one."""
        ...

    async def counts_by_subscriber(self) -> dict[str, dict[DeliveryState, int]]:
        """Delivery counts per subscriber and state."""
        ...

    async def count_deliveries(self) -> dict[DeliveryState, int]:
        """Deliveries by state, from counters the store keeps (cheap enough for every scrape)."""
        ...

    async def purge(self, *, now: float, retention_s: float, batch: int = 500) -> int:
        """One small step of retention (see the adapter); fewer than `batch` deleted means
        nothing more is due now."""
        ...

    async def reconcile_subscribers(
        self, configured: Sequence[str], *, now: float
    ) -> tuple[int, int]:
        """Orphan the pending deliveries of subscribers not in `configured`, restore the
        orphaned ones of configured subscribers (due `now`). Job targets (`job:<record
        id>`) are never subscribers of the config and never orphaned. Returns (orphaned,
        restored)."""
        ...

    async def subscriber_health(self) -> dict[str, SubscriberHealth]: ...

    async def set_subscriber_health(
        self,
        subscriber_id: str,
        health: SubscriberHealth,
        *,
        keep_disabled: bool = False,
        report: Report | None = None,
    ) -> bool: ...


class GatewayStore(Protocol):
    """What the gateway and its callbacks use: jobs submitted through the bridge, each with
    its client and callback. A job's callback is a delivery target like a subscriber, with
    the id `job:<record id>` (`JOB_TARGET` + record id)."""

    async def register_job(self, job: Job, *, now: float) -> int:
        """Remember a job submitted through the gateway: its client, callback (url, events,
        metadata), callback id and the record as the submission described it. Events of the
        record already stored (a poll may have seen the job before this call) that the
        callback asks for are queued for `job:<record id>` at once, due `now`. Registering
        the same record again changes nothing. Returns how many deliveries were queued.
        On PostgreSQL it wakes the replicas: `outbox` when it queued some, and
        `job:<record id>` when it registered the job (the leader opens its progress
        stream)."""
        ...

    async def job(self, record_id: str) -> Job | None:
        """The job with its callback, and `record` as last seen: the data of the newest
        event of the record the store recorded that is neither `denoise.progress` nor one
        of the bridge's own (`bridge.*`), kept with the job even once retention deleted
        the event, else what `register_job` stored. None for a record not submitted
        through the gateway."""
        ...

    async def client_jobs(
        self, client_id: str, *, limit: int, before: str | None = None
    ) -> list[Job]:
        """A client's jobs, newest submitted first (jobs submitted at the same time: the
        greater record id first), each with its record as last seen; with `before` (a
        record id), those after that job in this order (none when it names no job of the
        client's)."""
        ...

    async def callbacks(self, record_ids: Sequence[str]) -> dict[str, tuple[str, Callback]]:
        """For the dispatcher: the client id and callback of each of `record_ids` that has
        one."""
        ...

    async def claim_jobs(
        self,
        *,
        now: float,
        lease_s: float,
        limit: int,
        on_dead: Callable[[Delivery, Attempt], Report | None] | None = None,
    ) -> list[Delivery]:
        """Lease up to `limit` due pending deliveries to `job:` targets (oldest due first,
        per-record order kept as for subscribers: a later event of a record waits for the
        earlier one to be delivered or dead-lettered). Lost leases count an attempt and
        dead-letter (with `on_dead`'s report) exactly as in `claim_due`."""
        ...

    async def next_job_due_at(self) -> float | None:
        """When the earliest pending `job:` delivery becomes claimable, if any."""
        ...


class Store(DetectionStore, OutboxStore, OperationsStore, GatewayStore, Protocol):
    """Durable state: record states, events, the delivery outbox and attempt history."""

    shared: bool  # other processes may use the store at once (PostgreSQL): leases decide

    async def open(self) -> None:
        """Connect and create or migrate the schema."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class LeaderStore(Protocol):
    """What replicas sharing a store coordinate with: the poller's lease (one of them
    polls) and wake-ups (what one replica queued or changed, the others hear of at once)."""

    replica_id: str  # this process in the lease: a scan is refused while another holds it

    async def listen(self, on_notify: Callable[[str], None], stop: asyncio.Event) -> None:
        """Call `on_notify` with each wake-up's payload (`"outbox"`: deliveries became due;
        `"health"`: a subscriber's health changed; `"events"`: events were stored;
        `"job:<record id>"`: a job was submitted through the gateway; `"reconnected"`: some
        may have been missed) until `stop` is set."""
        ...

    async def hold_leadership(
        self, replica: str, lease_s: float, *, last_poll_at: float | None
    ) -> bool:
        """Take the lease if it is free or ran out, or renew it if `replica` holds it, for
        `lease_s` by the database's clock; record `last_poll_at`. True: `replica` holds it."""
        ...

    async def leader(self) -> LeaderState: ...

    async def resign(self, replica: str) -> None:
        """Give the lease up now if `replica` holds it (a clean shutdown)."""
        ...
