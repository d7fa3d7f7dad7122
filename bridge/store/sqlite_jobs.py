"""Gateway jobs on the SQLite store: registering one (with the deliveries of the events a
poll stored before it), reading them, their callbacks, and which records' events go to a
job target. Plain functions of a connection, run by `SqliteStore`; the writes inside a
transaction (one writer at a time: a scan and a registration never interleave)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge import jsontext
from bridge.models import Callback, Job
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

_EACH = "IN (SELECT value FROM json_each(?))"


def asked(conn: sqlite3.Connection, record_ids: Sequence[str]) -> dict[str, frozenset[str]]:
    """The event types the callback of each of `record_ids` that has a job with one lists:
    one query whatever their number."""
    if not record_ids:
        return {}
    rows = conn.execute(
        f"SELECT record_id, callback_events FROM jobs WHERE record_id {_EACH}"
        " AND callback_url IS NOT NULL",
        (jsontext.dumps(list(dict.fromkeys(record_ids))),),
    ).fetchall()
    return {rid: asked_types(events) for rid, events in rows}


def keep_seen(conn: sqlite3.Connection, record_ids: Sequence[str]) -> None:
    """Set the `record` of the jobs of `record_ids` (those that have one) to the record as
    last seen (`LAST_SEEN`): one statement whatever their number."""
    if record_ids:
        conn.execute(
            f"UPDATE jobs SET record = {LAST_SEEN} WHERE record_id {_EACH}",
            (jsontext.dumps(list(record_ids)),),
        )


def register(job: Job, now: float, conn: sqlite3.Connection) -> tuple[bool, int]:
    """Insert `job` unless its record has one, its record the newest stored event's if a
    poll stored one first (`LAST_SEEN`); then queue, due `now`, a delivery to its target for
    each stored event of the record its callback lists (in the order stored).
    Returns (registered now, deliveries queued)."""
    marks = ", ".join("?" * len(JOB_INSERT_COLUMNS.split(",")))
    cur = conn.execute(
        f"INSERT INTO jobs ({JOB_INSERT_COLUMNS}) VALUES ({marks})"
        " ON CONFLICT (record_id) DO NOTHING",
        job_values(job),
    )
    if cur.rowcount == 0:
        return False, 0
    keep_seen(conn, [job.record_id])
    if job.callback is None or not job.callback.events:
        return True, 0
    cur = conn.execute(
        "INSERT INTO deliveries (event_seq, subscriber_id, state, next_attempt_at,"
        " created_at, updated_at) SELECT seq, ?, 'pending', ?, ?, ? FROM events"
        f" WHERE record_id = ? AND type {_EACH} ORDER BY seq"
        " ON CONFLICT (event_seq, subscriber_id) DO NOTHING",
        (
            job_target(job.record_id),
            now,
            now,
            now,
            job.record_id,
            jsontext.dumps(list(job.callback.events)),
        ),
    )
    return True, cur.rowcount


def get_job(conn: sqlite3.Connection, record_id: str) -> Job | None:
    row = conn.execute(f"{JOB_COLUMNS} WHERE j.record_id = ?", (record_id,)).fetchone()
    return None if row is None else job_from_row(row)


def client_jobs(
    conn: sqlite3.Connection, client_id: str, limit: int, before: str | None
) -> list[Job]:
    """Newest submitted first (ties: the greater record id first), by the index
    `jobs_client`; with `before`, those after that job of the client's in this order
    (none when it names no job of the client's)."""
    where, params = "j.client_id = ?", [client_id]
    if before is not None:
        found = conn.execute(
            "SELECT submitted_at FROM jobs WHERE record_id = ? AND client_id = ?",
            (before, client_id),
        ).fetchone()
        if found is None:
            return []
        where += " AND (j.submitted_at < ? OR (j.submitted_at = ? AND j.record_id < ?))"
        params += [found[0], found[0], before]
    rows = conn.execute(
        f"{JOB_COLUMNS} WHERE {where} ORDER BY j.submitted_at DESC, j.record_id DESC LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [job_from_row(row) for row in rows]


def callbacks(
    conn: sqlite3.Connection, record_ids: Sequence[str]
) -> dict[str, tuple[str, Callback]]:
    if not record_ids:
        return {}
    rows = conn.execute(
        "SELECT record_id, client_id, callback_url, callback_events, callback_metadata"
        f" FROM jobs WHERE record_id {_EACH} AND callback_url IS NOT NULL",
        (jsontext.dumps(list(dict.fromkeys(record_ids))),),
    ).fetchall()
    found = (callback_from_row(row) for row in rows)
    return {rid: (client, callback) for rid, client, callback in found}


def purge_jobs(conn: sqlite3.Connection, *, submitted_before: float, batch: int) -> int:
    """Delete up to `batch` jobs submitted before `submitted_before` that have no delivery
    left (looked up by the record's events: `events_record`, then the unique
    `(event_seq, subscriber_id)`), with the zero counters of their targets. The caller
    holds the write transaction."""
    rows = conn.execute(
        "DELETE FROM jobs WHERE record_id IN (SELECT j.record_id FROM jobs j"
        " WHERE j.submitted_at < ? AND NOT EXISTS (SELECT 1 FROM events e"
        " JOIN deliveries d ON d.event_seq = e.seq WHERE e.record_id = j.record_id"
        " AND d.subscriber_id = 'job:' || j.record_id) ORDER BY j.submitted_at LIMIT ?)"
        " RETURNING record_id",
        (submitted_before, batch),
    ).fetchall()
    if rows:
        conn.execute(
            f"DELETE FROM delivery_counts WHERE n = 0 AND subscriber_id {_EACH}",
            (jsontext.dumps([job_target(row[0]) for row in rows]),),
        )
    return len(rows)
