"""``voicebridge serve`` helpers that need no socket."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from voicebridge import server


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_start_up_objects_and_enlarges_the_young_generation() -> None:
    _, gen1, gen2 = gc.get_threshold()
    survivor = [object()]  # a container start-up left behind
    gc.collect()
    server.tune_gc()
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for o in gc.get_objects())  # out of the collector's sight
    assert gc.get_threshold() == (server.GC_GEN0_THRESHOLD, gen1, gen2)
