"""The node's janitor on a real redis-server: which stale records are orphans, and that a
dead node's calls are ended together, not one after another."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from voicebridge.cluster.node import ORPHANS_AT_ONCE, OUTBOUND_RING_GRACE_S, ClusterNode
from voicebridge.config import Settings
from voicebridge.sim.cluster import missing_message
from voicebridge.sim.cluster.redis_server import RedisServer

pytestmark = [
    pytest.mark.skipif(missing_message() is not None, reason=str(missing_message())),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(loop_scope="module")
async def node(server: RedisServer) -> AsyncIterator[ClusterNode]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint="http://127.0.0.1:9",
        voicelive_api_key="k",
        voicelive_model="gpt-realtime",
        acs_connection_string="endpoint=http://127.0.0.1:9/;accesskey=eA==",
        public_base_url="http://127.0.0.1:9",
        acs_jwt_validation=False,
        redis_url=server.url,
        call_url_keys="k1:" + base64.b64encode(b"k" * 32).decode(),
    )
    node = ClusterNode(settings)
    await node.redis.flushdb()
    try:
        yield node
    finally:
        await node.stop()


async def test_the_janitor_lets_an_outbound_call_ring(node: ClusterNode) -> None:
    """A record with no owner is an orphan after 60 s when answered, but an outbound
    call's may still be ringing: it gets OUTBOUND_RING_GRACE_S."""
    orphans: list[str] = []

    async def orphan(cid: str, record: dict[str, str]) -> None:
        orphans.append(cid)

    node.orphan = orphan
    now = time.time()
    ages = {"in-100": ("", 100), "out-100": ("outbound", 100)}
    ages["out-late"] = ("outbound", OUTBOUND_RING_GRACE_S + 10)
    for cid, (direction, age) in ages.items():
        fields = {"answered_at": str(now - age)} | ({"dir": direction} if direction else {})
        await node.store.create(cid, fields)
        await node._inspect(cid)
    await asyncio.gather(*node.orphans.values())
    assert orphans == ["in-100", "out-late"]


async def test_a_dead_nodes_calls_are_ended_together(node: ClusterNode) -> None:
    """Each orphan takes an apology's length to end; a dead node's calls are all in hand
    at once (up to ORPHANS_AT_ONCE), and a call already being ended is not taken twice."""
    calls = [f"dead-{i}" for i in range(12)]
    assert len(calls) <= ORPHANS_AT_ONCE
    in_hand: set[str] = set()
    all_in_hand = asyncio.Event()
    ended: list[str] = []

    async def orphan(cid: str, record: dict[str, str]) -> None:
        in_hand.add(cid)
        if in_hand == set(calls):
            all_in_hand.set()
        await all_in_hand.wait()  # one at a time, the first would wait for ever
        ended.append(cid)

    async def janitor_rounds() -> None:
        for cid in calls:
            await node.store.create(cid, {"owner": "gone-node", "state": "live"})
            await node._inspect(cid)
            await node._inspect(cid)  # the next janitor round, while the first still runs
        await asyncio.gather(*node.orphans.values())

    node.orphan = orphan
    await asyncio.wait_for(janitor_rounds(), 10)
    assert sorted(ended) == sorted(calls)
    assert node.counts["janitor"] == len(calls)
