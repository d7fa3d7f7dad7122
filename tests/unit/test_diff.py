"""The pure diff: previous state + fetched rows → changes and events."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.detect.diff import build_events, diff
from bridge.models import Record, RecordState, event_id


def rec(rid: str, status: str, created: str = "2026-01-01T00:00:00.000Z", **extra: Any) -> Record:
    data = {"id": rid, "status": status, "created_at": created, **extra}
    return Record(rid, status, created, data)


def state(rid: str, status: str) -> RecordState:
    return RecordState(rid, status, "2026-01-01T00:00:00.000Z")


@pytest.mark.parametrize(
    ("previous", "row", "announce", "expected"),
    [
        # baseline without backfill: remembered silently whatever the status
        (None, "pending", False, ()),
        (None, "success", False, ()),
        # first sighting after baseline (or with backfill)
        (None, "pending", True, ("denoise.created",)),
        (None, "success", True, ("denoise.created", "denoise.completed")),
        (None, "failed", True, ("denoise.created", "denoise.failed")),
        (None, "queued", True, ("denoise.created",)),
        # known records
        ("pending", "success", True, ("denoise.completed",)),
        ("pending", "failed", True, ("denoise.failed",)),
        ("success", "failed", True, ("denoise.failed",)),
        ("failed", "success", True, ("denoise.completed",)),
        ("pending", "queued", True, ()),
        ("queued", "success", True, ("denoise.completed",)),
    ],
)
def test_diff_table(
    previous: str | None, row: str, announce: bool, expected: tuple[str, ...]
) -> None:
    prev = {"r1": state("r1", previous)} if previous else {}
    changes = diff(prev, [rec("r1", row)], announce=lambda _: announce)
    assert len(changes) == 1
    assert changes[0].event_types == expected
    assert changes[0].previous_status == previous
    assert changes[0].state == RecordState("r1", row, "2026-01-01T00:00:00.000Z")


@pytest.mark.parametrize("status", ["pending", "success", "failed", "weird"])
def test_unchanged_known_record_is_no_change(status: str) -> None:
    assert diff({"r1": state("r1", status)}, [rec("r1", status)], announce=lambda _: True) == []


def test_changes_come_oldest_record_first() -> None:
    rows = [
        rec("new", "success", "2026-01-03"),
        rec("mid", "pending", "2026-01-02"),
        rec("old", "success", "2026-01-01"),
    ]
    prev = {"old": state("old", "pending")}
    changes = diff(prev, rows, announce=lambda _: True)
    assert [c.record.id for c in changes] == ["old", "mid", "new"]


def test_events_have_deterministic_ids_and_carry_the_record() -> None:
    row = rec("r1", "failed", error="Could not decode audio stream", extra_field=1)
    changes = diff({"r1": state("r1", "pending")}, [row], announce=lambda _: True)
    [event] = build_events(changes, now=1_700_000_000.5)
    assert event.id == event_id("r1", "denoise.failed")
    assert event.id.startswith("evt_") and "." not in event.id
    assert event.previous_status == "pending"
    assert event.data["error"] == "Could not decode audio stream"
    assert event.data["extra_field"] == 1
    assert event.occurred_at == 1_700_000_000.5


def test_created_event_has_no_previous_status_and_terminal_first_sighting_neither() -> None:
    events = build_events(diff({}, [rec("r9", "success")], announce=lambda _: True), now=1.0)
    assert [(e.type, e.previous_status) for e in events] == [
        ("denoise.created", None),
        ("denoise.completed", None),
    ]


def test_event_id_differs_by_type_and_record() -> None:
    ids = {event_id(r, t) for r in ("a", "b") for t in ("denoise.created", "denoise.completed")}
    assert len(ids) == 4
    assert event_id("a", "denoise.created") == event_id("a", "denoise.created")


def test_announcer_uses_the_baseline_mark_and_its_ties() -> None:
    from bridge.detect.poller import announcer

    mark = "2026-01-01T00:00:05.000Z"
    new = announcer(mark, ["base"], backfill=False)
    assert not new(rec("old", "success", "2026-01-01T00:00:04.999Z"))
    assert not new(rec("base", "success", mark))
    assert new(rec("twin", "success", mark))  # created in the same millisecond, after baseline
    assert new(rec("later", "pending", "2026-01-01T00:00:05.001Z"))
    assert announcer(mark, [], backfill=True)(rec("old", "success", "2020-01-01T00:00:00.000Z"))
