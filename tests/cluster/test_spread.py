"""S1 spread, S2 Event Grid duplicates, S3 callback before media, S10 scale metric, then
S8 pub/sub gap and S7 Redis outage (scale-out.md §6.4), on one shared 3-node cluster:
none of them stops a node (S8 cuts one subscriber; S7, last, restarts Redis empty)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import SPEED, running
from tests.cluster.helpers import (
    answer_requests_for,
    assert_outcomes,
    callback_nodes,
    ended,
    eventually,
    hung_up_by_bridge,
    media_nodes,
    mid_call,
    owners_by_node,
)
from voicebridge.sim.cluster import Cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: How long Redis stays down in S7, in call seconds (the doc's 10 s).
OUTAGE_CALL_S = 10.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running("shared", replicas=3) as c:
        yield c


async def test_s1_calls_spread_over_every_node_and_callbacks_are_forwarded(
    cluster: Cluster, short_pcm: np.ndarray
) -> None:
    """S1 (12 calls instead of 30): every call ends normally and conserved; every node
    owned calls; calls whose answerer is not their owner work; callbacks of one call land
    on several nodes; a CallDisconnected that reached a non-owner still ends the call as
    caller_hung_up (forwarded); the forward latency is measured."""
    calls = await cluster.place_calls(12, short_pcm, stagger_s=0.15)
    outcomes = await ended(cluster, calls, 60)
    reports = await cluster.call_reports(calls)
    assert_outcomes(cluster, outcomes)
    assert all(r["conserved"] and r["audio"]["countable"] for r in reports), [
        r["audio"]["checks"] for r in reports if not r["conserved"]
    ]
    owners = Counter(media_nodes(c)[-1] for c in calls if media_nodes(c))
    assert set(owners) == {"r1", "r2", "r3"}, owners
    elsewhere = [c for c in calls if c.answered_by and c.answered_by != media_nodes(c)[-1]]
    assert len(elsewhere) >= 2, [(c.answered_by, media_nodes(c)) for c in calls]
    spread = [c for c in calls if len(callback_nodes(c)) >= 2]
    assert len(spread) > len(calls) / 2
    forwarded = [
        c
        for c in calls
        if any(
            cb["type"] == "CallDisconnected" and cb["node"] != media_nodes(c)[-1]
            for cb in c.callbacks_by
        )
    ]
    assert forwarded, "no CallDisconnected reached a node other than the call's owner"
    assert all(outcomes[c.correlation_id] == "caller_hung_up" for c in forwarded)


async def test_s1_forward_latency_is_measured(cluster: Cluster, short_pcm: np.ndarray) -> None:
    """S1's last criterion: the nodes measure how long a forwarded callback took to
    reach the owner (scale-out.md §3.9 ``voicebridge_forward_latency_seconds``)."""
    calls = await cluster.place_calls(3, short_pcm, stagger_s=0.1)
    await ended(cluster, calls, 60)
    metrics = [str((await node.get("/metrics"))[1]) for node in cluster.live_nodes()]
    counts = [
        float(line.split()[-1])
        for body in metrics
        for line in body.splitlines()
        if line.startswith("voicebridge_forward_latency_seconds_count")
    ]
    assert len(counts) == len(metrics) and sum(counts) > 0  # forwarded callbacks were timed


async def test_s2_event_grid_retries_answer_each_call_once(
    cluster: Cluster, short_pcm: np.ndarray
) -> None:
    """S2 (6 calls instead of 10): every IncomingCall delivered 3 more times (the
    balancer spreads the retries over the nodes): one answer request per call."""
    calls = []
    for _ in range(6):
        call = await cluster.place_call(short_pcm)
        await cluster.redeliver(call, 3)
        calls.append(call)
    outcomes = await ended(cluster, calls, 60)
    assert answer_requests_for(cluster, calls) == 6
    assert all(len(c.incoming_deliveries) == 4 for c in calls)
    assert all(c.answered.is_set() for c in calls)
    assert_outcomes(cluster, outcomes)


async def test_s3_callback_before_media_refuses_the_socket(
    cluster: Cluster, short_pcm: np.ndarray
) -> None:
    """S3: CallDisconnected arrives before ACS dials the media socket: the upgrade is
    refused with 403 and no Voice Live session is opened for the call."""
    call = await cluster.place_call(short_pcm, faults={"acs-disconnect-before-media": None})
    await cluster.wait_ended([call], 30)
    assert call.media_refused_status == 403
    ids = {call.call_connection_id, call.correlation_id}
    assert not [s for s in cluster.emulator.sessions if s.call_id in ids]


async def test_s10_every_node_serves_the_same_scale_metric(
    cluster: Cluster, long_pcm: np.ndarray
) -> None:
    """S10: with calls live, every node's /api/scale-metric says the same activeCalls;
    it drops to 0 once they end; 401 without or with a wrong bearer token."""
    nodes = cluster.live_nodes()
    for token in ("", "wrong-token"):
        status, _ = await cluster.scale_metric(nodes[0], token=token)
        assert status == 401
    calls = await cluster.place_calls(3, long_pcm, stagger_s=0.1)

    async def metrics() -> list[object]:
        return [(await cluster.scale_metric(n))[1] for n in nodes]

    def all_say(active: int) -> object:
        return lambda seen: all(
            isinstance(m, dict) and m.get("activeCalls") == active for m in seen
        )

    seen = await eventually(metrics, all_say(3), 20, "every node reports 3 active calls")
    for body in seen:
        assert isinstance(body, dict)
        assert body["readyNodes"] == 3 and body["capacity"] >= 3
    await cluster.wait_ended(calls, 60)
    await eventually(metrics, all_say(0), 20, "every node reports 0 active calls")


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
    assert_outcomes(cluster, outcomes)


async def test_s7_redis_outage_drops_no_call(
    cluster: Cluster, full_pcm: np.ndarray, short_pcm: np.ndarray
) -> None:
    """S7 (4 calls instead of 6): Redis stops mid-call and comes back empty. No call is
    dropped, calls placed meanwhile are answered, every owner subscribes again to its
    calls' channels, and the hang-ups after the restart still end the calls normally.
    The callers stay 14 s longer than full_pcm (silent, which earns one re-prompt): the
    calls must outlast the outage and the resubscription by a margin a slow machine keeps."""
    longer = np.concatenate([full_pcm, np.zeros(14 * 16000, dtype=full_pcm.dtype)])
    calls = await cluster.place_calls(4, longer, stagger_s=0.1)
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
    assert_outcomes(cluster, outcomes)
    assert not [c for c in calls + during if hung_up_by_bridge(cluster, c)]
