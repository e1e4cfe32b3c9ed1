"""ServiceStats: the process-wide histograms the bridge measures itself with."""

from __future__ import annotations

import asyncio
import gc

from voicebridge.stats import ServiceStats


async def test_gc_pauses_are_measured_while_the_loop_is_watched() -> None:
    stats = ServiceStats()
    watcher = asyncio.create_task(stats.loop.watch(interval_s=0.001))
    await asyncio.sleep(0.01)
    gc.collect()
    gc.collect()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    pauses = stats.snapshot(0)["gc_pause_ms"]
    assert pauses["count"] >= 2 and pauses["max"] > 0.0
    assert stats.loop.loop_lag_ms.count > 0
    # Stopped watching: the callback is gone, later collections are not counted.
    assert stats.loop._on_gc not in gc.callbacks
    gc.collect()
    assert stats.snapshot(0)["gc_pause_ms"]["count"] == pauses["count"]
