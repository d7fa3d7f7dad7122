"""Readiness: a pure judgement of what the service knows about itself."""

from __future__ import annotations

READY_POLL_INTERVALS = 3


def readiness(
    *,
    now: float,
    store_error: str | None,
    auth_failed: bool,
    last_success_at: float | None,
    last_error: str | None,
    interval_s: float,
) -> list[str]:
    """Why the service is not ready (an empty list: it is). Ready means the store answers,
    the API key works and a poll succeeded within the last `READY_POLL_INTERVALS` intervals."""
    reasons: list[str] = []
    if store_error is not None:
        reasons.append(f"store unreachable: {store_error}")
    if auth_failed:
        reasons.append(f"upstream rejected the API key (401): {last_error}")
        return reasons
    limit = READY_POLL_INTERVALS * interval_s
    if last_success_at is None:
        reasons.append(
            "no successful poll yet" + (f"; last poll failed: {last_error}" if last_error else "")
        )
    elif now - last_success_at > limit:
        age = now - last_success_at
        reasons.append(
            f"last successful poll {age:.0f} s ago (limit {limit:.0f} s)"
            + (f"; last poll failed: {last_error}" if last_error else "")
        )
    return reasons
