"""The operator's queries on the PostgreSQL store: listing, one delivery, retry, replay,
counts, subscribers' health. Plain functions of a connection, with the rules of
`sqlite_ops`.

Counts: the gauges read deliveries by subscriber and state on every scrape, from every
replica, so they must not scan `deliveries`; and a counter row per (subscriber, state)
updated by every state change, as the SQLite store keeps, would make every replica's
transactions queue on the same few rows (and deadlock when two update them in different
orders). Instead, statement-level triggers with transition tables append the net change of
each statement, one row per (subscriber, state) it changed, to `delivery_count_deltas`: an
append never waits on anyone. A read sums `delivery_counts` and the deltas; `fold` moves
the deltas into `delivery_counts` (retention's purge and every read try it, under an
advisory lock only one transaction holds, skipped when another holds it), so the deltas
stay few and reads cheap.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bridge.models import Attempt, DeliveryFilter, DeliveryState, DeliveryView, Event, Replayed
from bridge.store import filters
from bridge.store.base import PURGED_UP_TO, FeedPage, SubscriberHealth
from bridge.store.claims_common import storable
from bridge.store.jobs_common import PG_JOBS
from bridge.store.pg_schema import Conn, lock_key

_VIEW_COLUMNS = filters.VIEW_COLUMNS
# a bulk retry locks its rows in id order: two of them never wait on each other in turn
DIALECT = filters.Dialect("%s", storable, " ORDER BY d.id FOR UPDATE OF d", PG_JOBS)
_COUNTS = (
    "SELECT subscriber_id, state, SUM(n)::bigint FROM (SELECT subscriber_id, state, n"
    " FROM delivery_counts UNION ALL SELECT subscriber_id, state, n"
    " FROM delivery_count_deltas) c GROUP BY subscriber_id, state HAVING SUM(n) > 0"
    " ORDER BY subscriber_id, state"
)
REPLAY_CHUNK = 500

T = TypeVar("T")


def _limit(limit: int) -> int | None:
    """A LIMIT as SQLite reads it: a negative one is none."""
    return None if limit < 0 else limit


async def _views(conn: Conn, rows: Sequence[tuple[Any, ...]]) -> list[DeliveryView]:
    """The deliveries of `rows` with their attempt history (one query for all of them)."""
    history: dict[int, list[Attempt]] = {row[0]: [] for row in rows}
    if rows:
        cur = await conn.execute(
            "SELECT delivery_id, attempted_at, status_code, latency_ms, error, response_excerpt"
            " FROM attempts WHERE delivery_id = ANY(%s::bigint[]) ORDER BY id",
            (list(history),),
        )
        for delivery_id, *attempt in await cur.fetchall():
            history[delivery_id].append(Attempt(*attempt))
    views = []
    for row in rows:
        state = DeliveryState(row[4])
        views.append(
            DeliveryView(
                id=row[0],
                event_id=row[1],
                event_type=row[2],
                subscriber_id=row[3],
                state=state,
                attempts=row[5],
                next_attempt_at=row[6] if state is DeliveryState.PENDING else None,
                history=tuple(history[row[0]]),
                record_id=row[7],
                created_at=row[8],
                updated_at=row[9],
            )
        )
    return views


async def list_deliveries(
    conn: Conn, where: DeliveryFilter, limit: int, before: int | None
) -> list[DeliveryView]:
    sql, params = filters.listing(DIALECT, where, before=before)
    cur = await conn.execute(sql, [*params, _limit(limit)])
    return await _views(conn, await cur.fetchall())


async def get_delivery(conn: Conn, delivery_id: int) -> DeliveryView | None:
    cur = await conn.execute(f"{_VIEW_COLUMNS} WHERE d.id = %s", (delivery_id,))
    row = await cur.fetchone()
    return None if row is None else (await _views(conn, [row]))[0]


async def list_events(
    conn: Conn,
    event_type: str | None,
    limit: int,
    before: str | None,
    record_id: str | None = None,
) -> list[Event] | None:
    where: list[str] = []
    params: list[Any] = []
    if before is not None:
        cur = await conn.execute("SELECT seq FROM events WHERE id = %s", (storable(before),))
        found = await cur.fetchone()
        if found is None:
            return None
        where.append("seq < %s")
        params.append(found[0])
    if event_type is not None:
        where.append("type = %s")
        params.append(storable(event_type))
    if record_id is not None:  # the index events_record (record_id, seq)
        where.append("record_id = %s")
        params.append(storable(record_id))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    cur = await conn.execute(
        "SELECT id, type, record_id, occurred_at, previous_status, data FROM events"
        f" {clause} ORDER BY seq DESC LIMIT %s",
        [*params, _limit(limit)],
    )
    return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in await cur.fetchall()]


async def events_after(
    conn: Conn, after_seq: int | None, limit: int, event_type: str | None
) -> FeedPage:
    """The pull feed's page. Safe to serve in seq order: every INSERT INTO events is in a
    scan commit (`pg_scan.commit_scan`, progress events included) or stores a report
    (`pg_scan.insert_report`), and those hold the scan advisory lock until they commit, so
    seqs are taken and become visible in commit order: no lower seq can appear after a
    higher one was seen."""
    where = "seq > %s"
    params: list[Any] = [after_seq or 0]
    if event_type is not None:
        where += " AND type = %s"
        params.append(storable(event_type))
    cur = await conn.execute(
        "SELECT seq, id, type, record_id, occurred_at, previous_status, data FROM events"
        f" WHERE {where} ORDER BY seq LIMIT %s",
        [*params, _limit(limit)],
    )
    rows = await cur.fetchall()
    newest = await (await conn.execute("SELECT MAX(seq) FROM events")).fetchone()
    purged = await (
        await conn.execute("SELECT value FROM meta WHERE key = %s", (PURGED_UP_TO,))
    ).fetchone()
    events = [(r[0], Event(r[1], r[2], r[3], r[4], r[5], json.loads(r[6]))) for r in rows]
    return FeedPage(events, int(newest[0] or 0) if newest else 0, int(purged[0]) if purged else 0)


async def retry(conn: Conn, delivery_id: int, now: float) -> DeliveryState | None:
    cur = await conn.execute(
        "SELECT state FROM deliveries WHERE id = %s FOR UPDATE", (delivery_id,)
    )
    row = await cur.fetchone()
    if row is None:
        return None
    state = DeliveryState(row[0])
    if state is DeliveryState.FAILED:
        await conn.execute(
            "UPDATE deliveries SET state = 'pending', schedule_from = attempts,"
            " next_attempt_at = %s, updated_at = %s WHERE id = %s",
            (now, now, delivery_id),
        )
    elif state is DeliveryState.PENDING:
        # as SQLite's two-argument MIN: a delivery with no due time keeps none
        await conn.execute(
            "UPDATE deliveries SET next_attempt_at = CASE WHEN next_attempt_at IS NOT NULL"
            " THEN LEAST(next_attempt_at, %s) END, updated_at = %s WHERE id = %s",
            (now, now, delivery_id),
        )
    return state


async def retry_failed(
    conn: Conn, where: DeliveryFilter, now: float, subscribers: Sequence[str]
) -> int:
    """`retry` every dead letter of `subscribers` `where` matches (its `state` ignored), in
    one statement (a delivery retried, replayed or purged meanwhile by another transaction
    is left alone)."""
    found = filters.retrying(DIALECT, where, now=now, subscribers=subscribers)
    if found is None:
        return 0
    sql, params = found
    cur = await conn.execute(sql, params)
    return len(await cur.fetchall())


async def replay(
    conn: Conn,
    since: float,
    event_type: str | None,
    targets: Callable[[str, str], Sequence[str]],
    now: float,
) -> Replayed:
    """Pending again, with a fresh schedule: every delivery of the matching events to the
    subscribers `targets(type, record_id)` names (created if missing). `targets` names
    configured subscribers only, so an orphaned delivery comes back only for a subscriber
    configured again."""
    where = "occurred_at >= %s"
    params: list[Any] = [since]
    if event_type is not None:
        where += " AND type = %s"
        params.append(storable(event_type))
    events = deliveries = unmatched = already_pending = 0
    last_seq = 0
    while True:
        cur = await conn.execute(
            f"SELECT seq, type, record_id FROM events WHERE {where} AND seq > %s"
            " ORDER BY seq LIMIT %s",
            [*params, last_seq, REPLAY_CHUNK],
        )
        rows = await cur.fetchall()
        if not rows:
            return Replayed(events, deliveries, unmatched, already_pending)
        pairs: dict[tuple[int, str], str] = {}  # (event, subscriber): the event's record
        for seq, etype, rid in rows:
            events += 1
            subs = targets(etype, rid)
            unmatched += not subs
            for sub in map(storable, subs):
                if (seq, sub) in pairs:
                    already_pending += 1  # named twice: pending since the first time
                pairs[(seq, sub)] = rid
        if pairs:
            cur = await conn.execute(
                "INSERT INTO deliveries (event_seq, subscriber_id, record_id, state,"
                " next_attempt_at, created_at, updated_at)"
                " SELECT seq, sub, rid, 'pending', %s, %s, %s FROM unnest(%s::bigint[],"
                " %s::text[], %s::text[]) WITH ORDINALITY AS p (seq, sub, rid, n) ORDER BY n"
                " ON CONFLICT (event_seq, subscriber_id) DO UPDATE"
                " SET state = 'pending', schedule_from = deliveries.attempts,"
                " next_attempt_at = excluded.next_attempt_at,"
                " updated_at = excluded.updated_at WHERE deliveries.state <> 'pending'"
                " RETURNING 1",
                (now, now, now, [p[0] for p in pairs], [p[1] for p in pairs], list(pairs.values())),
            )
            changed = len(await cur.fetchall())
            deliveries += changed
            already_pending += len(pairs) - changed
        last_seq = rows[-1][0]


async def fold(conn: Conn) -> None:
    """Move the count deltas into `delivery_counts`, unless another transaction does it now
    (then its fold does the same)."""
    cur = await conn.execute(f"SELECT pg_try_advisory_xact_lock({lock_key('%s')})", ("counts",))
    row = await cur.fetchone()
    if row is None or not row[0]:
        return
    await conn.execute(
        "WITH moved AS (DELETE FROM delivery_count_deltas RETURNING subscriber_id, state, n)"
        " INSERT INTO delivery_counts (subscriber_id, state, n)"
        " SELECT subscriber_id, state, SUM(n) FROM moved GROUP BY subscriber_id, state"
        " ORDER BY subscriber_id, state"
        " ON CONFLICT (subscriber_id, state) DO UPDATE SET n = delivery_counts.n + excluded.n"
    )
    await conn.execute("DELETE FROM delivery_counts WHERE n = 0")


def folded(read: Callable[[Conn], Awaitable[T]]) -> Callable[[Conn], Awaitable[T]]:
    """`read`, after folding the count deltas (when no other transaction folds them)."""

    async def run(conn: Conn) -> T:
        await fold(conn)
        return await read(conn)

    return run


async def counts_by_subscriber(conn: Conn) -> dict[str, dict[DeliveryState, int]]:
    """From the counters and their deltas (no scan of the deliveries)."""
    counts: dict[str, dict[DeliveryState, int]] = {}
    for sub, state, n in await (await conn.execute(_COUNTS)).fetchall():
        counts.setdefault(sub, dict.fromkeys(DeliveryState, 0))[DeliveryState(state)] = int(n)
    return counts


async def count_deliveries(conn: Conn) -> dict[DeliveryState, int]:
    counts = dict.fromkeys(DeliveryState, 0)
    for by_state in (await counts_by_subscriber(conn)).values():
        for state, n in by_state.items():
            counts[state] += n
    return counts


async def subscriber_health(conn: Conn) -> dict[str, SubscriberHealth]:
    cur = await conn.execute("SELECT id, failing_since, disabled_at, reason FROM subscriber_health")
    return {row[0]: SubscriberHealth(*row[1:]) for row in await cur.fetchall()}


async def set_subscriber_health(
    conn: Conn, subscriber_id: str, health: SubscriberHealth, keep_disabled: bool
) -> None:
    """One statement: with `keep_disabled`, a stored disable (and its reason) stays."""
    await conn.execute(
        _SET_HEALTH,
        {
            "id": storable(subscriber_id),
            "failing": health.failing_since,
            "disabled": health.disabled_at,
            "reason": storable(health.reason),
            "keep": keep_disabled,
        },
    )


async def disable_subscriber(
    conn: Conn, subscriber_id: str, health: SubscriberHealth, keep_disabled: bool
) -> bool:
    """`set_subscriber_health` for a write that may disable the subscriber: whether it did
    (the store had it enabled: no row, or not disabled). The subscriber's row is created
    first if missing, then locked and read, so that of writers disabling it at once only
    one sees it enabled (an INSERT … ON CONFLICT alone cannot tell what it replaced); the
    caller, storing a report, also holds the scan lock, which orders them anyway."""
    sid = storable(subscriber_id)
    await conn.execute(
        "INSERT INTO subscriber_health (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (sid,)
    )
    cur = await conn.execute(
        "SELECT disabled_at FROM subscriber_health WHERE id = %s FOR UPDATE", (sid,)
    )
    row = await cur.fetchone()
    was_enabled = row is None or row[0] is None
    await set_subscriber_health(conn, subscriber_id, health, keep_disabled)
    return was_enabled and health.disabled_at is not None


_SET_HEALTH = (
    "INSERT INTO subscriber_health AS h (id, failing_since, disabled_at, reason)"
    " VALUES (%(id)s, %(failing)s, %(disabled)s, %(reason)s) ON CONFLICT (id) DO UPDATE SET"
    " failing_since = excluded.failing_since,"
    " disabled_at = CASE WHEN %(keep)s AND h.disabled_at IS NOT NULL THEN h.disabled_at"
    " ELSE excluded.disabled_at END,"
    " reason = CASE WHEN %(keep)s AND h.disabled_at IS NOT NULL THEN h.reason"
    " ELSE excluded.reason END"
)
