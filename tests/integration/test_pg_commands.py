"""`check`, `status` and `deliveries` on a PostgreSQL store: they create nothing in a schema
that holds no store yet, and say so; once a bridge has run they read it."""

from __future__ import annotations

import psycopg
import pytest

from bridge.config import Settings
from bridge.models import ALL_DELIVERIES
from bridge.ops.commands import deliveries, status, status_text
from bridge.store.factory import build_store
from bridge.store.look import look, store_line
from tests.pgdb import fresh_schema, require_pg


def settings(url: str) -> Settings:
    return Settings.model_validate(
        {"upstream": {"api_key": "k"}, "store": {"url": url, "replica_id": "r-1"}}
    )


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return [row[0] for row in rows]


async def test_commands_create_nothing_then_read_the_store(request: pytest.FixtureRequest) -> None:
    with fresh_schema(require_pg(request.node.nodeid)) as url:
        cfg = settings(url)
        found = await look(cfg)
        assert store_line(found) == (
            "store: postgresql://127.0.0.1:5432/test has no bridge tables yet"
            " (the first run creates them)"
        )
        report = await status(cfg)
        assert status_text(report, now=0.0)[0] == store_line(found)
        assert report["bridge"] == {"running": False, "leader": None, "leader_last_poll_at": None}
        assert await deliveries(cfg, where=ALL_DELIVERIES, limit=10) == {
            "deliveries": [],
            "next_before": None,
        }
        assert tables(url) == []  # nothing created

        store = build_store(cfg)  # what `run` opens: it migrates
        await store.open()
        await store.close()
        found = await look(cfg)
        assert found.exists and found.schema_version >= 1
        assert status_text(await status(cfg), now=0.0)[0] == (
            f"store: postgresql://127.0.0.1:5432/test (schema version {found.schema_version})"
        )
