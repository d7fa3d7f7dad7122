"""A scan's writes on the SQLite store: record states, events and their deliveries, gone
records, service state. One function of a connection, run inside one transaction; the
insertion of events and their deliveries is also how the bridge's reports are stored."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from bridge.models import Event, Report
from bridge.store import sqlite_jobs
from bridge.store.base import Committed, ScanCommit
from bridge.store.jobs_common import route, seen_records


def commit_scan(commit: ScanCommit, conn: sqlite3.Connection) -> Committed:
    """Apply `commit` (the caller holds the transaction)."""
    conn.executemany(
        "INSERT INTO records (id, status, created_at, seen_at, account) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
        " seen_at = excluded.seen_at, missed_at = NULL, gone_at = NULL",
        [(s.id, s.status, s.created_at, commit.now, commit.account) for s in commit.states],
    )
    conn.executemany(
        "UPDATE records SET seen_at = ?, missed_at = NULL, gone_at = NULL WHERE id = ?",
        [(commit.now, rid) for rid in commit.seen],
    )
    forgotten = _forget(conn, commit)
    for key, value in commit.meta.items():
        if value is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
    # an event of a record submitted through the gateway also goes to the job's callback
    # when it lists its type (one query for the records of the whole commit)
    asked = sqlite_jobs.asked(conn, [event.record_id for event, _ in commit.events])
    events = route(commit.events, asked) if asked else commit.events
    created, recorded = insert_events(conn, events, due_at=commit.now, at=commit.now)
    # the events stored now are their job's record as last seen (kept past their retention)
    sqlite_jobs.keep_seen(conn, seen_records((e for e, _ in events), recorded))
    return Committed(created, forgotten, recorded)


def insert_events(
    conn: sqlite3.Connection,
    events: Sequence[tuple[Event, Sequence[str]]],
    *,
    due_at: float,
    at: float,
) -> tuple[int, frozenset[str]]:
    """Record `events` (in order), each with a pending delivery to each of its subscribers,
    due at `due_at` and created at `at`; an event whose id is recorded already is skipped
    with its deliveries. Returns the deliveries created and the ids of the events recorded.
    Scans and the bridge's reports (`insert_report`) go through here."""
    created = 0
    recorded: set[str] = set()
    for event, subscribers in events:
        cur = conn.execute(
            "INSERT INTO events (id, type, record_id, occurred_at, previous_status, data) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                event.id,
                event.type,
                event.record_id,
                event.occurred_at,
                event.previous_status,
                json.dumps(event.data, separators=(",", ":")),
            ),
        )
        if cur.rowcount == 0:
            continue  # the same event id was recorded before: never deliver it twice
        recorded.add(event.id)
        seq = cur.lastrowid
        conn.executemany(
            "INSERT INTO deliveries (event_seq, subscriber_id, state, next_attempt_at,"
            " created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
            [(seq, sub, due_at, at, at) for sub in subscribers],
        )
        created += len(subscribers)
    return created, frozenset(recorded)


def insert_report(conn: sqlite3.Connection, report: Report, *, at: float) -> tuple[int, bool]:
    """Store the bridge's `report` (its event, a delivery due `at` to each of its targets)
    unless its event id is recorded already. Returns the deliveries created and whether it
    was stored."""
    targets = list(dict.fromkeys(report.targets))  # a target named twice: one delivery
    created, recorded = insert_events(conn, [(report.event, targets)], due_at=at, at=at)
    return created, bool(recorded)


def _forget(conn: sqlite3.Connection, commit: ScanCommit) -> list[str]:
    """Records missing from the list: missed twice in a row, or (of the account scanned)
    not seen by a whole sweep, they are gone (kept as tombstones, so one that comes back is
    compared with its last status); missed once, they are only marked. Returns the ids gone
    now."""
    gone: list[str] = []
    for rid in commit.removed:
        row = conn.execute(
            "UPDATE records SET gone_at = ? WHERE id = ? AND missed_at IS NOT NULL"
            " AND gone_at IS NULL RETURNING id",
            (commit.now, rid),
        ).fetchone()
        if row is not None:
            gone.append(rid)
        else:
            conn.execute(
                "UPDATE records SET missed_at = ? WHERE id = ? AND missed_at IS NULL",
                (commit.now, rid),
            )
    if commit.forget_unseen_before is not None:
        gone += [
            row[0]
            for row in conn.execute(
                "UPDATE records SET gone_at = ? WHERE account = ? AND seen_at < ?"
                " AND gone_at IS NULL RETURNING id",
                (commit.now, commit.account, commit.forget_unseen_before),
            ).fetchall()
        ]
    return gone
