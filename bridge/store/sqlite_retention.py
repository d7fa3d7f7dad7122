"""Retention and orphans on the SQLite store.

Retention deletes, a small batch per transaction: delivered deliveries (and their attempts)
older than the retention window, dead letters and orphaned deliveries older than twice the
window, and events older than the window that have no delivery left. Record states are kept
(they are what the next scan is compared with). Each step reads an index, never the whole
table.

Orphans: pending deliveries of a subscriber no longer configured are set aside (`orphaned`):
kept, never claimed, not counted as pending, and pending again, due at once, when the
subscriber is configured again. Job targets (`job:<record id>`, a gateway callback) are no
subscribers of the config: their deliveries are never orphaned.

Jobs (the gateway's): a job goes once it was submitted more than twice the window ago (as
long as a dead letter is kept) and no delivery of its callback is left (`sqlite_jobs`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge import jsontext
from bridge.store.base import PURGED_UP_TO
from bridge.store.jobs_common import is_job_target

# finished deliveries old enough to go, by the per-state indexes on `updated_at`
_EXPIRED = (
    "SELECT id, event_seq FROM ("
    " SELECT id, event_seq FROM deliveries WHERE state = 'delivered' AND updated_at < ?"
    " UNION ALL"
    " SELECT id, event_seq FROM deliveries WHERE state = 'failed' AND updated_at < ?"
    " UNION ALL"
    " SELECT id, event_seq FROM deliveries WHERE state = 'orphaned' AND updated_at < ?"
    ") LIMIT ?"
)
_ALONE = (
    "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq) AND occurred_at < ?"
)
SCAN_CHUNK = 2000  # events a read looks at, between which other queries get their turn


def purge_deliveries(
    conn: sqlite3.Connection, *, kept_after: float, dead_after: float, batch: int
) -> tuple[int, int]:
    """Delete up to `batch` expired deliveries with their attempts, and their events when no
    delivery of them is left and they are older than `kept_after`. Returns (deliveries,
    events) deleted. The caller holds the write transaction."""
    rows = conn.execute(_EXPIRED, (kept_after, dead_after, dead_after, batch)).fetchall()
    if not rows:
        return 0, 0
    ids = jsontext.dumps([row[0] for row in rows])
    each = "IN (SELECT value FROM json_each(?))"
    conn.execute(f"DELETE FROM attempts WHERE delivery_id {each}", (ids,))
    conn.execute(f"DELETE FROM deliveries WHERE id {each}", (ids,))
    events = delete_events(conn, sorted({row[1] for row in rows}), kept_after=kept_after)
    return len(rows), events


def lone_events(
    conn: sqlite3.Connection, *, after_seq: int, kept_after: float, limit: int
) -> tuple[list[int], int, bool]:
    """Read (no write lock) up to `SCAN_CHUNK` events past `after_seq`, oldest first, up to
    the first one recorded since `kept_after`: the seqs of those with no delivery (up to
    `limit`), the seq to go on after, and whether the scan is done (it reached a recent
    event or the end). Events that still have deliveries are passed over: they go when
    their last delivery does (`purge_deliveries`)."""
    found: list[int] = []
    last = after_seq
    rows = conn.execute(
        "SELECT seq, occurred_at < ?, EXISTS (SELECT 1 FROM deliveries d"
        " WHERE d.event_seq = events.seq) FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        (kept_after, after_seq, SCAN_CHUNK),
    ).fetchall()
    for seq, old, has_deliveries in rows:
        if not old:
            return found, last, True
        if not has_deliveries:
            found.append(seq)
        last = seq
        if len(found) >= limit:
            return found, last, False
    return found, last, len(rows) < SCAN_CHUNK


def delete_events(conn: sqlite3.Connection, seqs: Sequence[int], *, kept_after: float) -> int:
    """Delete those of `seqs` still old and without deliveries (a replay may have added one
    since they were read), and raise the `purged_up_to_seq` mark to the highest seq deleted
    (feed cursors below it are past retention). The caller holds the write transaction."""
    deleted = conn.execute(
        f"DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?)) AND {_ALONE}"
        " RETURNING seq",
        (jsontext.dumps(list(seqs)), kept_after),
    ).fetchall()
    if deleted:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET"
            " value = MAX(CAST(meta.value AS INTEGER), CAST(excluded.value AS INTEGER))",
            (PURGED_UP_TO, str(max(row[0] for row in deleted))),
        )
    return len(deleted)


def reconcile_subscribers(
    conn: sqlite3.Connection, configured: Sequence[str], now: float
) -> tuple[int, int]:
    """Orphan the pending deliveries of subscribers not in `configured`; make the orphaned
    ones of configured subscribers pending again, due `now`. Returns (orphaned, restored).
    The caller holds the write transaction."""
    known = set(configured)
    orphaned = restored = 0
    for (sub,) in conn.execute(
        "SELECT subscriber_id FROM delivery_counts WHERE state = 'pending' AND n > 0"
    ).fetchall():
        if sub not in known and not is_job_target(sub):  # a job's callback: no config
            orphaned += conn.execute(
                "UPDATE deliveries SET state = 'orphaned', lease_until = NULL,"
                " lease_token = NULL, updated_at = ? WHERE subscriber_id = ?"
                " AND state = 'pending'",
                (now, sub),
            ).rowcount
    for (sub,) in conn.execute(
        "SELECT subscriber_id FROM delivery_counts WHERE state = 'orphaned' AND n > 0"
    ).fetchall():
        if sub in known:
            restored += conn.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, updated_at = ?"
                " WHERE subscriber_id = ? AND state = 'orphaned'",
                (now, now, sub),
            ).rowcount
    return orphaned, restored
