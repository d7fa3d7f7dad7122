"""What the claims of every store adapter share: the attempt a lost lease counts, and the
log lines that say so. A claim that finds a delivery whose earlier lease ran out with no
outcome (its worker stopped, or took too long) records this attempt for it, so a delivery
that kills its worker every time is dead-lettered instead of looping forever. Also the text
both adapters store as given by others (answers, errors), made storable everywhere."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple, overload

import structlog

from bridge.models import Delivery

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
