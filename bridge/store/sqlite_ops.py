"""The operator's queries on the SQLite store: listing, one delivery, retry, replay, release.

Plain functions of a connection, run by `SqliteStore` on its worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from bridge import jsontext
from bridge.models import Attempt, Delivery, DeliveryState, DeliveryView, Event, Replayed
from bridge.store.base import AttemptOutcome

_VIEW_COLUMNS = (
    "SELECT d.id, e.id, e.type, d.subscriber_id, d.state, d.attempts, d.next_attempt_at,"
    " e.record_id, d.created_at, d.updated_at FROM deliveries d JOIN events e"
    " ON e.seq = d.event_seq"
)
REPLAY_CHUNK = 500

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
    " d.next_attempt_at))"
    " FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id IN ({ids})"
)
_DUE = (
    "SELECT d.id FROM deliveries d JOIN events e ON e.seq = d.event_seq"
    " WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
    " AND (d.lease_until IS NULL OR d.lease_until <= ?)"
    " AND d.subscriber_id IN ({subs}) AND " + IN_ORDER + " ORDER BY d.next_attempt_at, d.id LIMIT ?"
)
LANES_PER_CLAIM = 100  # lanes claimed for by one statement (SQLite allows 500 compound terms)


def claim(
    conn: sqlite3.Connection,
    subscribers: Sequence[str],
    limit: int,
    *,
    now: float,
    until: float,
    token: str,
) -> list[Delivery]:
    """Lease up to `limit` due deliveries of `subscribers` (oldest due first, in order)."""
    due = _DUE.format(subs=",".join("?" * len(subscribers)))
    return _lease(conn, due, [now, now, *subscribers, limit], until=until, token=token)


def claim_lanes(
    conn: sqlite3.Connection,
    rooms: Sequence[tuple[str, int]],
    *,
    now: float,
    until: float,
    token: str,
) -> list[Delivery]:
    """`claim` for each subscriber up to its own room, many lanes to a statement."""
    rooms = [(sub, room) for sub, room in rooms if room > 0]
    claimed: list[Delivery] = []
    for start in range(0, len(rooms), LANES_PER_CLAIM):
        chunk = rooms[start : start + LANES_PER_CLAIM]
        due = " UNION ALL ".join(["SELECT * FROM (" + _DUE.format(subs="?") + ")"] * len(chunk))
        params = [p for sub, room in chunk for p in (now, now, sub, room)]
        claimed += _lease(conn, due, params, until=until, token=token)
    return claimed


def _lease(
    conn: sqlite3.Connection, due: str, params: Sequence[Any], *, until: float, token: str
) -> list[Delivery]:
    """Lease the deliveries `due` selects. The rows come back as one JSON array and the
    leases are taken by one statement: a statement step per batch rather than per row, as
    each step hands the interpreter lock back and forth with the event loop's thread."""
    (found,) = conn.execute(_CLAIMED.format(ids=due), params).fetchone()
    rows = sorted(jsontext.loads(found), key=lambda row: (row[9], row[0]))
    if rows:
        conn.execute(
            "UPDATE deliveries SET lease_until = ?, lease_token = ?"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (until, token, jsontext.dumps([row[0] for row in rows])),
        )
    return [
        Delivery(
            id=row[0],
            subscriber_id=row[1],
            attempts=row[2],
            lease_token=token,
            # the time as text: JSON numbers from SQLite keep only 15 digits
            event=Event(row[3], row[4], row[5], float(row[6]), row[7], jsontext.loads(row[8])),
        )
        for row in rows
    ]


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
    conn: sqlite3.Connection,
    state: DeliveryState | None,
    subscriber: str | None,
    limit: int,
    before: int | None,
) -> list[DeliveryView]:
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("d.state = ?")
        params.append(state.value)
    if subscriber is not None:
        where.append("d.subscriber_id = ?")
        params.append(subscriber)
    if before is not None:
        where.append("d.id < ?")
        params.append(before)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"{_VIEW_COLUMNS} {clause} ORDER BY d.id DESC LIMIT ?", [*params, limit]
    ).fetchall()
    return [view(conn, row) for row in rows]


