"""Auth modes, Voice Live that never answers, and the guard against message_creation_failed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from azure.ai.voicelive.aio import connect
from azure.core.credentials import AzureKeyCredential

from tests.e2e.conftest import SPEED, agent_energy
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.simulate import EMULATOR_KEY, SimOptions, run_call

pytestmark = pytest.mark.e2e

AGENT = {
    "voicelive_api_key": None,
    "voicelive_bearer_token": "entra-token-for-tests",
    "voicelive_model": None,
    "agent_name": "support-agent",
    "project_name": "contoso-project",
    "agent_version": "3",
    "conversation_id": "conv_resume_me",
    "foundry_resource_override": "other-foundry",
    "agent_authentication_identity_client_id": "11111111-2222-3333-4444-555555555555",
}


async def test_agent_mode_query_parameters_and_bearer_token(
    tmp_path: Path, short_caller: Path
) -> None:
    result = await run_call(
        SimOptions(caller_audio=short_caller, speed=SPEED, out=tmp_path, settings=AGENT)
    )
    vl = result.report["voicelive"]
    assert vl["auth"] == "bearer"
    assert vl["query"] | {"x-ms-client-sdk": None, "api-version": None} == {
        "agent-name": "support-agent",
        "agent-project-name": "contoso-project",
        "agent-version": "3",
        "conversation-id": "conv_resume_me",
        "foundry-resource-override": "other-foundry",
        "agent-authentication-identity-client-id": "11111111-2222-3333-4444-555555555555",
        "x-ms-client-sdk": None,
        "api-version": None,
    }
    assert vl["conversation_id"] == "conv_resume_me"  # logged, so a later call can resume it
    assert "instructions" not in result.emulator.sessions[-1].received[0]["session"]
    assert result.report["audio"]["conserved"]
    log = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    created = next(r for r in log if r["event"] == "session_created")
    assert created["conversation_id"] == "conv_resume_me"


async def test_model_mode_sends_the_api_key(tmp_path: Path, short_caller: Path) -> None:
    result = await run_call(SimOptions(caller_audio=short_caller, speed=SPEED, out=tmp_path))
    vl = result.report["voicelive"]
    assert vl["auth"] == "api-key" and vl["query"]["model"] == "gpt-realtime"
    assert result.emulator.sessions[-1].headers["api-key"] == "***"  # seen, not stored


async def test_voicelive_never_answering_gives_apology_and_hang_up(
    tmp_path: Path, short_caller: Path
) -> None:
    started = time.monotonic()
    result = await run_call(
        SimOptions(
            caller_audio=short_caller,
            speed=1.0,  # a real-time timeout: nothing else runs in this call
            out=tmp_path,
            settings={"voicelive_connect_timeout_s": 1.0},
            emulator={"never_answer": True},
            timeout_s=20,
        )
    )
    elapsed = time.monotonic() - started
    assert result.report["outcome"] == "apology_hangup"
    assert result.call.end_reason == "bridge_hung_up"
    assert result.report["audio"]["prompt_samples_sent"] > 16000  # the apology, > 1 s
    assert agent_energy(result.call.heard) > 0.0
    assert elapsed < 12, f"took {elapsed:.1f} s"  # timeout 1 s + a ~4 s apology + hang-up


LONG = "Please follow these rules carefully. " * 700  # ~25 KB: over the emulator's 16 KB


async def test_unguarded_oversized_content_reproduces_message_creation_failed() -> None:
    """The failure production users report: an error, a ~5 s stall (short here), a close."""
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, stall_s=0.5)
    await emulator.start()
    try:
        async with connect(
            endpoint=emulator.endpoint,
            credential=AzureKeyCredential(EMULATOR_KEY),
            model="gpt-realtime",
        ) as conn:
            first = await conn.recv()
            assert first.type == "session.created"
            await conn.send({"type": "session.update", "session": {"instructions": LONG}})
            error = await asyncio.wait_for(conn.recv(), 5)
            assert error.type == "error" and error["error"]["code"] == "message_creation_failed"
            t0 = time.monotonic()
            events = [ev async for ev in conn]  # ends when the server closes
            assert events == [] and time.monotonic() - t0 >= 0.4
        await asyncio.wait_for(emulator.sessions[-1].closed.wait(), 2)
        assert emulator.sessions[-1].close_code == 1011
    finally:
        await emulator.stop()


async def test_the_guarded_bridge_survives_the_same_content(
    tmp_path: Path, short_caller: Path
) -> None:
    result = await run_call(
        SimOptions(
            caller_audio=short_caller,
            speed=SPEED,
            out=tmp_path,
            settings={"instructions": LONG, "greeting_mode": "text", "greeting_text": LONG},
            emulator={"stall_s": 0.5},
        )
    )
    report = result.report
    assert report["errors"] == []
    assert report["outcome"] == "caller_hung_up"
    assert report["guard"]["truncated"] == 2  # instructions and greeting, capped at 8 KB
    session = result.emulator.sessions[-1]
    assert len(session.received[0]["session"]["instructions"].encode()) <= 8192
    assert session.close_code != 1011
    assert report["audio"]["conserved"]
