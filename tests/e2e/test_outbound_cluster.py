"""Outbound calls with two nodes sharing a real redis-server (REDIS_URL): the
Idempotency-Key holds across nodes (Redis SET NX), the dialling node hands the call to
whichever node gets its media socket (the record carries profile, direction and context),
and any node tells its status and outcome from the record."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SPEED
from voicebridge.core.context import BEGIN
from voicebridge.sim.cluster.redis_server import RedisServer
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.simulate import EMULATOR_KEY, fake_acs_settings, running_bridge
from voicebridge.sim.wav import read_wav

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

KEY = "cluster-outbound-key-0123"
URL_KEYS = "k1:" + base64.b64encode(b"k" * 32).decode()


@pytest.fixture
async def redis_url(tmp_path: Path) -> AsyncIterator[str]:
    """A private redis-server on loopback (the cluster harness's), stopped at the end."""
    server = RedisServer(tmp_path / "redis")
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


@pytest.fixture
async def fakes(short_caller: Path) -> AsyncIterator[tuple[VoiceLiveEmulator, FakeAcs]]:
    """The emulator and the fake ACS, whose callees say ``short_caller``."""
    pcm, _ = read_wav(short_caller)
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=SPEED)
    acs = FakeAcs(speed=SPEED)
    await emulator.start()
    await acs.start()
    acs.callee_audio = pcm.tobytes()
    try:
        yield emulator, acs
    finally:
        await acs.stop()
        await emulator.stop()


@contextlib.asynccontextmanager
async def two_nodes(
    tmp_path: Path, redis_url: str, acs: FakeAcs, emulator: VoiceLiveEmulator, **extra: Any
) -> AsyncIterator[tuple[Any, str, Any, str]]:
    def settings(node: str) -> dict[str, Any]:
        return {
            "voicelive_endpoint": emulator.endpoint,
            "voicelive_api_key": EMULATOR_KEY,
            "voicelive_model": "gpt-realtime",
            "log_dir": str(tmp_path / node),
            "phone_numbers": "+18005550100",
            "outbound_api_keys": KEY,
            "redis_url": redis_url,
            "call_url_keys": URL_KEYS,
            "node_id": node,
            "node_heartbeat_s": 0.5,
            "owner_lost_after_s": 5.0,
            **fake_acs_settings(acs),
            **extra,
        }

    async with (
        running_bridge(settings("node-a"), speed=SPEED) as (app_a, base_a),
        running_bridge(settings("node-b"), speed=SPEED) as (app_b, base_b),
    ):
        yield app_a, base_a, app_b, base_b


async def test_outbound_calls_across_two_nodes(
    tmp_path: Path, redis_url: str, fakes: tuple[VoiceLiveEmulator, FakeAcs]
) -> None:
    emulator, acs = fakes
    acs.expect_outbound("+15551230002", faults={"acs-callee-busy": None})
    headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": "cluster-reminder-1"}
    body = {"to": "+15551230001", "context": {"name": "Ada"}}
    async with (
        two_nodes(tmp_path, redis_url, acs, emulator) as (_a, base_a, _b, base_b),
        httpx.AsyncClient(headers=headers) as client,
    ):
        first = await client.post(f"{base_a}/api/calls", json=body)
        again = await client.post(f"{base_b}/api/calls", json=body)  # another node
        assert first.status_code == again.status_code == 202
        call_id = first.json()["id"]
        assert again.json()["id"] == call_id
        call = await acs.wait_outbound_call(1)
        await call.wait_ended(60)
        busy = await client.post(
            f"{base_b}/api/calls",
            json={"to": "+15551230002"},
            headers={"Idempotency-Key": "cluster-busy-1"},
        )
        busy_call = await acs.wait_outbound_call(2)
        await busy_call.wait_ended(30)
        statuses: dict[str, Any] = {}
        for _ in range(100):  # the record learns the outcome a moment after ACS
            statuses = {
                (node, cid): (await client.get(f"{base}/api/calls/{cid}")).json()
                for node, base in (("a", base_a), ("b", base_b))
                for cid in (call_id, busy.json()["id"])
            }
            if all(s.get("status") == "ended" for s in statuses.values()):
                break
            await asyncio.sleep(0.05)
    assert len(acs.outbound_calls) == 2  # the repeated request dialled nothing
    for node in ("a", "b"):
        assert statuses[(node, call_id)]["outcome"] == "callee_hung_up", statuses
        busy_status = statuses[(node, busy.json()["id"])]
        assert busy_status["outcome"] == "busy" and busy_status["failure"].startswith("486/")
    # the node that ran the media rebuilt the call from its record: the context arrived
    update = next(m for s in emulator.sessions for m in s.received if m["type"] == "session.update")
    assert BEGIN in update["session"]["instructions"]
    assert "name: Ada" in update["session"]["instructions"]


async def test_the_outbound_limits_count_every_nodes_calls(
    tmp_path: Path, redis_url: str, fakes: tuple[VoiceLiveEmulator, FakeAcs]
) -> None:
    """OUTBOUND_MAX_CONCURRENT=1 with two nodes: while node a's call is in progress node
    b refuses (429, nothing dialled); once it has ended, node b dials."""
    emulator, acs = fakes
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        two_nodes(tmp_path, redis_url, acs, emulator, outbound_max_concurrent=1) as (
            _a,
            base_a,
            _b,
            base_b,
        ),
        httpx.AsyncClient(headers=headers) as client,
    ):
        first = await client.post(f"{base_a}/api/calls", json={"to": "+15551230001"})
        assert first.status_code == 202
        refused = await client.post(f"{base_b}/api/calls", json={"to": "+15551230002"})
        assert refused.status_code == 429 and "on all nodes" in refused.json()["error"]
        call = await acs.wait_outbound_call(1)
        await call.wait_ended(60)
        assert [c.target for c in acs.outbound_calls] == ["+15551230001"]  # b: nothing
        for _ in range(100):  # the slot is given back when the end is recorded
            second = await client.post(f"{base_b}/api/calls", json={"to": "+15551230002"})
            if second.status_code == 202:
                break
            await asyncio.sleep(0.05)
        assert second.status_code == 202, second.text
        await (await acs.wait_outbound_call(2)).wait_ended(60)
        assert [c.target for c in acs.outbound_calls] == ["+15551230001", "+15551230002"]
