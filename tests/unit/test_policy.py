"""Retry policy: success classification, the schedule, jitter bounds, dead-lettering, and
what an answer does to an endpoint's health."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bridge.deliver.policy import decide, health_after, is_success, retry_delay_s
from bridge.models import DeliveryState
from bridge.store.base import SubscriberHealth

SCHEDULE = [5.0, 300.0, 1800.0]


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        (200, True),
        (201, True),
        (204, True),
        (299, True),
        (None, False),
        (199, False),
        (301, False),
        (302, False),
        (400, False),
        (404, False),
        (500, False),
        (503, False),
    ],
)
def test_success_is_2xx_only(code: int | None, ok: bool) -> None:
    assert is_success(code) is ok


@pytest.mark.parametrize(
    ("attempts", "rand", "expected"),
    [
        (1, 0.5, 5.0),
        (2, 0.5, 300.0),
        (3, 0.5, 1800.0),
        (1, 0.0, 4.0),
        (1, 1.0, 6.0),
        (3, 0.0, 1440.0),
        (4, 0.5, None),
        (0, 0.5, None),
    ],
)
def test_retry_delay_follows_schedule_with_jitter(
    attempts: int, rand: float, expected: float | None
) -> None:
    assert retry_delay_s(attempts, SCHEDULE, 0.2, lambda: rand) == expected


def test_decide_success_failure_and_dead_letter() -> None:
    ok = decide(200, attempts_done=1, now=100.0, schedule_s=SCHEDULE, jitter=0.2)
    assert ok.state is DeliveryState.DELIVERED and ok.next_attempt_at is None
    retry = decide(500, attempts_done=1, now=100.0, schedule_s=SCHEDULE, jitter=0.0)
    assert retry.state is DeliveryState.PENDING and retry.next_attempt_at == 105.0
    timeout = decide(None, attempts_done=2, now=100.0, schedule_s=SCHEDULE, jitter=0.0)
    assert timeout.next_attempt_at == 400.0
    dead = decide(500, attempts_done=4, now=100.0, schedule_s=SCHEDULE, jitter=0.0)
    assert dead.state is DeliveryState.FAILED and dead.next_attempt_at is None
    redirect = decide(302, attempts_done=1, now=0.0, schedule_s=SCHEDULE, jitter=0.0)
    assert redirect.state is DeliveryState.PENDING


@pytest.mark.parametrize(
    ("code", "retry_after", "expected_delay"),
    [
        (429, 120.0, 120.0),  # longer than the schedule: honoured
        (503, 600.0, 600.0),
        (429, 2.0, 5.0),  # shorter: the schedule wins
        (429, 7200.0, 3600.0),  # capped at an hour
        (500, 120.0, 5.0),  # only 429 and 503 carry a meaningful Retry-After
        (429, None, 5.0),
    ],
)
def test_retry_after_on_429_and_503(
    code: int, retry_after: float | None, expected_delay: float
) -> None:
    outcome = decide(
        code, attempts_done=1, now=0.0, schedule_s=SCHEDULE, jitter=0.0, retry_after_s=retry_after
    )
    assert outcome.next_attempt_at == expected_delay


def test_retry_after_never_revives_an_exhausted_delivery() -> None:
    outcome = decide(
        429, attempts_done=4, now=0.0, schedule_s=SCHEDULE, jitter=0.0, retry_after_s=10.0
    )
    assert outcome.state is DeliveryState.FAILED


@pytest.mark.parametrize(
    ("code", "failing_for", "expected"),
    [
        (410, 0.0, "the endpoint answered 410 Gone"),
        (500, 99.0, None),
        (500, 100.0, "failing continuously for 100 s (delivery.disable_after_s)"),
        (None, 250.0, "failing continuously for 250 s (delivery.disable_after_s)"),
        (404, 0.0, None),
    ],
)
def test_disable_reason(code: int | None, failing_for: float, expected: str | None) -> None:
    from bridge.deliver.policy import disable_reason

    assert disable_reason(code, failing_for_s=failing_for, limit_s=100.0) == expected


GONE = "the endpoint answered 410 Gone"
HEALTHY = SubscriberHealth()
FAILING = SubscriberHealth(failing_since=50.0)
PAUSED = SubscriberHealth(disabled_at=10.0, reason="disabled through the admin API")


@pytest.mark.parametrize(
    ("before", "code", "after"),
    [
        (HEALTHY, 200, HEALTHY),
        (FAILING, 204, HEALTHY),
        (HEALTHY, 500, SubscriberHealth(failing_since=120.0)),
        (FAILING, None, FAILING),  # 70 s of failure, under the 100 s limit
        (
            SubscriberHealth(failing_since=20.0),
            500,
            SubscriberHealth(
                failing_since=20.0,
                disabled_at=120.0,
                reason="failing continuously for 100 s (delivery.disable_after_s)",
            ),
        ),
        (HEALTHY, 410, SubscriberHealth(failing_since=120.0, disabled_at=120.0, reason=GONE)),
        # an operator's pause keeps its reason; a success clears only the failure run
        (
            PAUSED,
            410,
            SubscriberHealth(failing_since=120.0, disabled_at=10.0, reason=PAUSED.reason),
        ),
        (replace(PAUSED, failing_since=1.0), 200, PAUSED),
    ],
)
def test_health_after_an_answer(
    before: SubscriberHealth, code: int | None, after: SubscriberHealth
) -> None:
    assert health_after(before, code, now=120.0, limit_s=100.0) == after
