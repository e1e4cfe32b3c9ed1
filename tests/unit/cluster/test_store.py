"""The shared call state's scripts on a real redis-server (Lua, first-write-wins,
admission, de-duplication): the rules every node relies on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from voicebridge.cluster.store import CallStore
from voicebridge.sim.cluster import missing_message
from voicebridge.sim.cluster.redis_server import RedisServer

pytestmark = [
    pytest.mark.skipif(missing_message() is not None, reason=str(missing_message())),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(loop_scope="module")
async def store(server: RedisServer) -> AsyncIterator[CallStore]:
    client = server.client()
    await client.flushdb()
    yield CallStore(client, record_ttl_s=60.0)


async def test_a_claim_takes_the_call_with_a_new_generation(store: CallStore) -> None:
    assert (await store.claim("c1", "r1")).refused == "unknown"
    await store.create("c1", {"corr": "x"})
    first = await store.claim("c1", "r1")
    assert (first.gen, first.previous_owner, first.refused) == (1, "", None)
    again = await store.claim("c1", "r2")  # a re-dial that landed elsewhere
    assert (again.gen, again.previous_owner) == (2, "r1")
    record = await store.get("c1")
    assert record is not None and record["owner"] == "r2" and record["state"] == "live"


async def test_the_first_outcome_wins_and_an_ended_call_cannot_be_claimed(
    store: CallStore,
) -> None:
    await store.create("c1", {})
    assert await store.end("c1", "caller_hung_up") == "caller_hung_up"
    assert await store.end("c1", "owner_lost", we_hung_up=True) == "caller_hung_up"
    refused = await store.claim("c1", "r1")
    assert refused.refused == "ended" and refused.previous_owner == "caller_hung_up"
    assert await store.end("gone", "x") == ""  # an unknown call is not created by ending it
    assert await store.get("gone") is None


async def test_a_late_update_does_not_resurrect_a_record(store: CallStore) -> None:
    await store.update("c9", ccid="late")
    assert await store.get("c9") is None


async def test_admission_refuses_only_when_full_and_at_the_node_limit(store: CallStore) -> None:
    assert await store.admit("a", capacity=2, at_max=True)
    assert await store.admit("b", capacity=2, at_max=True)
    assert not await store.admit("c", capacity=2, at_max=True)  # full, no more nodes
    assert await store.admit("c", capacity=2, at_max=False)  # a node is coming
    await store.create("d", {})
    await store.end("a", "caller_hung_up")
    assert await store.redis.zcard("vb:live") == 3  # b, c, d


async def test_event_grid_retries_are_answered_once(store: CallStore) -> None:
    assert await store.first_delivery("ev1", "server-call-1")
    assert not await store.first_delivery("ev1", "server-call-1")  # a retry
    assert not await store.first_delivery("ev2", "server-call-1")  # same call, new event id


async def test_a_lost_record_is_restored_without_overwriting(store: CallStore) -> None:
    await store.restore("c1", {"state": "live", "owner": "r1", "gen": "3"})
    await store.restore("c1", {"state": "answering", "owner": "r9"})
    record = await store.get("c1")
    assert record == {"state": "live", "owner": "r1", "gen": "3"}


async def test_heartbeats_sum_into_the_view(store: CallStore) -> None:
    await store.heartbeat("r1", {"ready": "1", "calls": "2", "cap": "10"}, ["c1"], ttl_s=5)
    await store.heartbeat("r2", {"ready": "0", "calls": "1", "cap": "10"}, [], ttl_s=5)
    view = await store.view(ttl_s=5)
    assert (view.nodes, view.ready_nodes, view.capacity) == (2, 1, 10)
    assert await store.node_alive("r1") and not await store.node_alive("r3")
    assert await store.lock("janitor", "r1", 5) and not await store.lock("janitor", "r2", 5)
    assert await store.lock("janitor", "r1", 5)  # the holder keeps it


async def test_outbound_limits_are_shared_and_given_back(store: CallStore) -> None:
    """Every node takes its outbound calls' slots and rate tokens from the same keys."""
    limits = {"rate_per_min": 60.0, "max_live": 2, "max_profile": None, "stale_after_s": 3600}
    assert await store.outbound_admit("o1", "sales", **limits) == ("ok", 0.0)
    assert await store.outbound_admit("o2", "support", **limits) == ("ok", 0.0)
    assert (await store.outbound_admit("o3", "sales", **limits))[0] == "busy"
    await store.end("o1", "callee_hung_up")  # any node records the end: the slot is free
    assert await store.outbound_admit("o3", "sales", **limits) == ("ok", 0.0)
    per_profile = limits | {"max_live": 10, "max_profile": 1}
    assert (await store.outbound_admit("o4", "sales", **per_profile))[0] == "busy_profile"
    assert await store.outbound_admit("o4", "other", **per_profile) == ("ok", 0.0)


async def test_the_outbound_rate_is_a_token_bucket_and_a_refusal_refunds(
    store: CallStore,
) -> None:
    limits = {"rate_per_min": 2.0, "max_live": 10, "max_profile": None, "stale_after_s": 3600}
    assert (await store.outbound_admit("r1", "p", **limits))[0] == "ok"
    assert (await store.outbound_admit("r2", "p", **limits))[0] == "ok"
    verdict, wait = await store.outbound_admit("r3", "p", **limits)
    assert verdict == "rate" and 25 < wait <= 30  # one token every 30 s
    await store.outbound_release("r2", refund_rate_per_min=2.0)  # refused later on
    assert (await store.outbound_admit("r3", "p", **limits))[0] == "ok"
    await store.outbound_release("never-admitted", refund_rate_per_min=2.0)  # no refund
    assert (await store.outbound_admit("r4", "p", **limits))[0] == "rate"


async def test_a_stale_outbound_slot_is_dropped(store: CallStore) -> None:
    """A slot whose call's end was never recorded (its records expired) frees itself."""
    limits = {"rate_per_min": 60.0, "max_live": 1, "max_profile": None, "stale_after_s": 3600}
    assert (await store.outbound_admit("old", "p", **limits))[0] == "ok"
    assert (await store.outbound_admit("new", "p", **limits))[0] == "busy"
    fresh = limits | {"stale_after_s": -1.0}  # every slot is older than that
    assert (await store.outbound_admit("new", "p", **fresh))[0] == "ok"
