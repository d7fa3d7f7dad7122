"""Readiness: a pure judgement of what the service knows about itself.

`/readyz` needs no token, so its reasons name the kind of a failure, never an upstream
answer's body or an exception's message (the log has those).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

READY_POLL_INTERVALS = 3
KEY_REJECTED = "upstream rejected the API key (401)"
_REQUEST = r"^GET \S+ "  # how the client names the request a poll error is about
_ANSWERED = re.compile(_REQUEST + r"answered ([0-9]{3})\b")
_TIMED_OUT = re.compile(_REQUEST + r"timed out\b")
_FAILED = re.compile(_REQUEST + r"failed\b")
_TOO_LARGE = re.compile(_REQUEST + r"answered more than\b")
# an exception class name as `describe()` starts its text with: `KeyError: …`
_CLASS = r"[A-Z][A-Za-z0-9_]*(?:Error|Exception|Exit|Interrupt|Iteration)"
_EXCEPTION_NAME = re.compile(rf"^((?:[A-Za-z_][A-Za-z0-9_]*\.)*{_CLASS})(?::|$)")


def poll_error_kind(last_error: str | None) -> str | None:
    """The kind of the last poll error, from the text the poller keeps (`str(exc)` of an
    `UpstreamError` or `StoreError`): a status code at most, never the answer's body."""
    if last_error is None:
        return None
    if match := _ANSWERED.match(last_error):
        status = int(match.group(1))
        if status == 401:
            return "API key rejected (401)"
        if status == 429 or status >= 500:
            return f"upstream unavailable ({status})"
        return f"upstream protocol error ({status})"
    if _TOO_LARGE.match(last_error):
        return "upstream protocol error (answer too large)"
    if _TIMED_OUT.match(last_error):
        return "upstream unavailable (timeout)"
    if _FAILED.match(last_error):
        return "upstream unavailable (connection failed)"
    if last_error.startswith(("store ", "cannot open store ", "database file ")):
        return "store error (see the log)"
    if last_error.startswith("GET ") or last_error.startswith("record at offset "):
        return "upstream protocol error"
    return "unexpected error (see the log)"


def failing_reason(component: str, last_error: str) -> str:
    """A supervised component that keeps failing, with its exception's type when the text
    starts with one (`TypeError: …`, as `describe()` writes it), never the message."""
    match = _EXCEPTION_NAME.match(last_error)
    kind = f": {match.group(1)}" if match else ""
    return f"component {component} keeps failing{kind} (see the log)"


def readiness(
    *,
    now: float,
    store_error: str | None,
    auth_failed: bool,
    last_success_at: float | None,
    last_error_kind: str | None,
    interval_s: float,
    failing: Mapping[str, str] | None = None,
    recorded_every_s: float = 0.0,
) -> list[str]:
    """Why the service is not ready (an empty list: it is). Ready means the store answers,
    no supervised component keeps failing, the API key works and a poll succeeded within the
    last `READY_POLL_INTERVALS` intervals (plus `recorded_every_s`, how stale a poll time
    read from the store may be: a follower reads the leader's)."""
    reasons: list[str] = []
    if store_error is not None:
        reasons.append(f"store unreachable: {store_error}")
    reasons.extend(failing_reason(name, text) for name, text in sorted((failing or {}).items()))
    if auth_failed:
        reasons.append(KEY_REJECTED)
        return reasons
    failed = f"; last poll failed: {last_error_kind}" if last_error_kind else ""
    limit = READY_POLL_INTERVALS * interval_s + recorded_every_s
    if last_success_at is None:
        reasons.append("no successful poll yet" + failed)
    elif now - last_success_at > limit:
        age = now - last_success_at
        reasons.append(f"last successful poll {age:.0f} s ago (limit {limit:.0f} s)" + failed)
    return reasons
