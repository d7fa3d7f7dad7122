"""The operator's queries on the SQLite store: listing, one delivery, retry, replay, counts.

Plain functions of a connection, run by `SqliteStore` on its worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from bridge.models import (
    Attempt,
    DeliveryFilter,
    DeliveryState,
    DeliveryView,
    Event,
    Replayed,
    Report,
)
from bridge.store import filters
from bridge.store.base import PURGED_UP_TO, FeedPage, SubscriberHealth
from bridge.store.claims_common import storable
from bridge.store.sqlite_scan import insert_report

_VIEW_COLUMNS = filters.VIEW_COLUMNS
DIALECT = filters.Dialect("?")
REPLAY_CHUNK = 500


def view(conn: sqlite3.Connection, row: Sequence[Any]) -> DeliveryView:
    history = tuple(
        Attempt(*a)
        for a in conn.execute(
            "SELECT attempted_at, status_code, latency_ms, error, response_excerpt"
            " FROM attempts WHERE delivery_id = ? ORDER BY id",
            (row[0],),
        )
    )
    state = DeliveryState(row[4])
    return DeliveryView(
        id=row[0],
        event_id=row[1],
        event_type=row[2],
        subscriber_id=row[3],
        state=state,
        attempts=row[5],
        next_attempt_at=row[6] if state is DeliveryState.PENDING else None,
        history=history,
        record_id=row[7],
        created_at=row[8],
        updated_at=row[9],
    )


def list_deliveries(
    conn: sqlite3.Connection, where: DeliveryFilter, limit: int, before: int | None
) -> list[DeliveryView]:
    sql, params = filters.listing(DIALECT, where, before=before)
    rows = conn.execute(sql, [*params, limit]).fetchall()
    return [view(conn, row) for row in rows]


def get_delivery(conn: sqlite3.Connection, delivery_id: int) -> DeliveryView | None:
    row = conn.execute(f"{_VIEW_COLUMNS} WHERE d.id = ?", (delivery_id,)).fetchone()
    return None if row is None else view(conn, row)


def list_events(
    conn: sqlite3.Connection,
    event_type: str | None,
    limit: int,
    before: str | None,
    record_id: str | None = None,
) -> list[Event] | None:
    where: list[str] = []
    params: list[Any] = []
    if before is not None:
        found = conn.execute("SELECT seq FROM events WHERE id = ?", (before,)).fetchone()
        if found is None:
            return None
        where.append("seq < ?")
        params.append(found[0])
    if event_type is not None:
        where.append("type = ?")
        params.append(event_type)
    if record_id is not None:  # the index events_record (record_id, seq)
        where.append("record_id = ?")
        params.append(record_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        "SELECT id, type, record_id, occurred_at, previous_status, data FROM events"
        f" {clause} ORDER BY seq DESC LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


def events_after(
    conn: sqlite3.Connection, after_seq: int | None, limit: int, event_type: str | None
) -> FeedPage:
    """The pull feed's page (the newest seq is read after it: never below its last).
    SQLite has one writer: seqs become visible in the order they were stored."""
    where = "seq > ?"
    params: list[Any] = [after_seq or 0]
    if event_type is not None:
        where += " AND type = ?"
        params.append(event_type)
    rows = conn.execute(
        "SELECT seq, id, type, record_id, occurred_at, previous_status, data FROM events"
        f" WHERE {where} ORDER BY seq LIMIT ?",
        [*params, limit],
    ).fetchall()
    newest = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    purged = conn.execute("SELECT value FROM meta WHERE key = ?", (PURGED_UP_TO,)).fetchone()
    events = [(r[0], Event(r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))) for r in rows]
    return FeedPage(events, int(newest or 0), int(purged[0]) if purged else 0)


def retry(conn: sqlite3.Connection, delivery_id: int, now: float) -> DeliveryState | None:
    row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    if row is None:
        return None
    state = DeliveryState(row[0])
    if state is DeliveryState.FAILED:
        conn.execute(
            "UPDATE deliveries SET state = 'pending', schedule_from = attempts,"
            " next_attempt_at = ?, updated_at = ? WHERE id = ?",
            (now, now, delivery_id),
        )
    elif state is DeliveryState.PENDING:
        conn.execute(
            "UPDATE deliveries SET next_attempt_at = MIN(next_attempt_at, ?), updated_at = ?"
            " WHERE id = ?",
            (now, now, delivery_id),
        )
    return state


def retry_failed(
    conn: sqlite3.Connection, where: DeliveryFilter, now: float, subscribers: Sequence[str]
) -> int:
    """`retry` every dead letter of `subscribers` `where` matches (its `state` ignored), in
    one statement."""
    found = filters.retrying(DIALECT, where, now=now, subscribers=subscribers)
    if found is None:
        return 0
    sql, params = found
    return len(conn.execute(sql, params).fetchall())


def replay(
    conn: sqlite3.Connection,
    since: float,
    event_type: str | None,
    targets: Callable[[str, str], Sequence[str]],
    now: float,
) -> Replayed:
    """Pending again, with a fresh schedule: every delivery of the matching events to the
    subscribers `targets(type, record_id)` names (created if missing). `targets` names
    configured subscribers only, so an orphaned delivery comes back only for a subscriber
    configured again."""
    where = "occurred_at >= ?"
    params: list[Any] = [since]
    if event_type is not None:
        where += " AND type = ?"
        params.append(event_type)
    events = deliveries = unmatched = already_pending = 0
    last_seq = 0
    while True:
        rows = conn.execute(
            f"SELECT seq, type, record_id FROM events WHERE {where} AND seq > ?"
            " ORDER BY seq LIMIT ?",
            [*params, last_seq, REPLAY_CHUNK],
        ).fetchall()
        if not rows:
            return Replayed(events, deliveries, unmatched, already_pending)
        for seq, etype, rid in rows:
            events += 1
            subs = targets(etype, rid)
            unmatched += not subs
            for sub in subs:
                cur = conn.execute(
                    "INSERT INTO deliveries (event_seq, subscriber_id, state, next_attempt_at,"
                    " created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)"
                    " ON CONFLICT (event_seq, subscriber_id) DO UPDATE SET state = 'pending',"
                    " schedule_from = attempts, next_attempt_at = excluded.next_attempt_at,"
                    " updated_at = excluded.updated_at WHERE deliveries.state != 'pending'",
                    (seq, sub, now, now, now),
                )
                deliveries += cur.rowcount
                already_pending += 1 - cur.rowcount
        last_seq = rows[-1][0]


def counts_by_subscriber(conn: sqlite3.Connection) -> dict[str, dict[DeliveryState, int]]:
    """From the counters the triggers on `deliveries` keep (no scan of the deliveries)."""
    counts: dict[str, dict[DeliveryState, int]] = {}
    for sub, state, n in conn.execute(
        "SELECT subscriber_id, state, n FROM delivery_counts WHERE n > 0"
    ):
        counts.setdefault(sub, dict.fromkeys(DeliveryState, 0))[DeliveryState(state)] = n
    return counts


def count_deliveries(conn: sqlite3.Connection) -> dict[DeliveryState, int]:
    counts = dict.fromkeys(DeliveryState, 0)
    for state, n in conn.execute("SELECT state, SUM(n) FROM delivery_counts GROUP BY state"):
        counts[DeliveryState(state)] = n
    return counts


def set_subscriber_health(
    conn: sqlite3.Connection,
    subscriber_id: str,
    health: SubscriberHealth,
    keep_disabled: bool,
    report: Report | None,
) -> bool:
    """Record `health` (with `keep_disabled`, a stored disable and its reason stay) and, when
    this write disables a subscriber the store had enabled (no row, or not disabled), store
    `report`, due and created at `health.disabled_at` (the caller holds the transaction:
    one writer at a time, so two writes disabling it store one report). Whether `report`
    was stored."""
    was_enabled = True
    if report is not None and health.disabled_at is not None:
        row = conn.execute(
            "SELECT disabled_at FROM subscriber_health WHERE id = ?", (subscriber_id,)
        ).fetchone()
        was_enabled = row is None or row[0] is None
    conn.execute(
        "INSERT INTO subscriber_health (id, failing_since, disabled_at, reason)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " failing_since = excluded.failing_since, disabled_at = CASE WHEN ?"
        " AND subscriber_health.disabled_at IS NOT NULL"
        " THEN subscriber_health.disabled_at ELSE excluded.disabled_at END,"
        " reason = CASE WHEN ? AND subscriber_health.disabled_at IS NOT NULL"
        " THEN subscriber_health.reason ELSE excluded.reason END",
        (
            subscriber_id,
            health.failing_since,
            health.disabled_at,
            storable(health.reason),
            keep_disabled,
            keep_disabled,
        ),
    )
    if report is not None and health.disabled_at is not None and was_enabled:
        return insert_report(conn, report, at=health.disabled_at)[1]
    return False
