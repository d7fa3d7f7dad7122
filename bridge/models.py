"""The bridge's data: Munsit records as fetched, events, deliveries and attempts."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

PENDING = "pending"
SUCCESS = "success"
FAILED = "failed"
KNOWN_STATUSES = frozenset({PENDING, SUCCESS, FAILED})

DEFAULT_ACCOUNT = "default"  # the one account `[upstream]` is, without `[[accounts]]`
# A record's key in the store, in events and in `job:` targets: the Munsit id for the
# `default` account (so its keys and event ids are what they were before accounts existed),
# `<account>/<Munsit id>` for any other. Munsit ids never hold a `/` (`id_problem`).
ACCOUNT_SEP = "/"
JOB_TARGET = "job:"  # a gateway callback's target id: `job:<record id>`

CREATED = "denoise.created"
COMPLETED = "denoise.completed"
FAILED_EVENT = "denoise.failed"
PROGRESS = "denoise.progress"
TEST = "bridge.test"
SUBSCRIBER_DISABLED = "bridge.subscriber_disabled"  # the bridge disabled an endpoint
DEAD_LETTERED = "bridge.delivery_dead_lettered"  # a delivery failed for good
REPORTS = (SUBSCRIBER_DISABLED, DEAD_LETTERED)  # the bridge's reports on itself
EVENT_TYPES = (CREATED, COMPLETED, FAILED_EVENT, PROGRESS, TEST, *REPORTS)
TERMINAL_EVENT = {SUCCESS: COMPLETED, FAILED: FAILED_EVENT}


def record_key(account: str, munsit_id: str) -> str:
    """The key of Munsit record `munsit_id` of `account` (see `ACCOUNT_SEP`)."""
    return munsit_id if account == DEFAULT_ACCOUNT else f"{account}{ACCOUNT_SEP}{munsit_id}"


def split_key(key: str) -> tuple[str, str]:
    """(account, Munsit id) of a record key."""
    account, sep, munsit_id = key.partition(ACCOUNT_SEP)
    return (account, munsit_id) if sep else (DEFAULT_ACCOUNT, key)


def iso_utc(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. `2026-11-23T19:00:00.123Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(record_id: str, event_type: str) -> str:
    """`evt_` + a stable digest of (record id, event type): the same everywhere, every time."""
    digest = hashlib.sha256(f"{record_id}\x00{event_type}".encode()).hexdigest()
    return f"evt_{digest[:32]}"


MAX_ID_CHARS = 256
MAX_STATUS_CHARS = 64
# what Munsit writes (`2026-11-23T19:00:00.123Z`); creation times are compared as text
_ISO_TIME = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)?", re.ASCII
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _json_kind(value: object) -> str:
    """The JSON name of a parsed value's type (`object`, `array`, `number`, …)."""
    return _JSON_KINDS.get(type(value), "number")


def id_problem(rid: object) -> str | None:
    """Why `rid` cannot be a record id, or None."""
    if not isinstance(rid, str) or not rid:
        return "field 'id' is missing or not a string"
    if len(rid) > MAX_ID_CHARS:
        return f"field 'id' is longer than {MAX_ID_CHARS} characters"
    if _CONTROL.search(rid):
        return "field 'id' holds control characters"
    if ACCOUNT_SEP in rid:
        return f"field 'id' holds {ACCOUNT_SEP!r} (Munsit ids never do)"
    return None


def record_problem(obj: object) -> str | None:
    """Why `obj` cannot be a record, judging the fields the bridge relies on; None if it can.

    `id` names the record in the store, in event ids and in URLs; `status` is diffed;
    `created_at` is compared with the baseline mark and the scan's stop rule as text, so it
    must be a timestamp in Munsit's format, not any string.
    """
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {_json_kind(obj)}"
    status, created = obj.get("status"), obj.get("created_at")
    if (problem := id_problem(obj.get("id"))) is not None:
        return problem
    if not isinstance(status, str):
        return "field 'status' is missing or not a string"
    if len(status) > MAX_STATUS_CHARS:
        return f"field 'status' is longer than {MAX_STATUS_CHARS} characters"
    if _CONTROL.search(status):
        return "field 'status' holds control characters"
    if not isinstance(created, str):
        return "field 'created_at' is missing or not a string"
    if not _ISO_TIME.fullmatch(created):
        return "field 'created_at' is not an ISO 8601 time"
    return None


@dataclass(frozen=True, slots=True)
class Record:
    """One Munsit denoise record, kept exactly as fetched (unknown fields included); made by
    `upstream.parse` from what passes `record_problem`."""

    id: str
    status: str
    created_at: str
    data: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An item of a list answer that was skipped: it cannot be stored or delivered as sent."""

    position: int  # in the whole list: the page's offset plus its index in the answer
    label: str  # its id, printable (escapes for what is not), cut short; "" when it has none
    record_id: str | None  # its id when that can be stored: the scan counts the record as seen
    reason: str
    key: str  # the same for the same record and reason, poll after poll: it is reported once


class Page(list[Record]):
    """The readable records of one list answer, in order. `size` counts every item of the
    answer, quarantined ones too: the next page starts after them."""

    __slots__ = ("quarantined", "size")

    def __init__(
        self,
        records: Iterable[Record] = (),
        *,
        size: int | None = None,
        quarantined: Sequence[Quarantined] = (),
    ) -> None:
        super().__init__(records)
        self.size = len(self) if size is None else size
        self.quarantined = tuple(quarantined)


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

    @property
    def account(self) -> str | None:
        """The Munsit account a `denoise.*` event comes from; None for the bridge's own."""
        return split_key(self.record_id)[0] if self.type.startswith("denoise.") else None


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
    schedule_from: int = 0  # `attempts` when its retry schedule last (re)started


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
    """What a replay re-enqueued: how many stored events matched, how many deliveries go again,
    and why the others did not: events no (chosen) subscriber's `events` match, deliveries
    that were pending already (left as they are)."""

    events: int
    deliveries: int
    unmatched: int = 0
    already_pending: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries an operator means: every field left None matches all. `since` and
    `until` bound when the delivery was queued (unix seconds, `until` excluded)."""

    state: DeliveryState | None = None
    subscriber: str | None = None
    event_type: str | None = None
    record_id: str | None = None  # exact
    since: float | None = None
    until: float | None = None


ALL_DELIVERIES = DeliveryFilter()


@dataclass(frozen=True, slots=True)
class Report:
    """An event the bridge stores about itself (a `bridge.*` report), with the subscribers
    it goes to; written in the same transaction as the change it reports."""

    event: Event
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Callback:
    """Where a gateway client wants to hear about one of its jobs: the callback URL, the
    event types it asked for and its metadata (a JSON object, echoed in every callback)."""

    url: str
    events: tuple[str, ...]
    metadata: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Job:
    """A job submitted through the gateway: whose it is, its callback (None: the client
    asked for none), when it was submitted, and the Munsit record as last seen (None until a
    poll or the submission saw it)."""

    record_id: str
    client_id: str
    submitted_at: float
    callback_id: str | None = None
    callback: Callback | None = None
    record: Mapping[str, Any] | None = field(default=None, compare=False)
