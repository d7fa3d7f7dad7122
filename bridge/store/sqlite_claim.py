"""The delivery hot path on the SQLite store: claims (leases), batches of attempts, release.

Plain functions of a connection, run by `SqliteStore` inside a write transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from bridge import jsontext
from bridge.models import Attempt, Delivery, Event
from bridge.store.base import AttemptOutcome
from bridge.store.claims_common import (
    LOST_ATTEMPT,
    Claimed,
    Lost,
    OnDead,
    log_lost,
    lost_attempt,
    storable,
)
from bridge.store.jobs_common import JOB_RANGE
from bridge.store.sqlite_scan import insert_report

__all__ = ["LOST_ATTEMPT", "Claimed", "Lost", "OnDead", "log_lost"]

# per (subscriber, record), nothing goes while an earlier event is still pending (CROSS JOIN
# keeps this order: from the record's few earlier events, never from the lane's many pending
# deliveries)
IN_ORDER = """
    NOT EXISTS (
        SELECT 1 FROM events pe CROSS JOIN deliveries p
        WHERE pe.record_id = e.record_id AND pe.seq < d.event_seq
        AND p.event_seq = pe.seq AND p.subscriber_id = d.subscriber_id AND p.state = 'pending'
    )
"""


_CLAIMED = (
    "SELECT json_group_array(json_array(d.id, d.subscriber_id, d.attempts, e.id, e.type,"
    " e.record_id, printf('%!.17g', e.occurred_at), e.previous_status, e.data,"
    " d.next_attempt_at, d.lease_until, d.schedule_from))"
    " FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id IN ({ids})"
)


def _due(which: str) -> str:
    """The ids of the due deliveries of the targets `which` (a condition on `d`) selects,
    in order; parameters: now, now, limit."""
    return (
        "SELECT d.id FROM deliveries d JOIN events e ON e.seq = d.event_seq"
        " WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
        " AND (d.lease_until IS NULL OR d.lease_until <= ?)"
        f" AND {which} AND " + IN_ORDER + " ORDER BY d.next_attempt_at, d.id LIMIT ?"
    )


_DUE = _due("d.subscriber_id IN ({subs})")
_DUE_JOBS = _due(JOB_RANGE)  # every job target: a range of the index deliveries_claim
LANES_PER_CLAIM = 100  # lanes claimed for by one statement (SQLite allows 500 compound terms)


def claim(
    conn: sqlite3.Connection,
    subscribers: Sequence[str],
    limit: int,
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    on_dead: OnDead | None = None,
) -> Claimed:
    """Lease up to `limit` due deliveries of `subscribers` (oldest due first, in order)."""
    due = _DUE.format(subs=",".join("?" * len(subscribers)))
    params = [now, now, *subscribers, limit]
    return _lease(
        conn,
        due,
        params,
        now=now,
        until=until,
        token=token,
        max_attempts=max_attempts,
        on_dead=on_dead,
    )


def claim_jobs(
    conn: sqlite3.Connection,
    limit: int,
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    on_dead: OnDead | None = None,
) -> Claimed:
    """`claim` for every `job:` target at once (oldest due first, each record's in order)."""
    return _lease(
        conn,
        _DUE_JOBS,
        [now, now, limit],
        now=now,
        until=until,
        token=token,
        max_attempts=max_attempts,
        on_dead=on_dead,
    )


def claim_lanes(
    conn: sqlite3.Connection,
    rooms: Sequence[tuple[str, int]],
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    caps: Mapping[str, int] | None = None,
    on_dead: OnDead | None = None,
) -> Claimed:
    """`claim` for each subscriber up to its own room (and its cap: unexpired leases of
    the subscriber's deliveries count against it), many lanes to a statement."""
    if caps:
        rooms = [(sub, min(room, _cap_room(conn, sub, caps, now))) for sub, room in rooms]
    rooms = [(sub, room) for sub, room in rooms if room > 0]
    claimed = Claimed([], [])
    for start in range(0, len(rooms), LANES_PER_CLAIM):
        chunk = rooms[start : start + LANES_PER_CLAIM]
        due = " UNION ALL ".join(["SELECT * FROM (" + _DUE.format(subs="?") + ")"] * len(chunk))
        params = [p for sub, room in chunk for p in (now, now, sub, room)]
        got = _lease(
            conn,
            due,
            params,
            now=now,
            until=until,
            token=token,
            max_attempts=max_attempts,
            on_dead=on_dead,
        )
        claimed.deliveries.extend(got.deliveries)
        claimed.lost.extend(got.lost)
    return claimed


def _cap_room(conn: sqlite3.Connection, sub: str, caps: Mapping[str, int], now: float) -> int:
    if sub not in caps:
        return 1 << 30
    (leased,) = conn.execute(
        "SELECT COUNT(*) FROM deliveries WHERE subscriber_id = ? AND state = 'pending'"
        " AND lease_until > ?",
        (sub, now),
    ).fetchone()
    return int(caps[sub]) - int(leased)


def _lease(
    conn: sqlite3.Connection,
    due: str,
    params: Sequence[Any],
    *,
    now: float,
    until: float,
    token: str,
    max_attempts: int,
    on_dead: OnDead | None = None,
) -> Claimed:
    """Lease the deliveries `due` selects. The rows come back as one JSON array and the
    leases are taken by one statement: a statement step per batch rather than per row, as
    each step hands the interpreter lock back and forth with the event loop's thread.

    A selected delivery that still has a lease (it ran out, or it would not be due) was
    claimed and never finished nor released: its worker stopped or its lease expired
    mid-attempt. That counts as an attempt, so a delivery that kills its worker cannot loop
    forever: it is dead-lettered once it has had `max_attempts`, and `on_dead`'s report of
    it is stored in this transaction."""
    (found,) = conn.execute(_CLAIMED.format(ids=due), params).fetchone()
    rows = sorted(jsontext.loads(found), key=lambda row: (row[9], row[0]))
    lost: list[Lost] = []
    if any(row[10] is not None for row in rows):
        stale = [row for row in rows if row[10] is not None]
        lost = _count_lost(conn, stale, now, max_attempts)
        dead = {item.delivery_id for item in lost if item.dead}
        if dead and on_dead is not None:
            _report_dead(conn, [row for row in stale if row[0] in dead], on_dead)
        rows = [row for row in rows if row[0] not in dead]
    if rows:
        conn.execute(
            "UPDATE deliveries SET lease_until = ?, lease_token = ?"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (until, token, jsontext.dumps([row[0] for row in rows])),
        )
    deliveries = [
        Delivery(
            id=row[0],
            subscriber_id=row[1],
            attempts=row[2] + (row[10] is not None),
            schedule_from=row[11],
            lease_token=token,
            # the time as text: JSON numbers from SQLite keep only 15 digits
            event=Event(row[3], row[4], row[5], float(row[6]), row[7], jsontext.loads(row[8])),
        )
        for row in rows
    ]
    return Claimed(deliveries, lost)


def _report_dead(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]], on_dead: OnDead) -> None:
    """Store `on_dead`'s report of each delivery of `rows`, dead-lettered by this claim (its
    lost attempt dated when its lease ran out; the report due and created then)."""
    for row in rows:
        delivery = Delivery(
            id=row[0],
            subscriber_id=row[1],
            attempts=row[2],  # before the lost one: the report counts it
            schedule_from=row[11],
            lease_token="",
            event=Event(row[3], row[4], row[5], float(row[6]), row[7], jsontext.loads(row[8])),
        )
        attempt = lost_attempt(float(row[10]))
        report = on_dead(delivery, attempt)
        if report is not None:
            insert_report(conn, report, at=attempt.attempted_at)


