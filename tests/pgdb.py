"""The PostgreSQL the tests use, from `BRIDGE_TEST_PG_URL` (read once, at import: the
autouse `clean_env` fixture removes every BRIDGE_* variable before each test).

Each test gets a schema of its own (`fresh_schema`), dropped afterwards; a store reaches it
through the URL's `options=-csearch_path=…`, a libpq parameter the adapter passes through.
Without the variable, PostgreSQL tests are skipped, saying why; with it, a database that
does not answer fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

PG_URL = os.environ.get("BRIDGE_TEST_PG_URL") or None
SKIP_REASON = "BRIDGE_TEST_PG_URL is not set: no PostgreSQL to test against (.ci/run sets it)"

skipped: list[str] = []  # node ids of PostgreSQL tests skipped for want of a database


def require_pg(nodeid: str) -> str:
    """The server's URL, or skip the test (recorded for the run's summary)."""
    if PG_URL is None:
        skipped.append(nodeid)
        pytest.skip(SKIP_REASON)
    return PG_URL


def with_schema(url: str, schema: str) -> str:
    """`url` whose connections use `schema` first."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-csearch_path={schema}', safe='')}"


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new, empty schema on the server at `url`, dropped afterwards: yields a URL whose
    connections use it."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"BRIDGE_TEST_PG_URL is set but PostgreSQL does not answer: {exc}")
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield with_schema(url, schema)
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
