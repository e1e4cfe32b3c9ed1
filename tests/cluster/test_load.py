"""S12 (scale-out.md §6.4): the load test's 12 calls through HAProxy and 3 nodes
(``voicebridge loadtest --calls 12 --replicas 3``). Nothing may be lost and no call may
fail; relay p99, Redis commands and forwarded callbacks are recorded, not asserted (they
depend on the machine: compare with a run without ``--replicas`` in the same sitting)."""

from __future__ import annotations

import json

import pytest

from tests.cluster.conftest import SPEED
from voicebridge.tools.loadtest.cluster import run_cluster_load
from voicebridge.tools.loadtest.options import LoadOptions

pytestmark = pytest.mark.asyncio


async def test_s12_twelve_calls_through_the_balancer_lose_nothing() -> None:
    options = LoadOptions(calls=12, seconds=6.0, speed=SPEED, pin=False, replicas=3)
    report = await run_cluster_load(options)
    cluster = report["cluster"]
    print(
        json.dumps(
            {
                "inbound_p99_ms": report["inbound_latency_ms"].get("p99"),
                "outbound_p99_ms": report["outbound_latency_ms"].get("p99"),
                "merged": cluster["relay_p99_ms_merged"],
                "redis_ops_per_s": cluster["redis_ops_per_s"],
                "forwarded_total": cluster["forwarded_total"],
            }
        )
    )
    assert report["frames_lost"] == 0 and report["samples_lost"] == 0
    assert report["calls_failed"] == 0, report["failures"]
    assert report["calls_not_conserved"] == 0
    assert len(cluster["nodes"]) == 3
    assert all(n["balancer_sessions"] for n in cluster["nodes"])
