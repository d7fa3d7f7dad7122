"""Logged errors keep their traceback, and never the path or query of a URL in them."""

from __future__ import annotations

import io
import json
import logging

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


def test_what_libraries_log_comes_out_as_json_lines_redacted() -> None:
    """asyncio's "Task exception was never retrieved" and aiohttp's own lines go through
    the standard `logging` module: same format, same redaction."""
    out = io.StringIO()
    configure("info", "json", out)
    try:
        crash("key")
    except RuntimeError as exc:
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=exc)
    logging.getLogger("aiohttp.access").info("POST %s 200", URL)  # chatter: dropped
    logging.getLogger("aiohttp.client").warning("retrying %s", URL)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["logger"]) for e in lines] == [
        ("error", "asyncio"),
        ("warning", "aiohttp.client"),
    ]
    assert "Traceback (most recent call last)" in lines[0]["exception"]
    assert lines[1]["event"] == "retrying https://hooks.example:8443"
    for secret in (TOKEN, "QUERYSECRET", "user:pw"):
        assert secret not in out.getvalue()
