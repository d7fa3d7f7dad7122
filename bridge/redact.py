"""The one place errors and URLs become text: a URL shows its scheme, host and port only.

Slack, Discord, Teams and Zapier keep their credential in the path of a webhook URL, others
in its query string or user-info: none of it may reach a log line, a stored attempt, an admin
answer or a command's output.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote, urlsplit

# scheme://authority (also JSON-escaped, `:\/\/`), then the rest of the URL: anything up to
# white space, a double quote, `<`, `>` or a backtick. Parentheses and single quotes are legal
# inside a URL, so they are taken too (cutting a little text after a URL loses nothing secret)
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*|):(?:\\?/){2}([^\s/\\?#\"<>`]*)([^\s\"<>`]*)")
_TRAILING = re.compile(r"[')\].,;:!]{1,3}$")
HIDDEN = "<redacted>"
MIN_SECRET_CHARS = 4  # shorter parts of a URL ("/", "/x") are left in place: they hide nothing
MIN_SEGMENT_CHARS = 8  # a path segment or query value this long is hidden on its own too


def redact_url(url: str) -> str:
    """`scheme://host[:port]` of `url`: no user-info, path, query or fragment."""
    match = _URL.match(url.strip())
    if match is None:
        return "<url>"
    return _origin(match.group(1), match.group(2))


def _origin(scheme: str, authority: str) -> str:
    scheme = scheme or "<scheme>"
    # user:password@ goes; an empty port (`host:`, or text's colon after a URL) means none
    host = authority.rpartition("@")[2].rstrip(":")
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
    return _URL.sub(_cut, text)


def _cut(match: re.Match[str]) -> str:
    """One URL as its origin, keeping the punctuation that closes it in the text around it
    (`URL('…')`, `(see …).`): one quote or bracket hides nothing."""
    trailing = _TRAILING.search(match.group(0))
    return _origin(match.group(1), match.group(2)) + (trailing.group(0) if trailing else "")


@lru_cache(maxsize=1024)  # one entry per subscriber URL: worked out once, not per attempt
def _secret_parts(url: str) -> tuple[str, ...]:
    """The parts of `url` that may hold a credential, as they may appear without it: path and
    query together and apart, fragment, user-info, long path segments and query values; raw
    and percent-decoded; longest first."""
    try:
        parts = urlsplit(url.strip())
        found = [
            parts.path + ("?" + parts.query if parts.query else ""),
            parts.path,
            parts.query,
            parts.fragment,
            parts.netloc.rpartition("@")[0],
            parts.username or "",
            parts.password or "",
        ]
    except ValueError:
        return ()
    pieces = [*parts.path.split("/"), *re.split("[&=;]", parts.query)]
    found += [piece for piece in pieces if len(piece) >= MIN_SEGMENT_CHARS]
    found += [unquote(part) for part in found]
    found += [part.replace("/", "\\/") for part in found]  # as JSON may escape it
    return tuple(sorted({p for p in found if len(p) >= MIN_SECRET_CHARS}, key=len, reverse=True))


def scrub(text: str, url: str) -> str:
    """`text` as `redact_text` makes it, and with the path, query, fragment and user-info of
    `url` hidden wherever they appear on their own (an answer echoing the request line)."""
    text = redact_text(text)
    for part in _secret_parts(url):
        text = text.replace(part, HIDDEN)
    return text


def describe(exc: BaseException) -> str:
    """An exception as one line of text for logs, stored attempts and answers: its type and
    message, URLs redacted."""
    try:
        message = str(exc)
    except Exception:  # a hostile or broken __str__ still gives a line
        message = ""
    message = " ".join(redact_text(message).split())
    name = type(exc).__name__
    return f"{name}: {message}" if message else name
