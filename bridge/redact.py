"""The one place errors and URLs become text: a URL shows its scheme, host and port only.

Slack, Discord, Teams and Zapier keep their credential in the path of a webhook URL, others
in its query string or user-info: none of it may reach a log line, a stored attempt, an admin
answer or a command's output.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# scheme://authority, then the rest of the URL up to white space, a quote or a bracket
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,15})://([^\s/?#'\"<>()\[\]]*)([^\s'\"<>()]*)")


def redact_url(url: str) -> str:
    """`scheme://host[:port]` of `url`: no user-info, path, query or fragment."""
    match = _URL.match(url.strip())
    if match is None:
        return "<url>"
    return _origin(match.group(1), match.group(2))


def _origin(scheme: str, authority: str) -> str:
    host = authority.rpartition("@")[2]  # user:password@ goes
    if not host:
        return f"{scheme.lower()}://<url>"
    try:
        parts = urlsplit(f"{scheme}://{host}")
        port = parts.port
        name = parts.hostname or host
    except ValueError:
        return f"{scheme.lower()}://<url>"
    if ":" in name:  # IPv6
        name = f"[{name}]"
    return f"{scheme.lower()}://{name}" + (f":{port}" if port is not None else "")


def redact_text(text: str) -> str:
    """`text` with every URL in it cut to its scheme, host and port."""
    return _URL.sub(lambda m: _origin(m.group(1), m.group(2)), text)


def describe(exc: BaseException) -> str:
    """An exception as one line of text for logs, stored attempts and answers: its type and
    message, URLs redacted."""
    message = redact_text(str(exc)).replace("\n", " ").strip()
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
