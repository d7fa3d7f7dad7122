"""The poller's lease on the PostgreSQL store: one row of `leader`, by the database's clock.

A replica takes the lease when it is free or ran out and renews it while it holds it, in one
statement (an upsert that changes the row only then), so two replicas asking at once cannot
both get it. Giving it up makes it run out at once; the row stays, with the leader's last
successful poll, for followers and `status` to show (it never moves back). A scan's commit
checks the lease under a lock of the row (`fence`), as its transaction's last statement: a
replica that lost it can no longer write a scan, and the lock is held only while it commits.

A holder's name may end in `#<token>` (the service adds one per process, so that two
processes configured with the same replica id are still told apart): every answer shows the
replica without it.
"""

from __future__ import annotations

from bridge.errors import StoreError
from bridge.store.base import LeaderState
from bridge.store.pg_schema import Conn

POLLER = "poller"  # the lease's name (its row's key)

_HOLD = """
    INSERT INTO leader AS l (name, replica, expires_at, last_poll_at)
    VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s), %s)
    ON CONFLICT (name) DO UPDATE SET replica = excluded.replica,
        expires_at = excluded.expires_at,
        last_poll_at = GREATEST(l.last_poll_at, excluded.last_poll_at)
    WHERE l.expires_at < clock_timestamp() OR l.replica = excluded.replica
    RETURNING l.replica
"""
_READ = """
    WITH c AS (SELECT clock_timestamp() AS now)
    SELECT CASE WHEN l.expires_at > c.now THEN l.replica END,
        CASE WHEN l.expires_at > c.now
            THEN extract(epoch FROM l.expires_at - c.now)::double precision END,
        l.last_poll_at
    FROM leader l, c WHERE l.name = %s
"""


def shown(holder: str | None) -> str | None:
    """The replica of a lease holder's name: without its per-process `#…` suffix."""
    if holder is None or "#" not in holder:
        return holder
    return holder.rpartition("#")[0]


async def hold(conn: Conn, replica: str, lease_s: float, last_poll_at: float | None) -> bool:
    """Take or renew the lease for `lease_s`; whether `replica` holds it now."""
    cur = await conn.execute(_HOLD, (POLLER, replica, lease_s, last_poll_at))
    return await cur.fetchone() is not None


async def read(conn: Conn) -> LeaderState:
    """Who holds the lease (None once it ran out) and the last poll recorded with it."""
    row = await (await conn.execute(_READ, (POLLER,))).fetchone()
    if row is None:
        return LeaderState(None, None, None)
    return LeaderState(shown(row[0]), row[1], row[2])


async def resign(conn: Conn, replica: str) -> None:
    """Let the lease run out now if `replica` holds it."""
    await conn.execute(
        "UPDATE leader SET expires_at = '-infinity' WHERE name = %s AND replica = %s",
        (POLLER, replica),
    )


async def fence(conn: Conn, replica: str) -> None:
    """`StoreError` when another replica holds the lease unexpired. Locks the lease's row
    until the caller's transaction ends, so it cannot pass to another meanwhile: the last
    statement before the commit, so that the lock (which the holder's renewal waits for) is
    held only while it commits. No row, or a lease run out: allowed (a bridge on its own, a
    command)."""
    row = await (
        await conn.execute(
            "SELECT replica, expires_at > clock_timestamp() FROM leader WHERE name = %s FOR SHARE",
            (POLLER,),
        )
    ).fetchone()
    if row is not None and row[1] and row[0] != replica:
        raise StoreError(f"another replica ({shown(row[0])}) holds the poller's lease")
