"""S7 Redis outage and S8 pub/sub gap (scale-out.md §6.4) on one shared 3-node cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import SPEED, running
from tests.cluster.helpers import ended, eventually, hung_up_by_bridge, mid_call, owners_by_node
from voicebridge.sim.cluster import Cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: How long Redis stays down in S7, in call seconds (the doc's 10 s).
OUTAGE_CALL_S = 10.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running("redis-faults", replicas=3) as c:
        yield c


async def test_s7_redis_outage_drops_no_call(
    cluster: Cluster, full_pcm: np.ndarray, short_pcm: np.ndarray
) -> None:
    """S7 (4 calls instead of 6): Redis stops mid-call and comes back empty. No call is
    dropped, calls placed meanwhile are answered, every owner subscribes again to its
    calls' channels, and the hang-ups after the restart still end the calls normally."""
    calls = await cluster.place_calls(4, full_pcm, stagger_s=0.1)
    await owners_by_node(cluster, calls)
    records = await cluster.records()
    channels = {c.correlation_id: f"vb:call:{records[c.correlation_id]['cid']}" for c in calls}
    await mid_call(calls, 2.0)
    await cluster.redis.stop()
    during = await cluster.place_calls(2, short_pcm, stagger_s=0.1)
    await asyncio.sleep(OUTAGE_CALL_S / SPEED)
    await cluster.redis.start()
    for call in during:
        assert call.incoming_call_status == 200
        await asyncio.wait_for(call.answered.wait(), 10)
    live = [channels[c.correlation_id] for c in calls if not c.ended.is_set()]
    assert live, "every call ended during the outage: make the calls longer"
    await eventually(
        lambda: cluster.redis.numsub(live),
        lambda subs: all(n >= 1 for n in subs.values()),
        10,
        "owners subscribed again after the restart",
    )
    outcomes = await ended(cluster, calls + during, 60)
    assert all(o == "caller_hung_up" for o in outcomes.values()), outcomes
    assert not [c for c in calls + during if hung_up_by_bridge(cluster, c)]


async def test_s8_pubsub_gap_is_recovered_by_resync(cluster: Cluster, long_pcm: np.ndarray) -> None:
    """S8: the owner's subscriber connection is killed, and at once the caller hangs up;
    the owner reconnects, re-reads the call's record and ends it as caller_hung_up."""
    await cluster.heal()
    calls = await cluster.place_calls(5, long_pcm, stagger_s=0.1)
    by_node = await owners_by_node(cluster, calls)
    await mid_call(calls, 2.0)
    first = calls[0]
    owner = cluster.nodes[next(n for n, cs in by_node.items() if first in cs)]
    killed = await cluster.redis.kill_pubsub(pids=owner.pids())
    assert killed >= 1
    await first.hang_up()
    outcome = await cluster.wait_outcomes([first], 10)
    assert outcome[first.correlation_id] == "caller_hung_up"
    others = [c for c in by_node[owner.name] if c is not first and not c.ended.is_set()]
    if others:
        records = await cluster.records()
        channels = [f"vb:call:{records[c.correlation_id]['cid']}" for c in others]
        await eventually(
            lambda: cluster.redis.numsub(channels),
            lambda subs: all(n >= 1 for n in subs.values()),
            10,
            "the owner subscribed again",
        )
    outcomes = await ended(cluster, calls, 60)
    assert all(o == "caller_hung_up" for o in outcomes.values()), outcomes
