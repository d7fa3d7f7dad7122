"""The poller's side of the PostgreSQL store: what it reads (known records, service state)
and a scan's writes (record states, events and their deliveries, gone records, service
state), one function of a connection run inside one transaction, with the rules of
`sqlite_scan`; fenced by the poller's lease (`pg_leader.fence`, the transaction's last
statement, so a long commit never holds up the lease's renewal).

Scans commit one at a time (`serialize`, a transaction's advisory lock, as SQLite's single
writer does), so events are numbered in the order their scans commit. Events and their
deliveries go in with a statement each, whatever their number. Text from outside is stored
with NUL (which PostgreSQL's text cannot hold) replaced by U+FFFD (`storable`); an event's
`data` is JSON text with every control character escaped, as SQLite keeps it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from bridge.models import Event, RecordState, Report
from bridge.store import pg_jobs
from bridge.store.base import Committed, ScanCommit
from bridge.store.claims_common import storable
from bridge.store.jobs_common import route, seen_records
from bridge.store.pg_schema import Conn, lock_key

_SERIALIZE = f"SELECT pg_advisory_xact_lock({lock_key('%s')})"
# `account`'s newest record, by the index records_account
NEWEST_CREATED = (
    "SELECT created_at FROM records WHERE account = %s ORDER BY created_at DESC LIMIT 1"
)


async def get_meta(conn: Conn, key: str) -> str | None:
    row = await (
        await conn.execute("SELECT value FROM meta WHERE key = %s", (storable(key),))
    ).fetchone()
    return None if row is None else str(row[0])


async def newest_created_at(conn: Conn, account: str) -> str | None:
    """By the index records_account (a lookup, however many records there are)."""
    row = await (await conn.execute(NEWEST_CREATED, (storable(account),))).fetchone()
    return None if row is None else str(row[0])


async def known_states(conn: Conn, record_ids: Sequence[str]) -> dict[str, RecordState]:
    """By the ids asked for (an id with a NUL is found under the one stored for it)."""
    asked = {storable(rid): rid for rid in record_ids}
    cur = await conn.execute(
        "SELECT id, status, created_at FROM records WHERE id = ANY(%s::text[])", (list(asked),)
    )
    return {asked[row[0]]: RecordState(asked[row[0]], *row[1:]) for row in await cur.fetchall()}


async def serialize(conn: Conn) -> None:
    """Wait for the scan committing now, if any, and keep the next one waiting until the
    caller's transaction ends."""
    await conn.execute(_SERIALIZE, ("scan",))


async def tracked_pending(conn: Conn, account: str | None) -> list[RecordState]:
    """Of `account`, or of every account (None)."""
    of_account = "" if account is None else " AND account = %s"
    cur = await conn.execute(
        "SELECT id, status, created_at FROM records WHERE status NOT IN ('success', 'failed')"
        f" AND gone_at IS NULL{of_account} ORDER BY created_at DESC",
        () if account is None else (storable(account),),
    )
    return [RecordState(*row) for row in await cur.fetchall()]


async def commit_scan(conn: Conn, commit: ScanCommit, *, due_at: float) -> Committed:
    """Apply `commit` (the caller holds the transaction). The deliveries it queues are due
    at `due_at` (`commit.now`, or the database's clock)."""
    states = {storable(s.id): s for s in commit.states}  # the last state given for a record wins
    if states:
        await conn.execute(
            "INSERT INTO records (id, status, created_at, seen_at, account)"
            " SELECT id, status, created_at, %s, %s"
            " FROM unnest(%s::text[], %s::text[], %s::text[]) AS s (id, status, created_at)"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
            " seen_at = excluded.seen_at, missed_at = NULL, gone_at = NULL",
            (
                commit.now,
                storable(commit.account),
                list(states),
                [storable(s.status) for s in states.values()],
                [storable(s.created_at) for s in states.values()],
            ),
        )
    if commit.seen:
        await conn.execute(
            "UPDATE records SET seen_at = %s, missed_at = NULL, gone_at = NULL"
            " WHERE id = ANY(%s::text[])",
            (commit.now, [storable(rid) for rid in commit.seen]),
        )
    forgotten = await _forget(conn, commit)
    for key, value in commit.meta.items():
        if value is None:
            await conn.execute("DELETE FROM meta WHERE key = %s", (storable(key),))
        else:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (storable(key), storable(value)),
            )
    # an event of a record submitted through the gateway also goes to the job's callback
    # when it lists its type (one query for the records of the whole commit)
    asked = await pg_jobs.asked(conn, [event.record_id for event, _ in commit.events])
    given = route(commit.events, asked) if asked else commit.events
    # an event id given twice: its first one only (the next ones were "recorded before")
    events: dict[str, tuple[Event, Sequence[str]]] = {}
    for event, subscribers in given:
        events.setdefault(storable(event.id), (event, subscribers))
    created, recorded = await insert_events(conn, events, due_at=due_at, at=commit.now)
    # the events stored now are their job's record as last seen (kept past their retention)
    await pg_jobs.keep_seen(conn, seen_records((e for e, _ in events.values()), recorded))
    return Committed(created, forgotten, recorded)


