"""The process's own figures: one /proc reader for the bridge and the load test."""

from __future__ import annotations

import os

from voicebridge import diagnostics
from voicebridge.tools.loadtest import procfs


def test_one_memory_reader_for_the_bridge_and_the_load_test() -> None:
    assert procfs.memory_mb is diagnostics.memory_mb
    assert procfs.status is diagnostics.proc_status
    mine, by_pid = diagnostics.memory_mb(), diagnostics.memory_mb(os.getpid())
    assert 0 < mine["rss"] <= mine["hwm"] and by_pid["hwm"] >= mine["hwm"] > 0


def test_trim_heap_reports_rss_before_and_after() -> None:
    heap = diagnostics.trim_heap()
    assert set(heap) == {"trimmed", "rss_mb_before", "rss_mb_after"}
    assert heap["rss_mb_before"] > 0 and heap["rss_mb_after"] > 0


async def test_process_snapshot_is_the_cheap_part() -> None:
    process = diagnostics.process_snapshot()
    assert set(process) == {"tasks", "open_fds", "open_sockets", "allocated_blocks", "gc_counts"}
    assert process["tasks"] >= 1 and process["open_fds"] >= 3 and process["allocated_blocks"] > 0
