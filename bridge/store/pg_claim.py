"""The delivery hot path on the PostgreSQL store: claims (leases), batches of attempts,
release. The rules are `sqlite_claim`'s; what differs is that several replicas claim at once.

Claims lock the rows they take with `FOR UPDATE SKIP LOCKED`: replicas claiming together
never wait on each other and never take the same delivery. A lease is fenced by a fresh
random token per claim: an attempt or a release lands only while the delivery still holds
that token, so a worker whose lease ran out and was claimed again by another records
nothing. A subscriber's cap (`max_concurrency` across replicas) counts every unexpired
lease of its pending deliveries; claims of one subscriber are serialized by an advisory
lock (taken in sorted order, so two claims cannot deadlock), so two replicas cannot both
see room for the same slot. Plain functions of a connection, run by `PgStore` inside a
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from bridge import jsontext
from bridge.models import Attempt, Delivery, Event, Report
from bridge.store.base import AttemptOutcome
from bridge.store.claims_common import (
    LOST_ATTEMPT,
    Claimed,
    Lost,
    OnDead,
    lost_attempt,
    storable,
)
from bridge.store.jobs_common import PG_JOBS
from bridge.store.pg_schema import Conn, lock_key

# per (subscriber, record), nothing goes while an earlier event is still pending. A scalar
# subquery of `d` alone (each delivery carries its event's record), not NOT EXISTS, which
# PostgreSQL would plan as an anti-join over the lane's whole backlog and a sort: this way
# a claim walks the lane's index in order and looks up, by one index probe each, only the
# rows it reaches before its LIMIT is met
IN_ORDER = """
    (SELECT 1 FROM deliveries p WHERE p.subscriber_id = d.subscriber_id
        AND p.record_id = d.record_id AND p.event_seq < d.event_seq AND p.state = 'pending'
        LIMIT 1) IS NULL
