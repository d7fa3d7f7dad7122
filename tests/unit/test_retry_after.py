"""`Retry-After`: ASCII delay-seconds or an HTTP date; anything else is no hint at all, and
nothing a receiver sends makes the parsers raise."""

from __future__ import annotations

import math

import pytest

from bridge.retry_after import body_retry_after, parse_retry_after

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z

HEADERS = [
    ("120", 120.0),
    (" 120 ", 120.0),
    ("0", 0.0),
    ("007", 7.0),
    ("9" * 400, math.inf),  # capped by the policy
    ("Tue, 14 Nov 2023 22:28:20 GMT", 900.0),
    ("Tuesday, 14-Nov-23 22:28:20 GMT", 900.0),  # RFC 850, obsolete but allowed
    ("Tue Nov 14 22:28:20 2023", None),  # asctime carries no zone: refused
    ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # in the past
    (None, None),
    ("", None),
    ("²", None),  # str.isdigit() says yes, float() says no
    ("1²", None),
    ("٣", None),  # Arabic-Indic three
    ("\uff11\uff12", None),  # fullwidth digits
    ("-5", None),
    ("1.5", None),
    ("1e3", None),
    ("inf", None),
    ("NaN", None),
    ("soon", None),
    ("Tue, 14 Nov 99999 22:28:20 GMT", None),  # year out of range
    ("\x00", None),
]


@pytest.mark.parametrize(("value", "seconds"), HEADERS)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


BODIES = [
    (b'{"retry_after": 1.5, "global": false}', 1.5),
    (b'{"retry_after": 2}', 2.0),
    (b'{"retry_after": 1' + b"0" * 400 + b"}", math.inf),  # beyond any float
    (b'{"retry_after": -1}', None),
    (b'{"retry_after": NaN}', None),
    (b'{"retry_after": true}', None),
    (b'{"retry_after": "5"}', None),
    (b"[1, 2]", None),
    (b"not json", None),
    (b"\xff\xfe", None),
    (b"[" * 4096, None),  # nesting deeper than the parser goes
    (b"", None),
]


@pytest.mark.parametrize(("body", "seconds"), BODIES)
def test_body_retry_after(body: bytes, seconds: float | None) -> None:
    assert body_retry_after(body) == seconds
