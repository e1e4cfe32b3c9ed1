"""``/api/stats`` describes the process (tasks, descriptors, allocations) for soak tests;
the object census only when the environment allows it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.test_routes import bridge
from voicebridge.routes.health import CENSUS_ENV
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.tools.loadtest import children

__all__ = ["bridge"]  # the fixture, re-used

pytestmark = pytest.mark.e2e


async def test_stats_show_the_process_and_the_census_only_when_enabled(
    bridge: tuple[Any, str, FakeAcs],
) -> None:
    app, base, _ = bridge
    async with httpx.AsyncClient() as client:
        plain = (await client.get(f"{base}/api/stats?objects=1")).json()
        app.state.ctx.settings.stats_census = True  # what VOICEBRIDGE_STATS_CENSUS=1 sets
        full = (await client.get(f"{base}/api/stats?objects=1&trim=1")).json()
    process = plain["process"]
    assert process["tasks"] >= 1 and process["open_fds"] > process["open_sockets"] >= 1
    assert process["allocated_blocks"] > 0 and len(process["gc_counts"]) == 3
    assert "census" not in plain  # the census is off unless the environment says so
    census = full["census"]
    assert census["objects"] > 1000 and census["by_type"]["builtins.dict"] > 100
    assert set(census["retained"]) == {"finished_calls", "ended_ids", "seen_event_ids"}
    assert census["pymalloc"]["arenas"] >= 1 and census["pymalloc"]["allocated_bytes"] > 0
    assert census["heap"]["rss_mb_after"] > 0
    assert children.CENSUS_ENV == CENSUS_ENV  # the load test sets the same variable