def _count_lost(
    conn: sqlite3.Connection, rows: Sequence[Sequence[Any]], now: float, max_attempts: int
) -> list[Lost]:
    """Record an attempt for each delivery whose lease ran out (dated when it ran out) and
    dead-letter those that have had their last one."""
    conn.execute(
        "INSERT INTO attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
        " response_excerpt) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
        " NULL, 0.0, ?, '' FROM json_each(?)",
        (LOST_ATTEMPT, jsontext.dumps([(row[0], row[10]) for row in rows])),
    )
    conn.execute(
        "UPDATE deliveries SET attempts = attempts + 1, updated_at = ?,"
        " state = CASE WHEN attempts + 1 - schedule_from >= ? THEN 'failed' ELSE state END,"
        " next_attempt_at = CASE WHEN attempts + 1 - schedule_from >= ? THEN NULL"
        " ELSE next_attempt_at END,"
        " lease_until = NULL, lease_token = NULL"
        " WHERE id IN (SELECT value FROM json_each(?))",
        (now, max_attempts, max_attempts, jsontext.dumps([row[0] for row in rows])),
    )
    return [
        Lost(row[0], row[1], row[3], row[2] + 1, row[2] + 1 - row[11] >= max_attempts)
        for row in rows
    ]


def next_due_at(conn: sqlite3.Connection, subscribers: Sequence[str]) -> float | None:
    """When the earliest pending delivery of `subscribers` becomes claimable, if any."""
    marks = ",".join("?" * len(subscribers))
    return _next_due(conn, f"d.subscriber_id IN ({marks})", list(subscribers))


