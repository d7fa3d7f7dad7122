"""What both store adapters share about gateway jobs: the SQL reading a job and keeping its
record as last seen, a row made a `Job`, the routing of a scan's events to `job:<record id>`
targets, and the range of subscriber ids every job target falls in.

A job's callback is a delivery target like a subscriber, with the id `job:<record id>`.
"Every job target" is written for an index: on SQLite (text compared byte by byte) every
such id sorts at or after `job:` and before `job;` (`;` follows `:`), a range of the claim
index `deliveries_claim (subscriber_id, next_attempt_at, id)` (`JOB_RANGE`); on PostgreSQL a
range would follow the database's collation, which may ignore punctuation (under en-US,
`job:r1` sorts after `job;`), so the condition is `starts_with` (`PG_JOBS`), the predicate
of the partial index `deliveries_jobs (next_attempt_at, id)` (migration 0002), already in
claim order.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from bridge import jsontext
from bridge.models import JOB_TARGET, PROGRESS, Callback, Event, Job

BRIDGE = "bridge."  # the prefix of the bridge's own event types (its reports, its test)
JOB_FIRST = JOB_TARGET  # every `job:` target id is >= this …
JOB_AFTER = JOB_TARGET[:-1] + chr(ord(JOB_TARGET[-1]) + 1)  # … and < this ('job;')
JOB_RANGE = f"d.subscriber_id >= '{JOB_FIRST}' AND d.subscriber_id < '{JOB_AFTER}'"
PG_JOBS = f"starts_with(d.subscriber_id, '{JOB_TARGET}')"


def job_target(record_id: str) -> str:
    """The delivery target of a job's callback."""
    return JOB_TARGET + record_id


def is_job_target(subscriber_id: str) -> bool:
    return subscriber_id.startswith(JOB_TARGET)


# a job's columns, its record as last seen last (kept in `jobs.record`: see `LAST_SEEN`)
JOB_COLUMNS = (
    "SELECT j.record_id, j.client_id, j.submitted_at, j.callback_id, j.callback_url,"
    " j.callback_events, j.callback_metadata, j.record FROM jobs j"
)

# a job's record as last seen, the value `jobs.record` is set to: the data of the newest
# stored event of the record that is neither progress nor the bridge's own (by the index
# events_record (record_id, seq)), else what it held (the record as the submission described
# it, or an event's data since deleted by retention). Written whenever such an event of a
# record with a job is stored (`commit_scan`, one statement per commit, and `register`, for
# the events a poll stored first), so a job reads its record without the events, and keeps
# it once retention deleted them (jobs stay twice as long).
LAST_SEEN = (
    "COALESCE((SELECT e.data FROM events e WHERE e.record_id = jobs.record_id"
    f" AND e.type <> '{PROGRESS}' AND substr(e.type, 1, 7) <> '{BRIDGE}'"
    " ORDER BY e.seq DESC LIMIT 1), jobs.record)"
)


def is_record_event(event_type: str) -> bool:
    """Whether an event of this type is its record as last seen (neither progress nor one
    of the bridge's own): `LAST_SEEN`'s condition."""
    return event_type != PROGRESS and not event_type.startswith(BRIDGE)


def seen_records(events: Iterable[Event], recorded: Collection[str]) -> list[str]:
    """The ids of the records (each once, in order) of those of `events` stored now (their
    id in `recorded`) that are their record as last seen: the jobs whose `record` a commit
    sets (`LAST_SEEN`)."""
    return list(
        dict.fromkeys(e.record_id for e in events if e.id in recorded and is_record_event(e.type))
    )


def job_values(job: Job) -> tuple[Any, ...]:
    """The values of a `jobs` row for `job`, in the order of `JOB_INSERT`'s columns."""
    callback = job.callback
    return (
        job.record_id,
        job.client_id,
        job.submitted_at,
        job.callback_id,
        None if callback is None else callback.url,
        None if callback is None else jsontext.dumps(list(callback.events)),
        None
        if callback is None or callback.metadata is None
        else jsontext.dumps(dict(callback.metadata)),
        None if job.record is None else jsontext.dumps(dict(job.record)),
    )


JOB_INSERT_COLUMNS = (
    "record_id, client_id, submitted_at, callback_id, callback_url, callback_events,"
    " callback_metadata, record"
)


def _callback(url: str | None, events: str | None, metadata: str | None) -> Callback | None:
    if url is None:
        return None
    return Callback(
        url,
        tuple(jsontext.loads(events)) if events else (),
        None if metadata is None else jsontext.loads(metadata),
    )


def job_from_row(row: Sequence[Any]) -> Job:
    """A row of `JOB_COLUMNS` as a `Job`."""
    return Job(
        record_id=row[0],
        client_id=row[1],
        submitted_at=float(row[2]),
        callback_id=row[3],
        callback=_callback(row[4], row[5], row[6]),
        record=None if row[7] is None else jsontext.loads(row[7]),
    )


def callback_from_row(row: Sequence[Any]) -> tuple[str, str, Callback]:
    """(record id, client id, callback) of a row (record_id, client_id, callback_url,
    callback_events, callback_metadata) whose url is set."""
    callback = _callback(row[2], row[3], row[4])
    assert callback is not None
    return row[0], row[1], callback


def asked_types(text: str | None) -> frozenset[str]:
    """The event types a stored callback lists (JSON text), as a set."""
    return frozenset(jsontext.loads(text)) if text else frozenset()


def route(
    events: Sequence[tuple[Event, Sequence[str]]], asked: Mapping[str, frozenset[str]]
) -> list[tuple[Event, Sequence[str]]]:
    """`events` with `job:<record id>` added to the targets of each event whose record has a
    job whose callback lists its type exactly (`asked`: record id to the types listed)."""
    routed: list[tuple[Event, Sequence[str]]] = []
    for event, subscribers in events:
        if event.type in asked.get(event.record_id, ()):
            target = job_target(event.record_id)
            if target not in subscribers:
                subscribers = [*subscribers, target]
        routed.append((event, subscribers))
    return routed
