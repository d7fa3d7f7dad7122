"""A scan's writes on the SQLite store: record states, events and their deliveries, gone
records, service state. One function of a connection, run inside one transaction."""

from __future__ import annotations

import json
import sqlite3

from bridge.store.base import Committed, ScanCommit


def commit_scan(commit: ScanCommit, conn: sqlite3.Connection) -> Committed:
    """Apply `commit` (the caller holds the transaction)."""
    conn.executemany(
        "INSERT INTO records (id, status, created_at, seen_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
        " seen_at = excluded.seen_at, missed_at = NULL, gone_at = NULL",
        [(s.id, s.status, s.created_at, commit.now) for s in commit.states],
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
    created = 0
    recorded: set[str] = set()
    for event, subscribers in commit.events:
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
        for sub in subscribers:
            conn.execute(
                "INSERT INTO deliveries (event_seq, subscriber_id, state, next_attempt_at,"
                " created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                (seq, sub, commit.now, commit.now, commit.now),
            )
            created += 1
    return Committed(created, forgotten, frozenset(recorded))


def _forget(conn: sqlite3.Connection, commit: ScanCommit) -> list[str]:
    """Records missing from the list: missed twice in a row, or not seen by a whole sweep,
    they are gone (kept as tombstones, so one that comes back is compared with its last
    status); missed once, they are only marked. Returns the ids gone now."""
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
                "UPDATE records SET gone_at = ? WHERE seen_at < ? AND gone_at IS NULL RETURNING id",
                (commit.now, commit.forget_unseen_before),
            ).fetchall()
        ]
    return gone