def next_job_due_at(conn: sqlite3.Connection) -> float | None:
    """When the earliest pending delivery to a `job:` target becomes claimable, if any."""
    return _next_due(conn, JOB_RANGE, [])


def _next_due(conn: sqlite3.Connection, which: str, params: Sequence[Any]) -> float | None:
    (value,) = conn.execute(
        "SELECT MIN(MAX(d.next_attempt_at, COALESCE(d.lease_until, 0)))"
        " FROM deliveries d JOIN events e ON e.seq = d.event_seq"
        f" WHERE d.state = 'pending' AND {which} AND {IN_ORDER}",
        params,
    ).fetchone()
    return float(value) if value is not None else None


def release(conn: sqlite3.Connection, delivery_id: int, token: str, now: float) -> bool:
    cur = conn.execute(
        "UPDATE deliveries SET lease_until = NULL, lease_token = NULL, next_attempt_at = ?,"
        " updated_at = ? WHERE id = ? AND lease_token = ? AND state = 'pending'",
        (now, now, delivery_id, token),
    )
    return cur.rowcount == 1


def finish_attempts(
    items: Sequence[tuple[Delivery, Attempt, AttemptOutcome]], conn: sqlite3.Connection
) -> list[bool]:
    """Record a batch of attempts and release their leases; False for each delivery whose
    lease was lost (its attempt is not recorded). Two statements whatever the batch size,
    and the report of each outcome that has one and was recorded (due at its attempt's
    time)."""
    if len({d.id for d, _, _ in items}) < len(items):
        # a stale copy of a delivery given out again: only the lease holder's copy may count
        return [kept for item in items for kept in finish_attempts([item], conn)]
    kept_ids = {
        row[0]
        for row in conn.execute(
            "UPDATE deliveries SET state = json_extract(j.value, '$[1]'),"
            " attempts = attempts + 1, next_attempt_at = json_extract(j.value, '$[2]'),"
            " lease_until = NULL, lease_token = NULL, updated_at = json_extract(j.value, '$[3]')"
            " FROM json_each(?) j WHERE deliveries.id = json_extract(j.value, '$[0]')"
            " AND deliveries.lease_token = json_extract(j.value, '$[4]') RETURNING deliveries.id",
            (
                jsontext.dumps(
                    [
                        (d.id, o.state.value, o.next_attempt_at, a.attempted_at, d.lease_token)
                        for d, a, o in items
                    ]
                ),
            ),
        ).fetchall()
    }
    if kept_ids:
        conn.execute(
            "INSERT INTO attempts (delivery_id, attempted_at, status_code, latency_ms, error,"
            " response_excerpt) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
            " json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
            " json_extract(value, '$[4]'), json_extract(value, '$[5]') FROM json_each(?)",
            (
                jsontext.dumps(
                    [
                        (
                            d.id,
                            a.attempted_at,
                            a.status_code,
                            a.latency_ms,
                            storable(a.error),
                            storable(a.response_excerpt),
                        )
                        for d, a, _ in items
                        if d.id in kept_ids
                    ]
                ),
            ),
        )
    for _, tried, outcome in (item for item in items if item[0].id in kept_ids):
        if outcome.report is not None:  # in the same transaction as the attempt it reports
            insert_report(conn, outcome.report, at=tried.attempted_at)
    return [d.id in kept_ids for d, _, _ in items]
