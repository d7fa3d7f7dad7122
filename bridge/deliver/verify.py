"""Check a received webhook the way a receiver should, naming exactly what is wrong."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from bridge.config import check_secret
from bridge.deliver.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

TOLERANCE_S = 300


class VerifyError(Exception):
    """The request would be rejected; the message says why."""


def parse_header(line: str) -> tuple[str, str]:
    """`'name: value'` → (lower-case name, value)."""
    name, sep, value = line.partition(":")
    if not sep or not name.strip():
        raise VerifyError(f"header {line!r} is not in the form 'name: value'")
    return name.strip().lower(), value.strip()


def verify(
    secret: str,
    body: str,
    headers: Mapping[str, str],
    *,
    now: float,
    tolerance_s: float = TOLERANCE_S,
) -> Any:
    """The parsed event if `body` and `headers` carry a valid signature by `secret` within
    `tolerance_s` of `now`; else `VerifyError` with the exact reason."""
    try:
        check_secret(secret)
    except ValueError as exc:
        raise VerifyError(f"secret {exc}") from None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
        if not lowered.get(name):
            raise VerifyError(f"missing header {name}")
    msg_id, raw_ts = lowered[ID_HEADER], lowered[TIMESTAMP_HEADER]
    if not raw_ts.isdigit():
        raise VerifyError(f"{TIMESTAMP_HEADER} {raw_ts!r} is not unix seconds")
    age = now - int(raw_ts)
    if abs(age) > tolerance_s:
        when = "old" if age > 0 else "in the future"
        raise VerifyError(
            f"timestamp outside tolerance: {TIMESTAMP_HEADER} {raw_ts} is {abs(age):.0f} s "
            f"{when} (tolerance {tolerance_s:.0f} s)"
        )
    expected = Webhook(secret).sign(msg_id, datetime.fromtimestamp(int(raw_ts), UTC), body)
    offered = [s for s in lowered[SIGNATURE_HEADER].split(" ") if s.startswith("v1,")]
    if not offered:
        raise VerifyError(f"{SIGNATURE_HEADER} has no v1 signature")
    if not any(hmac.compare_digest(expected, s) for s in offered):
        raise VerifyError(
            "bad signature: no v1 signature matches this secret, id, timestamp and body "
            "(is the body byte-for-byte what was received?)"
        )
    try:
        return json.loads(body)
    except ValueError as exc:
        raise VerifyError(f"signature is valid but the body is not JSON: {exc}") from None
