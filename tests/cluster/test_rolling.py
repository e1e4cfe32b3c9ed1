"""S6 (scale-out.md §6.4): a rolling deploy that is also step 2 of a key rotation
(docs/deploy.md "Rotating CALL_URL_KEYS"). Revision ``a`` (r1-r3, step 1: signing with k1,
verifying k1 and k2) serves calls; revision ``b`` (r4-r6, step 2: signing with k2,
verifying both) starts in the balancer's spare slots and is enabled through its runtime
API; r1-r3 get SIGTERM (``DRAIN_MODE=migrate``). Both revisions serve for a while, so a
media socket of a call ``b`` answered may reach an ``a`` node: ``a`` must already know k2.
Then a ``b`` node that does not know k1 (r7, step 3 too early) must refuse a URL signed
with it: the rotation order matters."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import running
from tests.cluster.helpers import assert_outcomes, callback_nodes, ended
from voicebridge.sim.cluster import Cluster
from voicebridge.sim.fake_acs import FakeCall

pytestmark = pytest.mark.asyncio(loop_scope="module")

OLD = ("r1", "r2", "r3")
NEW = ("r4", "r5", "r6")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running(
        "rolling", replicas=3, spares=4, drain_mode="migrate", url_keys=("k1", "k2")
    ) as c:
        yield c


def revision_b(cluster: Cluster, *kids: str) -> dict[str, str]:
    return {"CALL_URL_KEYS": cluster.url_keys(*kids), "CONTAINER_APP_REVISION": "b"}


async def test_s6_rolling_deploy_fails_no_call(cluster: Cluster, full_pcm: np.ndarray) -> None:
    """S6 (10 calls instead of 20): calls placed before, during and after the switch all
    end normally; callbacks of calls answered by revision a are handled by b nodes."""
    placing = asyncio.create_task(cluster.place_calls(10, full_pcm, stagger_s=0.5))
    await asyncio.sleep(1.0)
    await asyncio.gather(*(cluster.add_node(revision_b(cluster, "k2", "k1")) for _ in NEW))
    assert sorted(cluster.nodes) == sorted(OLD + NEW)
    for name in OLD:
        cluster.nodes[name].signal(signal.SIGTERM)
    calls = await placing
    outcomes = await ended(cluster, calls, 120)
    assert_outcomes(cluster, outcomes)
    for name in OLD:
        assert await cluster.nodes[name].wait(60) == 0
    answered_by_a = [c for c in calls if c.answered_by in OLD]
    assert any(callback_nodes(c) & set(NEW) for c in answered_by_a)


def callback_body(call: FakeCall) -> str:
    source = f"calling/callConnections/{call.call_connection_id}"
    event = {
        "id": str(uuid.uuid4()),
        "source": source,
        "type": "Microsoft.Communication.ParticipantsUpdated",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": source,
        "data": {
            "callConnectionId": call.call_connection_id,
            "serverCallId": call.server_call_id,
            "correlationId": call.correlation_id,
            "participants": [],
            "sequenceNumber": 99,
        },
    }
    return json.dumps([event])


async def test_s6_a_node_without_the_old_key_refuses_old_urls(
    cluster: Cluster, short_pcm: np.ndarray
) -> None:
    """A callback URL signed with k1 is refused by a node that verifies k2 only, and
    accepted by one that still verifies k1."""
    signed_k1 = [c for c in cluster.calls if c.callback_uri and "/1.k1." in c.callback_uri]
    if signed_k1:  # a call of the deploy above, answered by revision a
        call = signed_k1[0]
    else:  # this test alone: only r1-r3 answer, so the call's URLs use k1
        await cluster.heal()
        new = [name for name in NEW if name in cluster.nodes]
        for name in new:
            await cluster.haproxy.set_server_state(name, "maint")
        call = await cluster.place_call(short_pcm)
        await cluster.wait_ended([call], 60)
        for name in new:
            await cluster.haproxy.set_server_state(name, "ready")
    assert call.callback_uri is not None
    path = urlsplit(call.callback_uri).path
    assert "/1.k1." in path, path
    k2_only = await cluster.add_node(revision_b(cluster, "k2"), enable=False)
    k1_too = next(n for n in cluster.live_nodes() if n.name in NEW + OLD)
    headers = {"Authorization": f"Bearer {cluster.acs.sign_jwt()}"}
    headers["Content-Type"] = "application/json"
    refused, _, _ = await cluster.http(
        "POST", k2_only.url + path, data=callback_body(call), headers=headers
    )
    accepted, _, _ = await cluster.http(
        "POST", k1_too.url + path, data=callback_body(call), headers=headers
    )
    assert refused in (401, 403)
    assert accepted < 400
