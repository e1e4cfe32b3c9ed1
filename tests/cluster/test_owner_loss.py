"""S4a/S4b/S4c (scale-out.md §6.4): the node that owns calls is killed with SIGKILL while
they go on; what happens next depends on what ACS does (re-dial, MediaStreamingFailed,
silence). One shared 3-node cluster; each test starts by bringing killed nodes back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import running
from tests.cluster.helpers import (
    actions_of,
    ended,
    eventually,
    hung_up_by_bridge,
    media_nodes,
    mid_call,
    owners_by_node,
)
from voicebridge.sim.cluster import BridgeNode, Cluster
from voicebridge.sim.fake_acs import FakeCall
from voicebridge.sim.faults import FaultValue

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALLS = 6


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running("owner-loss", replicas=3) as c:
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
    assert all(o == "caller_hung_up" for o in outcomes.values()), outcomes
    for call in mine:
        nodes = media_nodes(call)
        assert nodes[0] == victim.name and nodes[-1] != victim.name, nodes
        assert reports[call.correlation_id]["conversation_kept"] is True
        assert not hung_up_by_bridge(cluster, call), actions_of(cluster, call)
        assert call.end_reason == "caller_hung_up"
        assert reports[call.correlation_id]["conserved"], reports[call.correlation_id]["audio"]
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
    assert all(o == "owner_lost" for o in outcomes.values()), outcomes
    for call in mine:
        assert any(str(uri).endswith("apology.wav") for uri in call.played_files)


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
    assert all(o == "owner_lost" for o in outcomes.values()), outcomes
    others = [c for c in calls if c not in mine]
    other_outcomes = await ended(cluster, others, 60)
    assert all(o == "caller_hung_up" for o in other_outcomes.values()), other_outcomes
