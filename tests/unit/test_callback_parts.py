"""The callbacks' pure parts: which lane a target goes through, the lane's cap, the body."""

from __future__ import annotations

from bridge.deliver.formats import callback_body, render_callback, standard_body
from bridge.deliver.lanes import JOB_LANE, callback_cap, lane_of
from bridge.models import COMPLETED, Event


def test_job_targets_share_the_callbacks_lane() -> None:
    assert lane_of("job:abc") == JOB_LANE == "job:"
    assert lane_of("rx") == "rx"


def test_callbacks_get_half_of_max_in_flight_at_least_one() -> None:
    assert [callback_cap(n) for n in (1, 2, 3, 4, 100)] == [1, 1, 1, 2, 50]


def test_the_callback_body_is_the_standard_body_plus_metadata() -> None:
    event = Event("evt_1", COMPLETED, "r1", 1_700_000_000.5, "pending", {"id": "r1", "x": [1]})
    assert callback_body(event, {"a": 1}) == {**standard_body(event), "metadata": {"a": 1}}
    assert callback_body(event, None)["metadata"] is None
    text = render_callback(event, {"é": "ü"})
    assert text.startswith('{"id":"evt_1","type":"denoise.completed"')
    assert text.endswith(',"metadata":{"é":"ü"}}')
