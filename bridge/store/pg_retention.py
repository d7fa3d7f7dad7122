"""Retention and orphans on the PostgreSQL store, with the rules of `sqlite_retention`.

Retention deletes, a small batch per transaction: delivered deliveries (and their attempts)
older than the retention window, dead letters and orphaned deliveries older than twice the
window, and events older than the window that have no delivery left. Record states are kept.
Replicas purging at once skip each other's rows (`SKIP LOCKED`) rather than wait.

Orphans: pending deliveries of a subscriber no longer configured are set aside (`orphaned`):
kept, never claimed, not counted as pending, and pending again, due at once, when the
subscriber is configured again. The subscribers concerned are found from the counts, not
by reading every pending delivery. Job targets (`job:<record id>`, a gateway callback) are
no subscribers of the config: their deliveries are never orphaned.

Jobs (the gateway's): a job goes once it was submitted more than twice the window ago (as
long as a dead letter is kept) and no delivery of its callback is left (`pg_jobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from bridge.models import DeliveryState
from bridge.store.base import PURGED_UP_TO
from bridge.store.jobs_common import is_job_target
from bridge.store.pg_jobs import purge_jobs
from bridge.store.pg_ops import counts_by_subscriber, fold
from bridge.store.pg_pool import Pool
from bridge.store.pg_scan import serialize
from bridge.store.pg_schema import Conn

_FINISHED_OLD = (
    "(d.state = 'delivered' AND d.updated_at < %(kept)s)"
    " OR (d.state = 'failed' AND d.updated_at < %(dead)s)"
    " OR (d.state = 'orphaned' AND d.updated_at < %(dead)s)"
)
# as the SQLite store picks them: delivered ones first, then dead letters, then orphans,
# each oldest first; locked again with the condition rechecked on the row as it is now
_EXPIRED = (
    "SELECT d.id, d.event_seq FROM deliveries d WHERE d.id IN (SELECT id FROM ("
    " (SELECT id, 1 AS k, updated_at FROM deliveries WHERE state = 'delivered'"
    "  AND updated_at < %(kept)s ORDER BY updated_at, id LIMIT %(batch)s)"
    " UNION ALL (SELECT id, 2, updated_at FROM deliveries WHERE state = 'failed'"
    "  AND updated_at < %(dead)s ORDER BY updated_at, id LIMIT %(batch)s)"
    " UNION ALL (SELECT id, 3, updated_at FROM deliveries WHERE state = 'orphaned'"
    "  AND updated_at < %(dead)s ORDER BY updated_at, id LIMIT %(batch)s)"
    ") x ORDER BY k, updated_at, id LIMIT %(batch)s) AND (" + _FINISHED_OLD + ")"
    " FOR UPDATE OF d SKIP LOCKED"
)
_ALONE = (
    "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq) AND occurred_at < %s"
)
SCAN_CHUNK = 2000  # events a read looks at


async def purge(
    db: Pool, *, now: float, retention_s: float, batch: int, after: int
) -> tuple[int, int]:
    """One step of retention, in short transactions: up to `batch` expired deliveries, up
    to `batch` lone events (looked for past seq `after`) and up to `batch` old jobs.
    Returns the rows deleted and the seq the next step looks past. Folds the count deltas
    too."""
    kept_after, dead_after = now - retention_s, now - 2 * retention_s
    deliveries, events = await db.tx(
        "deleting old deliveries",
        partial(purge_deliveries, kept_after=kept_after, dead_after=dead_after, batch=batch),
    )
    found: list[int] = []
    done = False
    while not done and len(found) < batch:  # reads; other queries go between them
        scan = partial(
            lone_events, after_seq=after, kept_after=kept_after, limit=batch - len(found)
        )
        seqs, after, done = await db.read("reading old events", scan)
        found += seqs
    if found:
        events += await db.tx("deleting old events", lambda c: delete_events(c, found, kept_after))
    jobs = await db.tx("deleting old jobs", partial(_purge_jobs, before=dead_after, batch=batch))
    await db.tx("folding delivery counts", fold)
    return deliveries + events + jobs, after


async def _purge_jobs(conn: Conn, *, before: float, batch: int) -> int:
    await serialize(conn)  # no scan routes an event to a job while it goes
    return await purge_jobs(conn, submitted_before=before, batch=batch)


async def purge_deliveries(
    conn: Conn, *, kept_after: float, dead_after: float, batch: int
) -> tuple[int, int]:
    """Delete up to `batch` expired deliveries with their attempts, and their events when no
    delivery of them is left and they are older than `kept_after`. Returns (deliveries,
    events) deleted. The caller holds the transaction."""
    cur = await conn.execute(_EXPIRED, {"kept": kept_after, "dead": dead_after, "batch": batch})
    rows = await cur.fetchall()
    if not rows:
        return 0, 0
    ids = [row[0] for row in rows]
    await conn.execute("DELETE FROM attempts WHERE delivery_id = ANY(%s::bigint[])", (ids,))
    await conn.execute("DELETE FROM deliveries WHERE id = ANY(%s::bigint[])", (ids,))
    return len(rows), await delete_events(conn, sorted({row[1] for row in rows}), kept_after)


async def lone_events(
    conn: Conn, *, after_seq: int, kept_after: float, limit: int
) -> tuple[list[int], int, bool]:
    """Read up to `SCAN_CHUNK` events past `after_seq`, oldest first, up to the first one
    recorded since `kept_after`: the seqs of those with no delivery (up to `limit`), the seq
    to go on after, and whether the scan is done (it reached a recent event or the end).
    Events that still have deliveries are passed over: they go when their last delivery
    does (`purge_deliveries`)."""
    found: list[int] = []
    last = after_seq
    cur = await conn.execute(
        "SELECT seq, occurred_at < %s, EXISTS (SELECT 1 FROM deliveries d"
        " WHERE d.event_seq = events.seq) FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
        (kept_after, after_seq, SCAN_CHUNK),
    )
    rows = await cur.fetchall()
    for seq, old, has_deliveries in rows:
        if not old:
            return found, last, True
        if not has_deliveries:
            found.append(seq)
        last = seq
        if len(found) >= limit:
            return found, last, False
    return found, last, len(rows) < SCAN_CHUNK


async def delete_events(conn: Conn, seqs: Sequence[int], kept_after: float) -> int:
    """Delete those of `seqs` still old and without deliveries (a replay may have added one
    since they were read), and raise the `purged_up_to_seq` mark to the highest seq deleted
    (feed cursors below it are past retention). The caller holds the transaction."""
    cur = await conn.execute(
        f"DELETE FROM events WHERE seq = ANY(%s::bigint[]) AND {_ALONE} RETURNING seq",
        (list(seqs), kept_after),
    )
    deleted = [row[0] for row in await cur.fetchall()]
    if deleted:
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET"
            " value = GREATEST(meta.value::bigint, excluded.value::bigint)::text",
            (PURGED_UP_TO, str(max(deleted))),
        )
    return len(deleted)


async def reconcile_subscribers(
    conn: Conn, configured: Sequence[str], now: float
) -> tuple[int, int]:
    """Orphan the pending deliveries of subscribers not in `configured`; make the orphaned
    ones of configured subscribers pending again, due `now`. Returns (orphaned, restored).
    The caller holds the transaction."""
    known = set(configured)
    counts = await counts_by_subscriber(conn)
    leaving = sorted(
        s
        for s, c in counts.items()
        if c[DeliveryState.PENDING] and s not in known and not is_job_target(s)
    )
    back = sorted(s for s, c in counts.items() if c[DeliveryState.ORPHANED] and s in known)
    orphaned = restored = 0
    if leaving:
        cur = await conn.execute(
            "UPDATE deliveries SET state = 'orphaned', lease_until = NULL, lease_token = NULL,"
            " updated_at = %s WHERE subscriber_id = ANY(%s::text[]) AND state = 'pending'",
            (now, leaving),
        )
        orphaned = cur.rowcount
    if back:
        cur = await conn.execute(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = %s, updated_at = %s"
            " WHERE subscriber_id = ANY(%s::text[]) AND state = 'orphaned'",
            (now, now, back),
        )
        restored = cur.rowcount
    return orphaned, restored
