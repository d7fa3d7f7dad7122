"""Feed cursors: `c_` and the event's store seq in base 36. Opaque to clients, the same in
every replica and after a restart (the seq is the store's, in the order events were stored)."""

from __future__ import annotations

import re

from bridge.errors import RequestError

_CURSOR = re.compile(r"^c_(0|[1-9a-z][0-9a-z]{0,12})$")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def encode(seq: int) -> str:
    digits = ""
    while True:
        seq, rest = divmod(seq, 36)
        digits = _DIGITS[rest] + digits
        if seq == 0:
            return f"c_{digits}"


def decode(raw: str, name: str) -> int:
    """A cursor's seq, or a `RequestError` naming the parameter (strict: one spelling)."""
    if _CURSOR.match(raw) is None:
        raise RequestError(f"{name}: {raw[:100]!r} is not a feed cursor (pass back a `next`)")
    return int(raw[2:], 36)