"""


def _due(which: str, limit: str) -> str:
    """The due deliveries of the targets `which` (a condition on `d`) selects, in order, up
    to `limit`, locked: id, subscriber, attempts, schedule_from, lease_until,
    next_attempt_at, event id."""
    return (
        "SELECT d.id, d.subscriber_id, d.attempts, d.schedule_from,"
        " d.lease_until, d.next_attempt_at, (SELECT id FROM events WHERE seq = d.event_seq)"
        f" FROM deliveries d WHERE {which} AND d.state = 'pending'"
        " AND d.next_attempt_at <= %(now)s AND (d.lease_until IS NULL OR d.lease_until <= %(now)s)"
        f" AND {IN_ORDER} ORDER BY d.next_attempt_at, d.id LIMIT {limit}"
        " FOR UPDATE OF d SKIP LOCKED"
    )


_DUE_LANES = (
    "SELECT x.* FROM unnest(%(subs)s::text[], %(rooms)s::integer[]) AS r (sub, room)"
    " CROSS JOIN LATERAL (" + _due("d.subscriber_id = r.sub", "r.room") + ") x"
)
# every job target at once, by the partial index deliveries_jobs (in claim order; a lane per
# record would be a lateral loop over every job)
_DUE_JOBS = _due(PG_JOBS, "%(limit)s")
_LEASE = (
    "UPDATE deliveries d SET lease_until = %s, lease_token = %s FROM events e"
    " WHERE e.seq = d.event_seq AND d.id = ANY(%s::bigint[])"
    " RETURNING d.id, d.subscriber_id, d.attempts, d.schedule_from, d.next_attempt_at,"
    " e.id, e.type, e.record_id, e.occurred_at, e.previous_status, e.data"
)
_NEXT_DUE = (
    "SELECT MIN(due), extract(epoch FROM clock_timestamp())::double precision FROM ("
    " SELECT x.due FROM unnest(%(subs)s::text[]) AS s (sub) CROSS JOIN LATERAL ("
    "  SELECT GREATEST(d.next_attempt_at, 0) AS due FROM deliveries d"
    "  WHERE d.subscriber_id = s.sub AND d.state = 'pending' AND d.lease_until IS NULL"
    "  AND d.next_attempt_at IS NOT NULL AND " + IN_ORDER + ""
    "  ORDER BY d.next_attempt_at, d.id LIMIT 1) x"
    " UNION ALL"
    " SELECT GREATEST(d.next_attempt_at, d.lease_until) FROM deliveries d"
    " WHERE d.subscriber_id = ANY(%(subs)s::text[]) AND d.state = 'pending'"
    " AND d.lease_until IS NOT NULL AND d.next_attempt_at IS NOT NULL AND " + IN_ORDER + ""
    ") due"
)
_NEXT_JOB_DUE = (
    "SELECT MIN(GREATEST(d.next_attempt_at, d.lease_until)),"
    " extract(epoch FROM clock_timestamp())::double precision FROM deliveries d"
    f" WHERE {PG_JOBS} AND d.state = 'pending' AND d.next_attempt_at IS NOT NULL"
    f" AND {IN_ORDER}"
)
_EVENTS = (
    "SELECT id, type, record_id, occurred_at, previous_status, data FROM events"
    " WHERE id = ANY(%s::text[])"
)
_LOCK = "SELECT pg_advisory_xact_lock(" + lock_key("'claim:' || %s") + ")"
LANES_PER_CLAIM = 100  # lanes one statement claims for (as the SQLite store does)


class ScanLockFirst(Exception):
    """A claim would dead-letter a delivery, whose report may have to be stored, but did not
    take the scan lock first (`pg_scan.serialize`: events are numbered in commit order): its
    transaction is rolled back and the claim run again, taking the lock first. Taking it
    later, holding the rows the claim locked, could deadlock with a writer that holds it and
    waits for one of those rows."""


class Reporting(NamedTuple):
    """What a claim does with the deliveries it dead-letters: `on_dead` makes their reports;
    `locked`: the caller holds the scan lock (else dead-lettering raises `ScanLockFirst`)."""

    on_dead: OnDead
    locked: bool


async def claim(
    conn: Conn,
    subscribers: Sequence[str],
    limit: int,
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    reporting: Reporting | None = None,
) -> Claimed:
    """Lease up to `limit` due deliveries of `subscribers` (oldest due first, in order):
    the first `limit` of each subscriber's, then the first `limit` of them all (the others
    stay locked until the transaction ends, and are not leased)."""
    subs = list(dict.fromkeys(subscribers))
    params = {"subs": subs, "rooms": [limit] * len(subs), "now": now}
    rows = await (await conn.execute(_DUE_LANES, params)).fetchall()
    rows = sorted(rows, key=lambda row: (row[5], row[0]))[:limit]
    return await _lease(
        conn,
        rows,
        now=now,
        until=until,
        token=token,
        max_attempts=max_attempts,
        reporting=reporting,
    )


async def claim_jobs(
    conn: Conn,
    limit: int,
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    reporting: Reporting | None = None,
) -> Claimed:
    """`claim` for every `job:` target at once (oldest due first, each record's in order)."""
    rows = await (await conn.execute(_DUE_JOBS, {"now": now, "limit": limit})).fetchall()
    return await _lease(
        conn,
        rows,
        now=now,
        until=until,
        token=token,
        max_attempts=max_attempts,
        reporting=reporting,
    )


async def lock_lanes(conn: Conn, subscribers: Sequence[str]) -> None:
    """Hold the claim lock of each of `subscribers` until the transaction ends (sorted: two
    claims of the same subscribers take them in the same order)."""
    async with conn.cursor() as cur:
        await cur.executemany(_LOCK, [(sub,) for sub in sorted(set(subscribers))])


async def claim_lanes(
    conn: Conn,
    rooms: Sequence[tuple[str, int]],
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    caps: Mapping[str, int] | None = None,
    reporting: Reporting | None = None,
) -> Claimed:
    """`claim` for each subscriber up to its own room (and its cap: unexpired leases of the
    subscriber's deliveries count against it, whoever holds them). With `caps`, the caller
    holds the capped subscribers' locks (`lock_lanes`)."""
    if caps:
        leased = await _leased(conn, [sub for sub, _ in rooms if sub in caps], now)
        rooms = [
            (sub, min(room, int(caps[sub]) - leased.get(sub, 0)) if sub in caps else room)
            for sub, room in rooms
        ]
    rooms = [(sub, room) for sub, room in rooms if room > 0]
    claimed = Claimed([], [])
    reports: list[tuple[Report, float]] = []
    for start in range(0, len(rooms), LANES_PER_CLAIM):
        chunk = rooms[start : start + LANES_PER_CLAIM]
        params = {"subs": [s for s, _ in chunk], "rooms": [r for _, r in chunk], "now": now}
        rows = await (await conn.execute(_DUE_LANES, params)).fetchall()
        got = await _lease(
            conn,
            rows,
            now=now,
            until=until,
            token=token,
            max_attempts=max_attempts,
            reporting=reporting,
        )
        claimed.deliveries.extend(got.deliveries)
        claimed.lost.extend(got.lost)
        reports.extend(got.reports)
    return claimed._replace(reports=reports)


async def _leased(conn: Conn, subscribers: Sequence[str], now: float) -> dict[str, int]:
    """How many unexpired leases each of `subscribers` has, every process's counted."""
    if not subscribers:
        return {}
    cur = await conn.execute(
        "SELECT subscriber_id, COUNT(*) FROM deliveries WHERE subscriber_id = ANY(%s::text[])"
        " AND state = 'pending' AND lease_until IS NOT NULL AND lease_until > %s"
        " GROUP BY subscriber_id",
        (list(subscribers), now),
    )
    return {sub: int(n) for sub, n in await cur.fetchall()}


async def _lease(
    conn: Conn,
    rows: Sequence[tuple[Any, ...]],
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    reporting: Reporting | None = None,
) -> Claimed:
    """Lease the deliveries of `rows` (selected and locked by the caller).

    A selected delivery that still has a lease (it ran out, or it would not be due) was
    claimed and never finished nor released: its worker stopped or its lease expired
    mid-attempt. That counts as an attempt, so a delivery that kills its worker cannot loop
    forever: it is dead-lettered once it has had `max_attempts`, with `reporting.on_dead`'s
    report of it (returned, for the caller to store in this transaction)."""
    # a subscriber named twice selects its rows twice
    rows = sorted({row[0]: row for row in rows}.values(), key=lambda row: (row[5], row[0]))
    lost: list[Lost] = []
    stale = [row for row in rows if row[4] is not None]
    reports: list[tuple[Report, float]] = []
    if stale and reporting is not None:
        reports = await _reports(conn, stale, max_attempts, reporting)
    if stale:
        lost = await _count_lost(conn, stale, now, max_attempts)
    dead = {item.delivery_id for item in lost if item.dead}
    ids = [row[0] for row in rows if row[0] not in dead]
    if not ids:
        return Claimed([], lost, reports)
    cur = await conn.execute(_LEASE, (until, token, ids))
    leased = sorted(await cur.fetchall(), key=lambda row: (row[4], row[0]))
    deliveries = [
        Delivery(
            id=row[0],
            subscriber_id=row[1],
            attempts=row[2],
            schedule_from=row[3],
            lease_token=token,
            event=Event(row[5], row[6], row[7], row[8], row[9], jsontext.loads(row[10])),
        )
        for row in leased
    ]
    return Claimed(deliveries, lost, reports)


async def _reports(
    conn: Conn, stale: Sequence[tuple[Any, ...]], max_attempts: int, reporting: Reporting
) -> list[tuple[Report, float]]:
    """The reports of those of the `stale` rows whose lost attempt is their last, each with
    that attempt's time; `ScanLockFirst` when there is such a row and the scan lock is not
    held (whether `on_dead` reports it or not: it is asked only once the lock is held)."""
    dying = [row for row in stale if row[2] + 1 - row[3] >= max_attempts]
    if not dying:
        return []
    if not reporting.locked:  # before asking `on_dead`: it is asked only in a claim that
        raise ScanLockFirst  # can store its answer (its callers hear of what it made)
    cur = await conn.execute(_EVENTS, (list({row[6] for row in dying}),))
    events = {
        row[0]: Event(row[0], row[1], row[2], row[3], row[4], jsontext.loads(row[5]))
        for row in await cur.fetchall()
    }
    reports: list[tuple[Report, float]] = []
    for row in dying:
        delivery = Delivery(
            id=row[0],
            subscriber_id=row[1],
            attempts=row[2],  # before the lost one: the report counts it
            schedule_from=row[3],
            lease_token="",
            event=events[row[6]],
        )
        attempt = lost_attempt(float(row[4]))
        report = reporting.on_dead(delivery, attempt)
        if report is not None:
            reports.append((report, attempt.attempted_at))
    return reports


async def _count_lost(
    conn: Conn, rows: Sequence[tuple[Any, ...]], now: float, max_attempts: int
) -> list[Lost]:
    """Record an attempt for each delivery whose lease ran out (dated when it ran out) and
    dead-letter those that have had their last one."""
    await conn.execute(
        "INSERT INTO attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
        " response_excerpt) SELECT id, at, NULL, 0.0, %s, ''"
        " FROM unnest(%s::bigint[], %s::double precision[]) WITH ORDINALITY AS l (id, at, n)"
        " ORDER BY n",
        (LOST_ATTEMPT, [row[0] for row in rows], [row[4] for row in rows]),
    )
    await conn.execute(
        "UPDATE deliveries SET attempts = attempts + 1, updated_at = %(now)s,"
        " state = CASE WHEN attempts + 1 - schedule_from >= %(max)s THEN 'failed' ELSE state END,"
        " next_attempt_at = CASE WHEN attempts + 1 - schedule_from >= %(max)s THEN NULL"
        " ELSE next_attempt_at END,"
        " lease_until = NULL, lease_token = NULL WHERE id = ANY(%(ids)s::bigint[])",
        {"now": now, "max": max_attempts, "ids": [row[0] for row in rows]},
    )
    return [
        Lost(row[0], row[1], row[6], row[2] + 1, row[2] + 1 - row[3] >= max_attempts)
        for row in rows
    ]


async def next_due_at(conn: Conn, subscribers: Sequence[str]) -> tuple[float | None, float]:
    """When the earliest pending delivery of `subscribers` becomes claimable, if any (the
    later of its due time and the end of its lease), and the database's clock as it
    answered. Without a lease, the first in order of each lane's index; with one (few: the
    deliveries in flight), every one."""
    cur = await conn.execute(
        _NEXT_DUE,
        {"subs": list(dict.fromkeys(subscribers))},
    )
    row = await cur.fetchone()
    assert row is not None  # an aggregate always answers a row
    return (None if row[0] is None else float(row[0])), float(row[1])


async def next_job_due_at(conn: Conn) -> tuple[float | None, float]:
    """`next_due_at` for every `job:` target, and the database's clock as it answered."""
    row = await (await conn.execute(_NEXT_JOB_DUE)).fetchone()
    assert row is not None  # an aggregate always answers a row
    return (None if row[0] is None else float(row[0])), float(row[1])


async def release(conn: Conn, delivery_id: int, token: str, now: float) -> bool:
    cur = await conn.execute(
        "UPDATE deliveries SET lease_until = NULL, lease_token = NULL, next_attempt_at = %s,"
        " updated_at = %s WHERE id = %s AND lease_token = %s AND state = 'pending'",
        (now, now, delivery_id, token),
    )
    return cur.rowcount == 1


async def finish_attempts(
    conn: Conn, items: Sequence[tuple[Delivery, Attempt, AttemptOutcome]]
) -> list[bool]:
    """Record a batch of attempts and release their leases; False for each delivery whose
    lease was lost (its attempt is not recorded). Two statements whatever the batch size."""
    if len({d.id for d, _, _ in items}) < len(items):
        # a stale copy of a delivery given out again: only the lease holder's copy may count
        return [kept for item in items for kept in await finish_attempts(conn, [item])]
    cur = await conn.execute(
        "UPDATE deliveries d SET state = u.state, attempts = d.attempts + 1,"
        " next_attempt_at = u.next_at, lease_until = NULL, lease_token = NULL,"
        " updated_at = u.at FROM unnest(%s::bigint[], %s::text[], %s::double precision[],"
        " %s::double precision[], %s::text[]) AS u (id, state, next_at, at, token)"
        " WHERE d.id = u.id AND d.lease_token = u.token RETURNING d.id",
        (
            [d.id for d, _, _ in items],
            [o.state.value for _, _, o in items],
            [o.next_attempt_at for _, _, o in items],
            [a.attempted_at for _, a, _ in items],
            [d.lease_token for d, _, _ in items],
        ),
    )
    kept_ids = {row[0] for row in await cur.fetchall()}
    kept = [(d, a) for d, a, _ in items if d.id in kept_ids]
    if kept:
        await conn.execute(
            "INSERT INTO attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
            " response_excerpt) SELECT * FROM unnest(%s::bigint[], %s::double precision[],"
            " %s::integer[], %s::double precision[], %s::text[], %s::text[])",
            (
                [d.id for d, _ in kept],
                [a.attempted_at for _, a in kept],
                [a.status_code for _, a in kept],
                [a.latency_ms for _, a in kept],
                [storable(a.error) for _, a in kept],
                [storable(a.response_excerpt) for _, a in kept],
            ),
        )
    return [d.id in kept_ids for d, _, _ in items]