async def insert_events(
    conn: Conn, events: Mapping[str, tuple[Event, Sequence[str]]], *, due_at: float, at: float
) -> tuple[int, frozenset[str]]:
    """Record `events` (by their stored id, in order), each with a pending delivery to each
    of its subscribers, due at `due_at` and created at `at`; an event whose id is recorded
    already is skipped with its deliveries. Returns the deliveries created and the ids of
    the events recorded (as given). The caller holds the scan lock (`serialize`): scans and
    the bridge's reports (`insert_report`) go through here."""
    seq_of = await _insert_events(conn, events) if events else {}
    seqs: list[int] = []
    subs: list[str] = []
    rids: list[str] = []
    recorded: set[str] = set()
    for eid, (event, subscribers) in events.items():
        if eid not in seq_of:
            continue  # the same event id was recorded before: never deliver it twice
        recorded.add(event.id)
        seqs += [seq_of[eid]] * len(subscribers)
        rids += [storable(event.record_id)] * len(subscribers)
        subs += [storable(sub) for sub in subscribers]
    if seqs:
        await conn.execute(
            "INSERT INTO deliveries (event_seq, subscriber_id, record_id, state,"
            " next_attempt_at, created_at, updated_at) SELECT seq, sub, rid, 'pending', %s, %s, %s"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[]) WITH ORDINALITY"
            " AS d (seq, sub, rid, n) ORDER BY n",
            (due_at, at, at, seqs, subs, rids),
        )
    return len(seqs), frozenset(recorded)


async def insert_report(
    conn: Conn, report: Report, *, due_at: float, at: float
) -> tuple[int, bool]:
    """Store the bridge's `report` (its event, a delivery to each of its targets, due at
    `due_at`, created at `at`) unless its event id is recorded already; the caller holds
    the scan lock (`serialize`). Returns the deliveries created and whether it was stored."""
    targets = list(dict.fromkeys(map(storable, report.targets)))  # named twice: one delivery
    events = {storable(report.event.id): (report.event, targets)}
    created, recorded = await insert_events(conn, events, due_at=due_at, at=at)
    return created, bool(recorded)


async def _insert_events(
    conn: Conn, events: Mapping[str, tuple[Event, Sequence[str]]]
) -> dict[str, int]:
    """Insert the events (by their stored id; numbered in the order given) whose id is not
    recorded yet; the seq of each one inserted."""
    given = [event for event, _ in events.values()]
    cur = await conn.execute(
        "INSERT INTO events (id, type, record_id, occurred_at, previous_status, data)"
        " SELECT id, type, rid, at, previous, data FROM unnest(%s::text[], %s::text[],"
        " %s::text[], %s::double precision[], %s::text[], %s::text[]) WITH ORDINALITY"
        " AS e (id, type, rid, at, previous, data, n) ORDER BY n"
        " ON CONFLICT (id) DO NOTHING RETURNING id, seq",
        (
            list(events),
            [storable(e.type) for e in given],
            [storable(e.record_id) for e in given],
            [e.occurred_at for e in given],
            [storable(e.previous_status) for e in given],
            [json.dumps(e.data, separators=(",", ":")) for e in given],
        ),
    )
    return {eid: seq for eid, seq in await cur.fetchall()}


async def _forget(conn: Conn, commit: ScanCommit) -> list[str]:
    """Records missing from the list: missed twice in a row, or (of the account scanned)
    not seen by a whole sweep, they are gone (kept as tombstones, so one that comes back is
    compared with its last status); missed once, they are only marked. Returns the ids gone
    now."""
    gone: list[str] = []
    for rid in map(storable, commit.removed):
        cur = await conn.execute(
            "UPDATE records SET gone_at = %s WHERE id = %s AND missed_at IS NOT NULL"
            " AND gone_at IS NULL RETURNING id",
            (commit.now, rid),
        )
        if await cur.fetchone() is not None:
            gone.append(rid)
        else:
            await conn.execute(
                "UPDATE records SET missed_at = %s WHERE id = %s AND missed_at IS NULL",
                (commit.now, rid),
            )
    if commit.forget_unseen_before is not None:
        cur = await conn.execute(
            "UPDATE records SET gone_at = %s WHERE account = %s AND seen_at < %s"
            " AND gone_at IS NULL RETURNING id",
            (commit.now, storable(commit.account), commit.forget_unseen_before),
        )
        gone += [row[0] for row in await cur.fetchall()]
    return gone
