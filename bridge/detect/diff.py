"""The pure heart of detection: previous state + fetched rows → changes and events."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bridge.models import (
    CREATED,
    TERMINAL_EVENT,
    Event,
    Record,
    RecordState,
    event_id,
)


@dataclass(frozen=True, slots=True)
class Change:
    """A record that is new or whose status moved, and the event types that follow from it."""

    record: Record
    previous_status: str | None  # None: first seen in this scan
    event_types: tuple[str, ...]

    @property
    def state(self) -> RecordState:
        return RecordState(self.record.id, self.record.status, self.record.created_at)


def diff(
    previous: Mapping[str, RecordState],
    rows: Sequence[Record],
    *,
    announce: Callable[[Record], bool],
) -> list[Change]:
    """Changes of `rows` (newest first, unique ids) against `previous`, oldest record first.

    A first sighting emits `created` and, if already terminal, the terminal event — unless
    `announce` says the record predates the baseline, when it is remembered silently. A known
    record emits the terminal event of the status it moved to.
    """
    changes: list[Change] = []
    for record in reversed(rows):
        known = previous.get(record.id)
        if known is None:
            types: tuple[str, ...] = ()
            if announce(record):
                terminal = TERMINAL_EVENT.get(record.status)
                types = (CREATED, terminal) if terminal else (CREATED,)
            changes.append(Change(record, None, types))
        elif known.status != record.status:
            terminal = TERMINAL_EVENT.get(record.status)
            changes.append(Change(record, known.status, (terminal,) if terminal else ()))
    return changes


def build_events(changes: Sequence[Change], *, now: float) -> list[Event]:
    """The events of `changes`, in order, with their deterministic ids."""
    return [
        Event(
            id=event_id(change.record.id, event_type),
            type=event_type,
            record_id=change.record.id,
            occurred_at=now,
            previous_status=None if event_type == CREATED else change.previous_status,
            data=change.record.data,
        )
        for change in changes
        for event_type in change.event_types
    ]
