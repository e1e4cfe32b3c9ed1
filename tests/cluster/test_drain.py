"""S5a/S5b (scale-out.md §6.4): scale-in, SIGTERM to r3 while it owns calls, with
``DRAIN_MODE=wait`` then ``migrate``. One shared 3-node cluster; r3 is started again
between the two with the other drain mode."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import running
from tests.cluster.helpers import (
    actions_of,
    ended,
    hung_up_by_bridge,
    media_nodes,
    mid_call,
    owners_by_node,
)
from voicebridge.sim.cluster import Cluster
from voicebridge.sim.fake_acs import FakeCall

pytestmark = pytest.mark.asyncio(loop_scope="module")

VICTIM = "r3"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running("drain", replicas=3, node_env={VICTIM: {"DRAIN_MODE": "wait"}}) as c:
        yield c


async def calls_on_victim(
    cluster: Cluster, pcm: np.ndarray
) -> tuple[list[FakeCall], list[FakeCall]]:
    """Place calls until r3 owns at least one (6, then up to 6 more); once they are
    mid-call: ``(r3's calls, every call)``."""
    calls: list[FakeCall] = []
    mine: list[FakeCall] = []
    for batch in (6, 3, 3):
        calls += await cluster.place_calls(batch, pcm, stagger_s=0.1)
        mine = (await owners_by_node(cluster, calls)).get(VICTIM, [])
        if mine:
            break
    assert mine, "r3 owned none of 12 calls"
    await mid_call(calls, 2.0)
    return mine, calls


async def test_s5a_drain_wait_lets_the_calls_finish(
    cluster: Cluster, full_pcm: np.ndarray, short_pcm: np.ndarray
) -> None:
    """S5a: the balancer marks r3 DOWN and sends it nothing new; r3's calls end normally
    on r3; r3 exits by itself; no call failed."""
    await cluster.heal(env={VICTIM: {"DRAIN_MODE": "wait"}})
    victim = cluster.nodes[VICTIM]
    mine, calls = await calls_on_victim(cluster, full_pcm)
    victim.signal(signal.SIGTERM)
    await cluster.haproxy.wait_status(VICTIM, ("DOWN", "MAINT", "DRAIN"), 10)
    before = (await cluster.haproxy.show_stat())[VICTIM]["stot"]
    late = await cluster.place_calls(3, short_pcm, stagger_s=0.1)
    outcomes = await ended(cluster, calls + late, 90)
    assert (await cluster.haproxy.show_stat())[VICTIM]["stot"] == before  # nothing new
    assert all(o == "caller_hung_up" for o in outcomes.values()), outcomes
    for call in mine:
        assert media_nodes(call) == [VICTIM]  # waited, not moved
    for call in late:
        assert VICTIM not in media_nodes(call)
    assert await victim.wait(60) == 0


async def test_s5b_drain_migrate_moves_the_calls(cluster: Cluster, full_pcm: np.ndarray) -> None:
    """S5b: each of r3's calls sees stopMediaStreaming then startMediaStreaming, a new
    socket on r1 or r2 (r3 logs ``moved``), and goes on; nobody hangs up; r3 exits once
    its calls have moved."""
    victim = cluster.nodes[VICTIM]
    await victim.stop()  # whatever S5a left of it (drained, or still draining)
    await cluster.heal(env={VICTIM: {"DRAIN_MODE": "migrate"}})
    mine, calls = await calls_on_victim(cluster, full_pcm)
    victim.signal(signal.SIGTERM)
    settle = float(victim.env.get("DRAIN_ROUTE_SETTLE_S", "2"))
    deadline = float(victim.env.get("DRAIN_MIGRATE_DEADLINE_S", "10"))
    assert await victim.wait(settle + deadline + 30) == 0
    outcomes = await ended(cluster, calls, 90)
    assert all(o == "caller_hung_up" for o in outcomes.values()), outcomes
    segments = cluster.segments()
    for call in mine:
        acts = actions_of(cluster, call)
        assert "stopMediaStreaming" in acts, acts
        assert "startMediaStreaming" in acts[acts.index("stopMediaStreaming") :], acts
        nodes = media_nodes(call)
        assert nodes[0] == VICTIM and nodes[-1] in ("r1", "r2"), nodes
        on_victim = [s for s in segments[call.correlation_id] if s["node"] == VICTIM]
        assert [s["outcome"] for s in on_victim] == ["moved"], on_victim
        assert not hung_up_by_bridge(cluster, call) and call.end_reason == "caller_hung_up"
    reports = await cluster.call_reports(mine)
    assert all(r["conserved"] for r in reports), [r["audio"]["checks"] for r in reports]
    print({r["correlation_id"][:8]: r["media_gaps_s"] for r in reports})
