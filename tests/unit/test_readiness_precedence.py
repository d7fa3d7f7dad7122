"""Readiness when several things are wrong at once: a rejected API key is the one reason
about polling (not "no poll yet" or "too old"), and a store error and failing components are
always reported too, in that order."""

from __future__ import annotations

import pytest

from bridge.admin.health import readiness

KEY = "upstream rejected the API key (401)"
WATCHER = "component watcher keeps failing: OSError (see the log)"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"auth_failed": True, "last_success_at": None}, [KEY]),
        ({"auth_failed": True, "last_success_at": 1.0}, [KEY]),
        (
            {"auth_failed": True, "store_error": "database is locked"},
            ["store unreachable: database is locked", KEY],
        ),
        (
            {"store_error": "disk I/O error", "last_success_at": 900.0},
            ["store unreachable: disk I/O error", "last successful poll 100 s ago (limit 90 s)"],
        ),
        (
            {"auth_failed": True, "store_error": "gone", "failing": {"watcher": "OSError: x"}},
            ["store unreachable: gone", WATCHER, KEY],
        ),
        # a component failing makes the service not ready even when polls succeed
        ({"failing": {"watcher": "OSError: x"}}, [WATCHER]),
    ],
)
def test_readiness_precedence(kwargs: dict[str, object], expected: list[str]) -> None:
    args: dict[str, object] = {
        "now": 1000.0,
        "store_error": None,
        "auth_failed": False,
        "last_success_at": 995.0,
        "last_error_kind": "API key rejected (401)" if kwargs.get("auth_failed") else None,
        "interval_s": 30.0,
        **kwargs,
    }
    assert readiness(**args) == expected  # type: ignore[arg-type]
