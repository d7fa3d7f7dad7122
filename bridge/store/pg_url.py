"""The PostgreSQL URL as the adapter uses it: checked before libpq connects with it, the
parameters every connection gets unless the URL sets them, and error texts scrubbed of its
credentials.

libpq's errors quote the text they choke on: a URL that does not parse (an unencoded `%`,
a space, a second `@` that leaves part of the password in the host name) would put its
password in the message. So a URL is parsed first, and one that does not parse, or names a
host no server can have, is refused with a fixed message; every other error text built
from a driver's exception passes through `scrub`, which hides the URL's user-info and its
password parameter wherever they appear.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict

from bridge.config_store import shown_store_url
from bridge.errors import StoreError
from bridge.redact import HIDDEN, MIN_SECRET_CHARS, scrub

INVALID = (
    "the URL is not a valid PostgreSQL URL (percent-encode special characters in the user"
    " name and password)"
)
# every connection's: a peer that stops answering is noticed (idle: probed after 10 s,
# given up after 3 unanswered probes 5 s apart; busy: unacknowledged data for 30 s)
NETWORK_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
# set on each connection of the pool, unless the URL's `options` sets them
SESSION_DEFAULTS = {
    "statement_timeout": "30s",
    "idle_in_transaction_session_timeout": "60s",
}
_PASSWORD = re.compile(r"""(password\s*[=:]\s*)('(?:[^'\\]|\\.)*'|"[^"]*"|[^\s&'",;]+)""", re.I)


def parse(url: str) -> dict[str, Any]:
    """libpq's parameters of `url`; `StoreError` (quoting none of it) when libpq would not
    read it as meant."""
    try:
        params = conninfo_to_dict(url)
    except Exception:
        raise invalid(url) from None
    hosts = str(params.get("host") or "")
    if "@" in hosts or any(ch.isspace() for ch in hosts):
        raise invalid(url)  # an `@` of the user-info taken as part of the host
    return params


def invalid(url: str) -> StoreError:
    return StoreError(f"cannot use PostgreSQL at {shown_store_url(url)}: {INVALID}")


def network_params(params: dict[str, Any]) -> dict[str, Any]:
    """The keepalive and TCP user timeout parameters the URL (parsed) does not set."""
    return {key: value for key, value in NETWORK_DEFAULTS.items() if key not in params}


def session_settings(params: dict[str, Any]) -> dict[str, str]:
    """The session settings to make on a connection: those the URL's `options` leaves."""
    options = str(params.get("options") or "")
    return {key: value for key, value in SESSION_DEFAULTS.items() if key not in options}


def _secrets(url: str) -> list[str]:
    """What of `url` may be a credential, as it may appear on its own: the user-info as
    written and each part of it, libpq's user and password, the password parameter's value;
    raw and percent-decoded; longest first."""
    found: list[str] = []
    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError:
        netloc = ""
    userinfo = netloc.rpartition("@")[0]
    found += [userinfo, *re.split("[:@]", userinfo)]
    found += re.findall(r"[?&]password=([^&#]*)", url)
    try:
        params = conninfo_to_dict(url)
    except Exception:
        params = {}
    found += [str(params.get(key) or "") for key in ("user", "password")]
    found += [unquote(part) for part in found]
    return sorted({p for p in found if len(p) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """`text` (an error's) with URLs cut to their origin and `url`'s user-info, user,
    password and any `password=` value hidden."""
    try:
        netloc = urlsplit(url.strip()).netloc
        scheme = urlsplit(url.strip()).scheme or "postgresql"
    except ValueError:
        netloc, scheme = "", "postgresql"
    # `scrub` with the URL's user-info alone: its path and query are no secret here
    text = scrub(text, f"{scheme}://{netloc.rpartition('@')[0]}@host")
    for secret in _secrets(url):
        text = text.replace(secret, HIDDEN)
    return _PASSWORD.sub(lambda m: m.group(1) + HIDDEN, text)
