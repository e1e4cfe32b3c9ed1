"""Outbound calls and per-number profiles on a 3-node cluster behind HAProxy: a call
requested through the balancer may have its createCall, callbacks and media socket on
different nodes; the node that runs the media rebuilds the call from its record (profile,
direction, context); every node answers GET /api/calls/{id}; an Idempotency-Key dials once
whichever node the repeat reaches; an inbound call to a profile's number gets that profile
on whichever node runs it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import running
from tests.cluster.helpers import callback_nodes, eventually, media_nodes
from voicebridge.core.context import BEGIN
from voicebridge.sim.cluster import Cluster
from voicebridge.sim.fake_acs import NODE_HEADER

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "cluster-outbound-key-0123456789"
PROFILES = """
default:
  numbers: ["+18005550100"]
ventas:
  numbers: ["+18005550120"]
  VOICE_NAME: es-ES-ElviraNeural
  TRANSCRIPTION_LANGUAGE: es-ES
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    profiles = Path(tmp_path_factory.mktemp("profiles")) / "profiles.yaml"
    profiles.write_text(PROFILES)
    env = {"OUTBOUND_API_KEYS": KEY, "PROFILES_FILE": str(profiles)}
    async with running("outbound", replicas=3, env=env) as c:
        yield c


async def post(cluster: Cluster, body: dict[str, Any], key: str) -> tuple[int, Any, str]:
    """POST /api/calls through the balancer: (status, answer, the node that answered)."""
    headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": key}
    status, text, got = await cluster.http(
        "POST", f"{cluster.url}/api/calls", json=body, headers=headers
    )
    return status, json.loads(text), {k.lower(): v for k, v in got.items()}.get(NODE_HEADER, "")


async def statuses(cluster: Cluster, call_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {KEY}"}
    out = {}
    for node in cluster.live_nodes():
        status, body, _ = await node.get(f"/api/calls/{call_id}", headers=headers)
        out[node.name] = body if status == 200 else status
    return out


async def test_outbound_calls_through_the_balancer(cluster: Cluster, short_pcm: np.ndarray) -> None:
    cluster.acs.callee_audio = short_pcm.tobytes()
    body = {"to": "+15551230001", "profile": "ventas", "context": {"name": "Ada"}}
    first = [await post(cluster, body, "reminder-42") for _ in range(3)]  # round robin
    assert {s for s, _, _ in first} == {202}
    assert len({node for _, _, node in first}) >= 2, first  # the repeats reached other nodes
    call_id = first[0][1]["id"]
    assert all(answer["id"] == call_id for _, answer, _ in first)
    call = await cluster.acs.wait_outbound_call(1)
    await call.wait_ended(60)

    def ended(seen: dict[str, Any]) -> bool:
        return all(isinstance(s, dict) and s["status"] == "ended" for s in seen.values())

    seen = await eventually(lambda: statuses(cluster, call_id), ended, 20, "ended everywhere")
    assert {s["outcome"] for s in seen.values()} == {"callee_hung_up"}, seen
    assert {s["profile"] for s in seen.values()} == {"ventas"}
    assert len(cluster.acs.outbound_calls) == 1  # the repeats dialled nothing
    assert media_nodes(call) and callback_nodes(call)
    update = next(
        m["session"]
        for s in cluster.emulator.sessions
        for m in s.received
        if m["type"] == "session.update" and BEGIN in str(m["session"].get("instructions"))
    )
    assert "name: Ada" in update["instructions"]
    assert update["voice"]["name"] == "es-ES-ElviraNeural"
    assert update["input_audio_transcription"]["language"] == "es-ES"


async def test_an_inbound_call_to_a_profile_number_gets_it_on_any_node(
    cluster: Cluster, short_pcm: np.ndarray
) -> None:
    before = len(cluster.emulator.sessions)
    call = await cluster.acs.place_call(
        webhook_url=cluster.webhook, caller_pcm=short_pcm.tobytes(), recipient="+18005550120"
    )
    cluster.calls.append(call)
    await call.wait_ended(60)
    sessions = cluster.emulator.sessions[before:]
    updates = [m["session"] for s in sessions for m in s.received if m["type"] == "session.update"]
    assert updates and all(u["voice"]["name"] == "es-ES-ElviraNeural" for u in updates)
