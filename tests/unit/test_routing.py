"""Subscriber event filters: exact types and globs."""

from __future__ import annotations

import pytest

from bridge.config import SubscriberConfig
from bridge.deliver.routing import route, wants
from tests.conftest import make_secret


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (["denoise.completed"], "denoise.completed", True),
        (["denoise.completed"], "denoise.failed", False),
        (["denoise.*"], "denoise.created", True),
        (["denoise.*"], "denoise.failed", True),
        (["denoise.*"], "denoise.progress", False),  # progress only when listed exactly
        (["denoise.progress"], "denoise.progress", True),
        (["*"], "bridge.test", False),
        (["bridge.test"], "bridge.test", True),
        (["*.failed"], "denoise.failed", True),
        (["denoise.c*"], "denoise.completed", True),
        (["denoise.c*"], "denoise.failed", False),
    ],
)
def test_wants(patterns: list[str], event_type: str, expected: bool) -> None:
    assert wants(patterns, event_type) is expected


def test_route_picks_matching_subscribers_in_order() -> None:
    def sub(sid: str, events: list[str], enabled: bool = True) -> SubscriberConfig:
        return SubscriberConfig(
            id=sid, url="https://e.example/h", secret=make_secret(), events=events, enabled=enabled
        )

    subs = [sub("a", ["denoise.*"]), sub("b", ["denoise.failed"]), sub("c", ["denoise.*"], False)]
    assert route("denoise.completed", subs) == ["a", "c"]
    assert route("denoise.failed", subs) == ["a", "b", "c"]
    assert route("denoise.progress", subs) == []
