"""The emulator's server: the upgrade (path, auth, refusals), stopping, keepalive pings and
close codes."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import websockets
from azure.ai.voicelive.aio import ConnectionClosed, connect
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.ai.voicelive.models import (
    ServerEventSessionCreated,
)
from websockets.asyncio.client import connect as ws_connect

from tests.unit.sim.emulator.client import (
    KEY,
    Factory,
    FakeTokenCredential,
    only_session,
    update,
    vl_connect,
)
from voicebridge.sim.emulator import (
    connection,
)


async def test_upgrade_without_valid_credentials_is_rejected_with_401(emulators: Factory) -> None:
    emulator = await emulators()
    with pytest.raises(VoiceLiveConnectionError) as info:
        async with vl_connect(emulator, key="wrong-key"):
            pass
    assert getattr(info.value.__cause__, "status", None) == 401
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?api-version=x"
    with pytest.raises(websockets.InvalidStatus) as raw:
        async with ws_connect(url):
            pass
    assert raw.value.response.status_code == 401
    assert emulator.rejected == 2 and emulator.sessions == []


async def test_bearer_token_is_accepted_and_agent_query_parameters_are_echoed(
    emulators: Factory,
) -> None:
    emulator = await emulators()
    params = {
        "agent_name": "support-bot",
        "project_name": "contoso-proj",
        "agent_version": "7",
        "conversation_id": "conv_given",
        "authentication_identity_client_id": "client-123",
        "foundry_resource_override": "other-res",
    }
    async with connect(
        credential=FakeTokenCredential(), endpoint=emulator.endpoint, **params
    ) as conn:
        created = await conn.recv()
    assert isinstance(created, ServerEventSessionCreated)
    agent = created.session.agent
    assert agent is not None
    assert (agent.name, agent.agent_id, agent.thread_id) == (
        "support-bot",
        "support-bot:7",
        "conv_given",
    )
    assert agent["project_name"] == "contoso-proj"
    assert agent["authentication_identity_client_id"] == "client-123"
    assert agent["foundry_resource_override"] == "other-res"
    assert created.session.id and created.session.id.startswith("sess_")
    assert created.session.expires_at is not None
    session = only_session(emulator)
    assert session.auth == "bearer"
    assert session.headers["authorization"] == "***"
    assert session.query["agent-name"] == "support-bot"
    assert session.query["conversation-id"] == "conv_given"
    assert session.conversation_id == "conv_given" and not session.resumed


async def test_model_with_agent_parameters_is_refused(emulators: Factory) -> None:
    emulator = await emulators(speed=20)
    with pytest.raises(Exception) as info:
        async with connect(
            credential=FakeTokenCredential(),
            endpoint=emulator.endpoint,
            agent_name="bot",
            project_name="proj",
            model="gpt-realtime",
        ):
            pass
    assert "400" in repr(info.value) + repr(info.value.__cause__)
    assert emulator.sessions == [] and emulator.rejected == 1


async def test_stop_closes_open_sessions(emulators: Factory) -> None:
    emulator = await emulators()
    async with vl_connect(emulator) as conn:
        await update(conn)
        stopping = asyncio.create_task(emulator.stop())  # waits for the closing handshake,
        with pytest.raises(ConnectionClosed) as closed:  # which the client does as it reads
            await conn.recv()
        await stopping
    assert closed.value.code == 1001
    assert only_session(emulator).closed.is_set()


async def test_never_answer_lets_the_handshake_time_out(emulators: Factory) -> None:
    emulator = await emulators(never_answer=True)
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime"
    with pytest.raises(TimeoutError):
        async with ws_connect(url, open_timeout=0.2, additional_headers={"api-key": KEY}):
            pass
    assert emulator.sessions == []


async def test_keepalive_pings_and_closes_1011_without_pongs(
    emulators: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "KEEPALIVE_S", 0.1)
    emulator = await emulators()
    url = emulator.endpoint + "/voice-live/realtime?model=m"
    async with aiohttp.ClientSession() as http:
        # answers pings (aiohttp's default): stays open
        async with http.ws_connect(url, headers={"api-key": KEY}) as ws:

            async def read() -> None:
                async for _message in ws:  # answers pings as it reads
                    pass

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.5)
            assert not ws.closed
            await ws.close()
            await reader
        # does not answer: closed with 1011 within two keepalive periods
        async with http.ws_connect(url, headers={"api-key": KEY}, autoping=False) as ws:
            kinds = []
            async with asyncio.timeout(2):
                while (message := await ws.receive()).type is not aiohttp.WSMsgType.CLOSE:
                    kinds.append(message.type)
            assert aiohttp.WSMsgType.PING in kinds
            assert (message.data, message.extra) == (1011, "keepalive ping timeout")
    answered, silent = emulator.sessions
    await asyncio.wait_for(silent.closed.wait(), 5)
    assert silent.close_code == 1011
    await asyncio.wait_for(answered.closed.wait(), 5)
    assert answered.close_code == 1000


async def test_a_dropped_connection_closes_1006(emulators: Factory) -> None:
    emulator = await emulators()
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?model=m"
    async with ws_connect(url, additional_headers={"api-key": KEY}) as ws:
        await ws.recv()
        ws.transport.abort()
    session = emulator.sessions[0]
    await asyncio.wait_for(session.closed.wait(), 5)
    assert session.close_code == 1006
