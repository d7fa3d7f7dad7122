"""What the claims of every store adapter share: the attempt a lost lease counts, and the
log lines that say so. A claim that finds a delivery whose earlier lease ran out with no
outcome (its worker stopped, or took too long) records this attempt for it, so a delivery
that kills its worker every time is dead-lettered instead of looping forever. Also the text
both adapters store as given by others (answers, errors), made storable everywhere."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, overload

import structlog

from bridge.models import Attempt, Delivery, Report

log = structlog.get_logger("bridge.store")

# the attempt a claim records for a delivery whose earlier lease ran out with no outcome
LOST_ATTEMPT = "no outcome recorded: the worker stopped or its lease expired mid-attempt"

REPLACEMENT = "\ufffd"
# what a text column cannot hold: NUL (PostgreSQL's text refuses it) and lone surrogates
# (no UTF-8 encoding: the driver refuses them before the database sees them)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@overload
def storable(text: str) -> str: ...
@overload
def storable(text: None) -> None: ...
def storable(text: str | None) -> str | None:
    """`text` with each character no text column can hold (NUL, a lone surrogate) replaced
    by U+FFFD: a webhook's answer or an error quoting one is recorded, not refused."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    return _UNSTORABLE.sub(REPLACEMENT, text)


class Lost(NamedTuple):
    """A claimed delivery whose lease ran out with no outcome: counted as an attempt."""

    delivery_id: int
    subscriber_id: str
    event_id: str
    attempt: int  # its number
    dead: bool  # that was the last one: dead-lettered


class Claimed(NamedTuple):
    deliveries: list[Delivery]
    lost: list[Lost]
    # the reports of the deliveries the claim dead-lettered, each with its lost attempt's
    # time, for the caller to store in the claim's transaction (PostgreSQL's claims)
    reports: Sequence[tuple[Report, float]] = ()


# what a claim asks of a delivery it dead-letters (its lease ran out with no outcome, and
# that was its last attempt): the report to store with it, in the claim's transaction (a
# pure function; None: nothing to report, e.g. a delivery of a `bridge.*` event)
OnDead = Callable[[Delivery, Attempt], Report | None]


def lost_attempt(lease_until: float) -> Attempt:
    """The attempt a claim records for a delivery whose lease ran out at `lease_until`."""
    return Attempt(lease_until, None, 0.0, LOST_ATTEMPT, "")


def log_lost(lost: Sequence[Lost]) -> None:
    """A line per delivery a claim found with no outcome, as the dispatcher logs attempts."""
    for item in lost:
        fields = {
            "event_id": item.event_id,
            "subscriber": item.subscriber_id,
            "attempt": item.attempt,
            "error": LOST_ATTEMPT,
        }
        if item.dead:
            log.error("delivery failed for good (dead-lettered)", **fields)
        else:
            log.warning("delivery attempt failed, will retry", **fields)
