"""The SQLite schema: migrations, applied in order, each in its own transaction.

Append a migration to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from bridge.store.sqlite_inline import commit_or_roll_back

T = TypeVar("T")

STORE_ID = "store_id"  # meta key: this store's id, also recorded in its lock file

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE records (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        seen_at REAL NOT NULL
    );
    CREATE INDEX records_open ON records (created_at) WHERE status NOT IN ('success', 'failed');
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        record_id TEXT NOT NULL,
        occurred_at REAL NOT NULL,
        previous_status TEXT,
        data TEXT NOT NULL
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq INTEGER NOT NULL REFERENCES events (seq),
        subscriber_id TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_until REAL,
        lease_token TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (event_seq, subscriber_id)
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
        attempted_at REAL NOT NULL,
        status_code INTEGER,
        latency_ms REAL NOT NULL,
        error TEXT,
        response_excerpt TEXT NOT NULL
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id);
    """,
    """
    CREATE INDEX records_created ON records (created_at);
    """,
    """
    CREATE TABLE subscriber_health (
        id TEXT PRIMARY KEY,
        failing_since REAL,
        disabled_at REAL,
        reason TEXT
    );
    """,
    """
    CREATE INDEX events_record ON events (record_id, seq);
    CREATE INDEX deliveries_lane ON deliveries (subscriber_id, state, event_seq);
    """,
    """
    CREATE INDEX deliveries_claim ON deliveries (subscriber_id, next_attempt_at, id)
        WHERE state = 'pending';
    """,
    """
    DROP INDEX deliveries_due;
    DROP INDEX deliveries_lane;
    """,
    # a record missing from the list is first marked missed, and only if it is missed again
    # at the next scan is it gone (a tombstone keeping its last status, not tracked)
    """
    ALTER TABLE records ADD COLUMN missed_at REAL;
    ALTER TABLE records ADD COLUMN gone_at REAL;
    DROP INDEX records_open;
    CREATE INDEX records_open ON records (created_at)
        WHERE status NOT IN ('success', 'failed') AND gone_at IS NULL;
    """,
    # gauges read counters kept by triggers, not a GROUP BY over every delivery per scrape;
    # retention finds finished deliveries by age; every store has an id its lock file records
    """
    CREATE TABLE delivery_counts (
        subscriber_id TEXT NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (subscriber_id, state)
    ) WITHOUT ROWID;
    INSERT INTO delivery_counts (subscriber_id, state, n)
        SELECT subscriber_id, state, COUNT(*) FROM deliveries GROUP BY subscriber_id, state;
    CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries BEGIN
        INSERT INTO delivery_counts (subscriber_id, state, n)
            VALUES (NEW.subscriber_id, NEW.state, 1)
            ON CONFLICT (subscriber_id, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER deliveries_count_update AFTER UPDATE OF state, subscriber_id ON deliveries
        WHEN OLD.state IS NOT NEW.state OR OLD.subscriber_id IS NOT NEW.subscriber_id BEGIN
        UPDATE delivery_counts SET n = n - 1
            WHERE subscriber_id = OLD.subscriber_id AND state = OLD.state;
        INSERT INTO delivery_counts (subscriber_id, state, n)
            VALUES (NEW.subscriber_id, NEW.state, 1)
            ON CONFLICT (subscriber_id, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries BEGIN
        UPDATE delivery_counts SET n = n - 1
            WHERE subscriber_id = OLD.subscriber_id AND state = OLD.state;
    END;
    CREATE INDEX deliveries_delivered ON deliveries (updated_at) WHERE state = 'delivered';
    CREATE INDEX deliveries_failed ON deliveries (updated_at) WHERE state = 'failed';
    CREATE INDEX deliveries_orphaned ON deliveries (updated_at) WHERE state = 'orphaned';
    INSERT INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))
        ON CONFLICT (key) DO NOTHING;
    """,
    # `attempts` counts every attempt a delivery ever had; a dead letter retried by an
    # operator starts the retry schedule again from `schedule_from` (its attempts until then)
    """
    ALTER TABLE deliveries ADD COLUMN schedule_from INTEGER NOT NULL DEFAULT 0;
    """,
    # jobs submitted through the gateway: whose, when, and the callback (its events and
    # metadata as JSON text; no url: no callback), with the record as the submission
    # described it (JSON text); a client's jobs are listed newest first, retention finds
    # old ones by `submitted_at`
    """
    CREATE TABLE jobs (
        record_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        submitted_at REAL NOT NULL,
        callback_id TEXT,
        callback_url TEXT,
        callback_events TEXT,
        callback_metadata TEXT,
        record TEXT
    );
    CREATE INDEX jobs_client ON jobs (client_id, submitted_at DESC, record_id DESC);
    CREATE INDEX jobs_submitted ON jobs (submitted_at);
    """,
    # a job's record as last seen is kept in `jobs.record`, written whenever an event of the
    # record is stored (retention deletes events long before their job): the jobs stored
    # until now get the data of their record's newest stored event that is neither progress
    # nor the bridge's own, and keep the submission's record when none is left
    """
    UPDATE jobs SET record = COALESCE((SELECT e.data FROM events e
        WHERE e.record_id = jobs.record_id AND e.type <> 'denoise.progress'
        AND substr(e.type, 1, 7) <> 'bridge.' ORDER BY e.seq DESC LIMIT 1), jobs.record);
    """,
    # several Munsit accounts: a record belongs to the account whose scan stored it (the
    # records stored until now to `default`); each account's newest record is found by
    # (account, created_at), which takes over from records_created
    """
    ALTER TABLE records ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX records_account ON records (account, created_at);
    DROP INDEX records_created;
    """,
)


def in_transaction(fn: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """`fn` inside BEGIN IMMEDIATE … COMMIT (see `commit_or_roll_back`)."""
    conn.execute("BEGIN IMMEDIATE")
    return commit_or_roll_back(conn, fn)


def read_store_id(conn: sqlite3.Connection) -> str | None:
    """The store's id recorded in `meta`, if any."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (STORE_ID,)).fetchone()
    return None if row is None else str(row[0])


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to the newest version, each step in its own transaction."""
    version = schema_version(conn)
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this bridge knows ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        in_transaction(partial(_apply, statements(script), number), conn)


def statements(script: str) -> list[str]:
    """The statements of `script`, split where SQLite says one is complete (a trigger's body
    holds semicolons of its own)."""
    found: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                found.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        found.append(pending.strip())
    return found


def _apply(script: list[str], version: int, conn: sqlite3.Connection) -> None:
    for statement in script:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