def get_delivery(conn: sqlite3.Connection, delivery_id: int) -> DeliveryView | None:
    row = conn.execute(f"{_VIEW_COLUMNS} WHERE d.id = ?", (delivery_id,)).fetchone()
    return None if row is None else view(conn, row)


def list_events(
    conn: sqlite3.Connection, event_type: str | None, limit: int, before: str | None
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
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        "SELECT id, type, record_id, occurred_at, previous_status, data FROM events"
        f" {clause} ORDER BY seq DESC LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]


def retry(conn: sqlite3.Connection, delivery_id: int, now: float) -> DeliveryState | None:
    row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    if row is None:
        return None
    state = DeliveryState(row[0])
    if state is DeliveryState.FAILED:
        conn.execute(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
            " updated_at = ? WHERE id = ?",
            (now, now, delivery_id),
        )
    elif state is DeliveryState.PENDING:
        conn.execute(
            "UPDATE deliveries SET next_attempt_at = MIN(next_attempt_at, ?), updated_at = ?"
            " WHERE id = ?",
            (now, now, delivery_id),
        )
    return state


def replay(
    conn: sqlite3.Connection,
    since: float,
    event_type: str | None,
    targets: Callable[[str], Sequence[str]],
    now: float,
) -> Replayed:
    where = "occurred_at >= ?"
    params: list[Any] = [since]
    if event_type is not None:
        where += " AND type = ?"
        params.append(event_type)
    events = deliveries = 0
    last_seq = 0
    while True:
        rows = conn.execute(
            f"SELECT seq, type FROM events WHERE {where} AND seq > ? ORDER BY seq LIMIT ?",
            [*params, last_seq, REPLAY_CHUNK],
        ).fetchall()
        if not rows:
            return Replayed(events, deliveries)
        for seq, etype in rows:
            events += 1
            for sub in targets(etype):
                cur = conn.execute(
                    "INSERT INTO deliveries (event_seq, subscriber_id, state, next_attempt_at,"
                    " created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)"
                    " ON CONFLICT (event_seq, subscriber_id) DO UPDATE SET state = 'pending',"
                    " attempts = 0, next_attempt_at = excluded.next_attempt_at,"
                    " updated_at = excluded.updated_at WHERE deliveries.state != 'pending'",
                    (seq, sub, now, now, now),
                )
                deliveries += cur.rowcount
        last_seq = rows[-1][0]


def release(conn: sqlite3.Connection, delivery_id: int, token: str, now: float) -> bool:
    cur = conn.execute(
        "UPDATE deliveries SET lease_until = NULL, lease_token = NULL, next_attempt_at = ?,"
        " updated_at = ? WHERE id = ? AND lease_token = ? AND state = 'pending'",
        (now, now, delivery_id, token),
    )
    return cur.rowcount == 1


def counts_by_subscriber(conn: sqlite3.Connection) -> dict[str, dict[DeliveryState, int]]:
    counts: dict[str, dict[DeliveryState, int]] = {}
    for sub, state, n in conn.execute(
        "SELECT subscriber_id, state, COUNT(*) FROM deliveries GROUP BY subscriber_id, state"
    ):
        counts.setdefault(sub, dict.fromkeys(DeliveryState, 0))[DeliveryState(state)] = n
    return counts


def finish_attempts(
    items: Sequence[tuple[Delivery, Attempt, AttemptOutcome]], conn: sqlite3.Connection
) -> list[bool]:
    """Record a batch of attempts and release their leases; False for each delivery whose
    lease was lost (its attempt is not recorded). Two statements whatever the batch size."""
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
                            a.error,
                            a.response_excerpt,
                        )
                        for d, a, _ in items
                        if d.id in kept_ids
                    ]
                ),
            ),
        )
    return [d.id in kept_ids for d, _, _ in items]
