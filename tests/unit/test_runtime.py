"""Process tuning for `munsit-bridge run`."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bridge.runtime import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_what_exists_and_collects_young_objects_less_often() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 1000  # the modules and objects alive at start-up
