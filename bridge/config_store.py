"""Checks of the `[store]` keys: the store URL (a SQLite file or a PostgreSQL server) and
this process's replica name."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from bridge.config_checks import shown
from bridge.redact import redact_url

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in POSTGRES_SCHEMES


def shown_store_url(url: str) -> str:
    """A PostgreSQL URL as messages show it: server and database, never the user-info
    (a password) or the parameters."""
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    return redact_url(url) + (f"/{database}" if database and "@" not in database else "")


def store_url(value: str) -> str:
    """`sqlite:///path` or `postgresql://[user[:password]@]host[:port]/database[?params]`
    (`postgres://` too; libpq parameters such as `sslmode` pass through)."""
    if is_postgres_url(value):
        parts = urlsplit(value)
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"has an invalid port: {redact_url(value)!r}") from None
        if parts.netloc.count("@") > 1:
            raise ValueError(
                "is not a valid PostgreSQL URL (percent-encode an @ in the user name or"
                f" password as %40): {redact_url(value)!r}"
            )
        try:  # libpq's own parser: its errors quote the text, the password included
            from psycopg.conninfo import conninfo_to_dict

            conninfo_to_dict(value)
        except Exception:
            raise ValueError(
                "is not a valid PostgreSQL URL (percent-encode special characters in the"
                f" user name and password): {redact_url(value)!r}"
            ) from None
        if not parts.path.strip("/"):
            raise ValueError(
                f"must name a database (postgresql://host:port/database), got {redact_url(value)!r}"
            )
        return value
    if not value.startswith("sqlite:///") or value == "sqlite:///":
        raise ValueError(
            "must be sqlite:///relative/path, sqlite:////absolute/path or"
            f" postgresql://user@host:port/database, got {shown(value)!r}"
        )
    return value


def default_replica_id() -> str:
    """hostname-pid: unique among processes sharing a store, and says where each runs."""
    return f"{socket.gethostname() or 'host'}-{os.getpid()}"


def replica_name(value: str) -> str:
    if not value.isprintable() or value != value.strip():
        raise ValueError(f"must be printable, without surrounding spaces, got {value!r}")
    return value
