"""Readiness as a table: store, failing components, API key, poll age; and the kind of a poll
error as `/readyz` names it (never the upstream answer's body)."""

from __future__ import annotations

import pytest

from bridge.admin.health import failing_reason, poll_error_kind, readiness

SECRET = "sk_live_Pl4nted9 https://internal.example/admin?token=Qx7"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, []),
        ({"store_error": "disk I/O error"}, ["store unreachable: disk I/O error"]),
        ({"auth_failed": True}, ["upstream rejected the API key (401)"]),
        ({"last_success_at": None}, ["no successful poll yet"]),
        (
            {"last_success_at": None, "last_error_kind": "upstream unavailable (502)"},
            ["no successful poll yet; last poll failed: upstream unavailable (502)"],
        ),
        ({"last_success_at": 1000.0 - 15}, []),  # exactly 3 intervals: still ready
        ({"last_success_at": 1000.0 - 16}, ["last successful poll 16 s ago (limit 15 s)"]),
        (
            {"last_success_at": 900.0, "last_error_kind": "upstream unavailable (timeout)"},
            [
                "last successful poll 100 s ago (limit 15 s); "
                "last poll failed: upstream unavailable (timeout)"
            ],
        ),
        (
            {"store_error": "locked", "last_success_at": None},
            ["store unreachable: locked", "no successful poll yet"],
        ),
        (
            {"failing": {"poller": "KeyError: 'x'", "dispatcher": "RuntimeError: boom"}},
            [
                "component dispatcher keeps failing: RuntimeError (see the log)",
                "component poller keeps failing: KeyError (see the log)",
            ],
        ),
    ],
)
def test_readiness(kwargs: dict[str, object], expected: list[str]) -> None:
    args: dict[str, object] = {
        "now": 1000.0,
        "store_error": None,
        "auth_failed": False,
        "last_success_at": 995.0,
        "last_error_kind": None,
        "interval_s": 5.0,
        **kwargs,
    }
    assert readiness(**args) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("last_error", "kind"),
    [
        (None, None),
        (f"GET /denoise answered 503: 50300 {SECRET}", "upstream unavailable (503)"),
        (f"GET /denoise answered 429: {SECRET}", "upstream unavailable (429)"),
        (f"GET /denoise answered 418: {SECRET}", "upstream protocol error (418)"),
        (f"GET /denoise answered 401: {SECRET}", "API key rejected (401)"),
        ("GET /denoise timed out after 15 s", "upstream unavailable (timeout)"),
        (
            f"GET /denoise failed: ClientConnectorError: {SECRET}",
            "upstream unavailable (connection failed)",
        ),
        (f"GET /denoise?offset=0 returned malformed JSON: {SECRET}", "upstream protocol error"),
        (
            "GET /denoise?offset=50 answered more than 16,777,216 bytes: refused",
            "upstream protocol error (answer too large)",
        ),
        (f"record at offset 5: field 'id' is missing {SECRET}", "upstream protocol error"),
        (f"store /data/bridge.db: {SECRET}", "store error (see the log)"),
        (f"cannot open store /data/bridge.db: {SECRET}", "store error (see the log)"),
        (
            "database file /data/bridge.db was deleted or replaced while running; …",
            "store error (see the log)",
        ),
        (SECRET, "unexpected error (see the log)"),
        # a body that imitates a status line cannot change the kind
        (
            f"GET /denoise answered 502: GET /denoise answered 401 {SECRET}",
            "upstream unavailable (502)",
        ),
    ],
)
def test_poll_error_kind_names_the_kind_never_the_body(
    last_error: str | None, kind: str | None
) -> None:
    assert poll_error_kind(last_error) == kind
    assert "Pl4nted9" not in str(kind) and "internal.example" not in str(kind)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("RuntimeError: boom", "component poller keeps failing: RuntimeError (see the log)"),
        ("RecursionError", "component poller keeps failing: RecursionError (see the log)"),
        (
            "bridge.errors.StoreError: store gone",
            "component poller keeps failing: bridge.errors.StoreError (see the log)",
        ),
        # a message without an exception type's name in front shows nothing of itself
        (SECRET, "component poller keeps failing (see the log)"),
        ("Sk_live_Pl4nted9: x", "component poller keeps failing (see the log)"),
        ("", "component poller keeps failing (see the log)"),
    ],
)
def test_failing_reason_shows_the_exception_type_only(text: str, reason: str) -> None:
    assert failing_reason("poller", text) == reason
