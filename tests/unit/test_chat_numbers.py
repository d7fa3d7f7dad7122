"""Chat formats show a record's numbers whatever upstream put in them: a value that is not a
finite number (beyond any float, infinite, NaN, a bool, text) is shown as a dash, and the
message still renders."""

from __future__ import annotations

import json

import pytest

from bridge.deliver.chat_formats import duration, size
from bridge.deliver.formats import render
from bridge.models import Event

ODD = [10**400, -(10**400), float("inf"), float("nan"), True, "12", None, [1]]


@pytest.mark.parametrize("value", ODD, ids=repr)
def test_odd_numbers_show_as_a_dash(value: object) -> None:
    assert duration(value) == "—" and size(value) == "—"


@pytest.mark.parametrize(
    ("value", "shown"), [(12.5, ("12.5 s", "12 B")), (400_044, ("6667:24", "400.0 KB"))]
)
def test_numbers_still_show(value: float, shown: tuple[str, str]) -> None:
    assert (duration(value), size(value)) == shown


@pytest.mark.parametrize("fmt", ["slack", "discord", "teams"])
def test_a_record_with_a_number_beyond_any_float_renders(fmt: str) -> None:
    data = {"id": "r1", "status": "success", "audio_size": 10**400, "audio_duration": 10**400}
    event = Event("evt_1", "denoise.completed", "r1", 1_700_000_000.0, "pending", data)
    assert json.loads(render(event, fmt))
