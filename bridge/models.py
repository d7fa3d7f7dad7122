"""The bridge's data: Munsit records as fetched, events, deliveries and attempts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bridge.errors import UpstreamProtocolError

PENDING = "pending"
SUCCESS = "success"
FAILED = "failed"
KNOWN_STATUSES = frozenset({PENDING, SUCCESS, FAILED})

CREATED = "denoise.created"
COMPLETED = "denoise.completed"
FAILED_EVENT = "denoise.failed"
PROGRESS = "denoise.progress"
TEST = "bridge.test"
EVENT_TYPES = (CREATED, COMPLETED, FAILED_EVENT, PROGRESS, TEST)
TERMINAL_EVENT = {SUCCESS: COMPLETED, FAILED: FAILED_EVENT}


def iso_utc(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. `2026-11-23T19:00:00.123Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(record_id: str, event_type: str) -> str:
    """`evt_` + a stable digest of (record id, event type): the same everywhere, every time."""
    digest = hashlib.sha256(f"{record_id}\x00{event_type}".encode()).hexdigest()
    return f"evt_{digest[:32]}"


@dataclass(frozen=True, slots=True)
class Record:
    """One Munsit denoise record, kept exactly as fetched (unknown fields included)."""

    id: str
    status: str
    created_at: str
    data: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: object, *, where: str = "record") -> Record:
        """Validate the few fields the bridge relies on; keep the rest untouched."""
        if not isinstance(obj, dict):
            raise UpstreamProtocolError(
                f"{where}: expected a JSON object, got {type(obj).__name__}"
            )
        rid, status, created = obj.get("id"), obj.get("status"), obj.get("created_at")
        if not isinstance(rid, str) or not rid:
            raise UpstreamProtocolError(f"{where}: field 'id' is missing or not a string")
        if not isinstance(status, str):
            raise UpstreamProtocolError(f"{where} {rid}: field 'status' is missing or not a string")
        if not isinstance(created, str):
            raise UpstreamProtocolError(
                f"{where} {rid}: field 'created_at' is missing or not a string"
            )
        return cls(id=rid, status=status, created_at=created, data=obj)


@dataclass(frozen=True, slots=True)
class RecordState:
    """What the store remembers of a record between scans."""

    id: str
    status: str
    created_at: str


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a record, ready to be delivered."""

    id: str
    type: str
    record_id: str
    occurred_at: float
    previous_status: str | None
    data: Mapping[str, Any] = field(repr=False, compare=False)


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    ORPHANED = "orphaned"  # its subscriber is no longer configured: kept, not sent


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one subscriber, as claimed from the outbox."""

    id: int
    event: Event
    subscriber_id: str
    attempts: int
    lease_token: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """The record of one HTTP attempt."""

    attempted_at: float
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: str


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """A delivery as listed for people: its state and attempt history."""

    id: int
    event_id: str
    event_type: str
    subscriber_id: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    history: tuple[Attempt, ...] = ()
    record_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay re-enqueued: how many stored events matched, how many deliveries go again."""

    events: int
    deliveries: int
