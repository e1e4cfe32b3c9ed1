"""Nodes going away under live calls (scale-out.md §6.4), on one shared 3-node cluster;
each test starts by bringing stopped nodes back:

* S4a/S4b/S4c: the node that owns calls is killed with SIGKILL; what happens next depends
  on what ACS does (re-dial, MediaStreamingFailed, silence);
* S5a/S5b: scale-in, SIGTERM to r3 while it owns calls, with ``DRAIN_MODE=wait`` then
  ``migrate`` (r3 is started again between the two with the other drain mode)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import running
from tests.cluster.helpers import (
    actions_of,
    assert_outcomes,
    ended,
    eventually,
    hung_up_by_bridge,
    media_nodes,
    mid_call,
    owners_by_node,
    requests_of,
)
from voicebridge.sim.cluster import BridgeNode, Cluster
from voicebridge.sim.fake_acs import FakeCall
from voicebridge.sim.faults import FaultValue

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALLS = 6
#: The node S5a/S5b drain (the doc's r3).
VICTIM = "r3"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running("node-loss", replicas=3) as c:
        yield c


async def kill_busiest_owner(
    cluster: Cluster, pcm: np.ndarray, faults: dict[str, FaultValue]
) -> tuple[BridgeNode, list[FakeCall], list[FakeCall]]:
    """Place :data:`CALLS` calls with ``faults``; once they are mid-call, SIGKILL the node
    owning most of them. ``(victim, its calls, every call)``."""
    await cluster.heal()
    calls = await cluster.place_calls(CALLS, pcm, stagger_s=0.1, faults=faults)
    await mid_call(calls, 3.0)
    by_node = await owners_by_node(cluster, calls)
    name = max(by_node, key=lambda n: len(by_node[n]))
    victim = cluster.nodes[name]
    victim.kill()
    assert await victim.wait(10) == -9
    return victim, by_node[name], calls


async def test_s4a_owner_killed_and_acs_redials_calls_go_on_elsewhere(
    cluster: Cluster, long_pcm: np.ndarray
) -> None:
    """S4a: ACS re-dials the dropped media socket; the balancer sends it to a live node,
    which takes the call over with its conversation; nobody hangs up."""
    victim, mine, calls = await kill_busiest_owner(cluster, long_pcm, {"acs-redial-on-drop": None})
    outcomes = await ended(cluster, calls, 60)
    reports = {
        r["correlation_id"]: r for r in await cluster.call_reports(calls, killed=[victim.name])
    }
    assert_outcomes(cluster, outcomes)
    for call in mine:
        nodes = media_nodes(call)
        assert nodes[0] == victim.name and nodes[-1] != victim.name, nodes
        assert reports[call.correlation_id]["conversation_kept"] is True
        assert not hung_up_by_bridge(cluster, call), actions_of(cluster, call)
        assert call.end_reason == "caller_hung_up"
        audio = reports[call.correlation_id]["audio"]
        assert reports[call.correlation_id]["conserved"], (audio["checks"], audio)
    # The gap each caller had is recorded, not asserted (it depends on the machine's speed).
    print({c.correlation_id[:8]: reports[c.correlation_id]["media_gaps_s"] for c in mine})


async def test_s4b_owner_killed_and_media_failed_posted_plays_the_apology(
    cluster: Cluster, long_pcm: np.ndarray
) -> None:
    """S4b: ACS does not re-dial but posts MediaStreamingFailed; a live node finds the
    owner dead, plays the apology and hangs up; outcome owner_lost."""
    _victim, mine, _calls = await kill_busiest_owner(cluster, long_pcm, {})

    async def played_then_ended() -> list[list[str]]:
        return [actions_of(cluster, c) for c in mine]

    def ok(seen: list[list[str]]) -> bool:
        return all(
            "play" in acts and any(a in ("hangup", "terminate") for a in acts[acts.index("play") :])
            for acts in seen
        )

    await eventually(played_then_ended, ok, 20, "apology then hang-up for every call")
    outcomes = await ended(cluster, mine, 30)
    assert_outcomes(cluster, outcomes, ("owner_lost",))
    for call in mine:
        assert any(str(uri).endswith("apology.wav") for uri in call.played_files), (
            call.play_failures,
            [(t, w, d) for t, w, d in call.timeline if "play" in w or "end" in w],
            [
                (r["method"], r["path"].rsplit("/", 1)[-1], r["status"])
                for r in requests_of(cluster, call)
            ],
        )


async def test_s4c_owner_killed_and_acs_silent_the_janitor_ends_the_calls(
    cluster: Cluster, long_pcm: np.ndarray
) -> None:
    """S4c: ACS says nothing after the drop; the janitor finds the owner's heartbeat
    gone, checks the call with ACS (media inactive) and ends it; outcome owner_lost."""
    _victim, mine, calls = await kill_busiest_owner(cluster, long_pcm, {"acs-silent-on-drop": None})

    async def actions() -> list[list[str]]:
        return [actions_of(cluster, c) for c in mine]

    seen = await eventually(
        actions,
        lambda seen: all(any(a in ("hangup", "terminate") for a in acts) for acts in seen),
        45,
        "the janitor hangs up every call of the dead owner",
    )
    for acts in seen:
        end = min(i for i, a in enumerate(acts) if a in ("hangup", "terminate"))
        assert "get" in acts[:end], acts  # ACS asked before acting
    outcomes = await ended(cluster, mine, 30)
    assert_outcomes(cluster, outcomes, ("owner_lost",))
    others = [c for c in calls if c not in mine]
    other_outcomes = await ended(cluster, others, 60)
    assert_outcomes(cluster, other_outcomes)


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
    on r3; r3 exits by itself; no call failed. An IncomingCall that reaches r3 while it
    drains (an ingress that has not noticed yet) is answered there, and the call runs on
    another node."""
    await cluster.heal(env={VICTIM: {"DRAIN_MODE": "wait"}})
    victim = cluster.nodes[VICTIM]
    mine, calls = await calls_on_victim(cluster, full_pcm)
    victim.signal(signal.SIGTERM)
    await cluster.haproxy.wait_status(VICTIM, ("DOWN", "MAINT", "DRAIN"), 10)
    straight = await cluster.place_call(short_pcm, via=victim)
    assert straight.incoming_deliveries == [{"node": VICTIM, "status": 200, "answering": 1}]
    before = (await cluster.haproxy.show_stat())[VICTIM]["stot"]
    late = [straight, *await cluster.place_calls(3, short_pcm, stagger_s=0.1)]
    outcomes = await ended(cluster, calls + late, 90)
    assert (await cluster.haproxy.show_stat())[VICTIM]["stot"] == before  # nothing new
    assert_outcomes(cluster, outcomes)
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
    assert_outcomes(cluster, outcomes)
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
