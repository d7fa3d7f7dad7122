"""Gateway jobs on the PostgreSQL store, with the rules of `sqlite_jobs`: registering one
(with the deliveries of the events a poll stored before it), reading them, their callbacks,
and which records' events go to a job target. Plain functions of a connection, run by
`PgStore`.

A registration takes the scan lock first (`pg_scan.serialize`), as every write that routes
events does: a scan committing at the same time either committed before (the registration
sees its events and queues them) or commits after (its routing query, a statement begun
after the registration committed, sees the job). Without it, each could miss the other's
uncommitted rows, and an event would never reach the callback.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.models import Callback, Job
from bridge.store.claims_common import storable
from bridge.store.jobs_common import (
    JOB_COLUMNS,
    JOB_INSERT_COLUMNS,
    LAST_SEEN,
    asked_types,
    callback_from_row,
    job_from_row,
    job_target,
    job_values,
)
from bridge.store.pg_schema import Conn

_C = ' COLLATE "C"'  # record ids compared byte by byte, as SQLite does (index jobs_client)


def _stored(job: Job) -> list[object]:
    return [storable(v) if isinstance(v, str) else v for v in job_values(job)]


async def asked(conn: Conn, record_ids: Sequence[str]) -> dict[str, frozenset[str]]:
    """The event types the callback of each of `record_ids` (as given) that has a job with
    one lists: one query whatever their number."""
    if not record_ids:
        return {}
    given = {storable(rid): rid for rid in record_ids}
    cur = await conn.execute(
        "SELECT record_id, callback_events FROM jobs WHERE record_id = ANY(%s::text[])"
        " AND callback_url IS NOT NULL",
        (list(given),),
    )
    return {given[rid]: asked_types(events) for rid, events in await cur.fetchall()}


async def keep_seen(conn: Conn, record_ids: Sequence[str]) -> None:
    """Set the `record` of the jobs of `record_ids` (those that have one) to the record as
    last seen (`LAST_SEEN`): one statement whatever their number. The caller holds the scan
    lock (no event of theirs is being stored meanwhile)."""
    if record_ids:
        await conn.execute(
            f"UPDATE jobs SET record = {LAST_SEEN} WHERE record_id = ANY(%s::text[])",
            ([storable(rid) for rid in record_ids],),
        )


async def register(conn: Conn, job: Job, now: float) -> tuple[bool, int]:
    """Insert `job` unless its record has one, its record the newest stored event's if a
    poll stored one first (`LAST_SEEN`); then queue, due `now`, a delivery to its target for
    each stored event of the record its callback lists (in the order stored).
    Returns (registered now, deliveries queued). The caller holds the scan lock."""
    marks = ", ".join(["%s"] * len(JOB_INSERT_COLUMNS.split(",")))
    cur = await conn.execute(
        f"INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({marks})"
        " ON CONFLICT (record_id) DO NOTHING RETURNING 1",
        _stored(job),
    )
    if await cur.fetchone() is None:
        return False, 0
    await keep_seen(conn, [job.record_id])
    if job.callback is None or not job.callback.events:
        return True, 0
    cur = await conn.execute(
        "INSERT INTO deliveries (event_seq, subscriber_id, record_id, state, next_attempt_at,"
        " created_at, updated_at) SELECT seq, %s, record_id, 'pending', %s, %s, %s"
        " FROM events WHERE record_id = %s AND type = ANY(%s::text[]) ORDER BY seq"
        " ON CONFLICT (event_seq, subscriber_id) DO NOTHING",
        (
            storable(job_target(job.record_id)),
            now,
            now,
            now,
            storable(job.record_id),
            [storable(t) for t in job.callback.events],
        ),
    )
    return True, cur.rowcount


async def get_job(conn: Conn, record_id: str) -> Job | None:
    cur = await conn.execute(f"{JOB_COLUMNS} WHERE j.record_id = %s", (storable(record_id),))
    row = await cur.fetchone()
    return None if row is None else job_from_row(row)


async def client_jobs(conn: Conn, client_id: str, limit: int, before: str | None) -> list[Job]:
    """Newest submitted first (ties: the greater record id first), by the index
    `jobs_client`; with `before`, those after that job of the client's in this order
    (none when it names no job of the client's)."""
    client = storable(client_id)
    where, params = "j.client_id = %s", [client]
    if before is not None:
        cur = await conn.execute(
            "SELECT submitted_at FROM jobs WHERE record_id = %s AND client_id = %s",
            (storable(before), client),
        )
        found = await cur.fetchone()
        if found is None:
            return []
        where += f" AND (j.submitted_at < %s OR (j.submitted_at = %s AND j.record_id{_C} < %s{_C}))"
        params += [found[0], found[0], storable(before)]
    cur = await conn.execute(
        f"{JOB_COLUMNS} WHERE {where} ORDER BY j.submitted_at DESC, j.record_id{_C} DESC LIMIT %s",
        [*params, None if limit < 0 else limit],
    )
    return [job_from_row(row) for row in await cur.fetchall()]


async def callbacks(conn: Conn, record_ids: Sequence[str]) -> dict[str, tuple[str, Callback]]:
    if not record_ids:
        return {}
    given = {storable(rid): rid for rid in record_ids}
    cur = await conn.execute(
        "SELECT record_id, client_id, callback_url, callback_events, callback_metadata"
        " FROM jobs WHERE record_id = ANY(%s::text[]) AND callback_url IS NOT NULL",
        (list(given),),
    )
    found = (callback_from_row(row) for row in await cur.fetchall())
    return {given[rid]: (client, callback) for rid, client, callback in found}


async def purge_jobs(conn: Conn, *, submitted_before: float, batch: int) -> int:
    """Delete up to `batch` jobs submitted before `submitted_before` that have no delivery
    left (looked up by the record's events: `events_record`, then the unique
    `(event_seq, subscriber_id)`). The caller holds the scan lock: no scan routes an event
    to a job while it goes. (The zero counters of their targets go when the counts fold.)"""
    cur = await conn.execute(
        "DELETE FROM jobs WHERE record_id IN (SELECT j.record_id FROM jobs j"
        " WHERE j.submitted_at < %s AND NOT EXISTS (SELECT 1 FROM events e"
        " JOIN deliveries d ON d.event_seq = e.seq WHERE e.record_id = j.record_id"
        " AND d.subscriber_id = 'job:' || j.record_id) ORDER BY j.submitted_at LIMIT %s"
        " FOR UPDATE SKIP LOCKED) RETURNING 1",
        (submitted_before, batch),
    )
    return len(await cur.fetchall())
