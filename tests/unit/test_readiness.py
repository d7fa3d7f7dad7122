"""Readiness as a table: store, API key, poll age."""

from __future__ import annotations

import pytest

from bridge.admin.health import readiness


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, []),
        ({"store_error": "disk I/O error"}, ["store unreachable: disk I/O error"]),
        (
            {"auth_failed": True, "last_error": "API key rejected"},
            ["upstream rejected the API key (401): API key rejected"],
        ),
        ({"last_success_at": None}, ["no successful poll yet"]),
        (
            {"last_success_at": None, "last_error": "GET /denoise answered 502"},
            ["no successful poll yet; last poll failed: GET /denoise answered 502"],
        ),
        ({"last_success_at": 1000.0 - 15}, []),  # exactly 3 intervals: still ready
        ({"last_success_at": 1000.0 - 16}, ["last successful poll 16 s ago (limit 15 s)"]),
        (
            {"last_success_at": 900.0, "last_error": "timed out"},
            ["last successful poll 100 s ago (limit 15 s); last poll failed: timed out"],
        ),
        (
            {"store_error": "locked", "last_success_at": None},
            ["store unreachable: locked", "no successful poll yet"],
        ),
    ],
)
def test_readiness(kwargs: dict[str, object], expected: list[str]) -> None:
    args: dict[str, object] = {
        "now": 1000.0,
        "store_error": None,
        "auth_failed": False,
        "last_success_at": 995.0,
        "last_error": None,
        "interval_s": 5.0,
        **kwargs,
    }
    assert readiness(**args) == expected  # type: ignore[arg-type]
