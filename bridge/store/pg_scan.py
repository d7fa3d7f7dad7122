"""The poller's side of the PostgreSQL store: what it reads (known records, service state)
and a scan's writes (record states, events and their deliveries, gone records, service
state), one function of a connection run inside one transaction, with the rules of
`sqlite_scan`; fenced by the poller's lease (`pg_leader.fence`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from bridge.models import RecordState
from bridge.store.base import Committed, ScanCommit
from bridge.store.pg_schema import Conn


async def get_meta(conn: Conn, key: str) -> str | None:
    row = await (await conn.execute("SELECT value FROM meta WHERE key = %s", (key,))).fetchone()
    return None if row is None else str(row[0])


async def newest_created_at(conn: Conn) -> str | None:
    row = await (await conn.execute("SELECT MAX(created_at) FROM records")).fetchone()
    return None if row is None or row[0] is None else str(row[0])


async def known_states(conn: Conn, record_ids: Sequence[str]) -> dict[str, RecordState]:
    cur = await conn.execute(
        "SELECT id, status, created_at FROM records WHERE id = ANY(%s::text[])",
        (list(dict.fromkeys(record_ids)),),
    )
    return {row[0]: RecordState(*row) for row in await cur.fetchall()}


async def tracked_pending(conn: Conn) -> list[RecordState]:
    cur = await conn.execute(
        "SELECT id, status, created_at FROM records WHERE status NOT IN"
        " ('success', 'failed') AND gone_at IS NULL ORDER BY created_at DESC"
    )
    return [RecordState(*row) for row in await cur.fetchall()]


async def commit_scan(conn: Conn, commit: ScanCommit, *, due_at: float) -> Committed:
    """Apply `commit` (the caller holds the transaction). The deliveries it queues are due
    at `due_at` (`commit.now`, or the database's clock)."""
    states = {s.id: s for s in commit.states}  # the last state given for a record wins
    if states:
        await conn.execute(
            "INSERT INTO records (id, status, created_at, seen_at)"
            " SELECT id, status, created_at, %s"
            " FROM unnest(%s::text[], %s::text[], %s::text[]) AS s (id, status, created_at)"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
            " seen_at = excluded.seen_at, missed_at = NULL, gone_at = NULL",
            (
                commit.now,
                [s.id for s in states.values()],
                [s.status for s in states.values()],
                [s.created_at for s in states.values()],
            ),
        )
    if commit.seen:
        await conn.execute(
            "UPDATE records SET seen_at = %s, missed_at = NULL, gone_at = NULL"
            " WHERE id = ANY(%s::text[])",
            (commit.now, list(commit.seen)),
        )
    forgotten = await _forget(conn, commit)
    for key, value in commit.meta.items():
        if value is None:
            await conn.execute("DELETE FROM meta WHERE key = %s", (key,))
        else:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
    seqs: list[int] = []
    subs: list[str] = []
    rids: list[str] = []
    recorded: set[str] = set()
    for event, subscribers in commit.events:
        cur = await conn.execute(
            "INSERT INTO events (id, type, record_id, occurred_at, previous_status, data)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING seq",
            (
                event.id,
                event.type,
                event.record_id,
                event.occurred_at,
                event.previous_status,
                json.dumps(event.data, separators=(",", ":")),
            ),
        )
        row = await cur.fetchone()
        if row is None:
            continue  # the same event id was recorded before: never deliver it twice
        recorded.add(event.id)
        seqs += [row[0]] * len(subscribers)
        rids += [event.record_id] * len(subscribers)
        subs += subscribers
    if seqs:
        await conn.execute(
            "INSERT INTO deliveries (event_seq, subscriber_id, record_id, state,"
            " next_attempt_at, created_at, updated_at) SELECT seq, sub, rid, 'pending', %s, %s, %s"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[]) WITH ORDINALITY"
            " AS d (seq, sub, rid, n) ORDER BY n",
            (due_at, commit.now, commit.now, seqs, subs, rids),
        )
    return Committed(len(seqs), forgotten, frozenset(recorded))


async def _forget(conn: Conn, commit: ScanCommit) -> list[str]:
    """Records missing from the list: missed twice in a row, or not seen by a whole sweep,
    they are gone (kept as tombstones, so one that comes back is compared with its last
    status); missed once, they are only marked. Returns the ids gone now."""
    gone: list[str] = []
    for rid in commit.removed:
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
            "UPDATE records SET gone_at = %s WHERE seen_at < %s AND gone_at IS NULL RETURNING id",
            (commit.now, commit.forget_unseen_before),
        )
        gone += [row[0] for row in await cur.fetchall()]
    return gone
