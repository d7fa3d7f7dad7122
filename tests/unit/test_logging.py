"""Logged errors keep their traceback, and never the path or query of a URL in them."""

from __future__ import annotations

import io

import pytest
import structlog

from bridge.logging import configure

TOKEN = "T0KEN-path-secret"
URL = f"https://user:pw@hooks.example:8443/services/{TOKEN}?sig=QUERYSECRET#frag"


def crash(api_key: str) -> None:
    raise RuntimeError(f"cannot post to {URL} with {len(api_key)}")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_logged_traceback_is_plain_and_redacted(fmt: str) -> None:
    out = io.StringIO()
    configure("info", fmt, out)
    try:
        crash("-".join(["API", "KEY", "IN", "A", "LOCAL", "VARIABLE"]))
    except RuntimeError:
        structlog.get_logger("t").exception("it broke", error=f"RuntimeError: {URL}")
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text and "in crash" in text
    assert "https://hooks.example:8443" in text
    # the last one is a local variable's value: locals never print
    for secret in (TOKEN, "QUERYSECRET", "user:pw", "frag", "API-KEY-IN-A-LOCAL-VARIABLE"):
        assert secret not in text, secret
