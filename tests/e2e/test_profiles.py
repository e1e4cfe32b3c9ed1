"""Per-number profiles end to end (real SDKs against the fakes): a call to each of two
numbers gets its own profile, seen in the session.update the emulator received."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SPEED
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.simulate import EMULATOR_KEY, fake_acs_settings, running_bridge
from voicebridge.sim.wav import read_wav

pytestmark = pytest.mark.e2e

SALES, SOPORTE, OTHER = "+18005550111", "+18005550120", "+18005550199"

PROFILES = f"""
sales:
  numbers: ["{SALES}"]
  VOICE_NAME: en-US-AndrewMultilingualNeural
  INSTRUCTIONS: You are the sales line of Contoso.
  TRANSCRIPTION_LANGUAGE: en-US
soporte:
  numbers: ["{SOPORTE}"]
  AGENT_NAME: soporte-agent
  PROJECT_NAME: contoso
  VOICELIVE_BEARER_TOKEN: env:SOPORTE_TOKEN
  VOICE_NAME: es-ES-ElviraNeural
  TRANSCRIPTION_LANGUAGE: es-ES
"""


def session_update(session: Any) -> dict[str, Any]:
    for message in session.received:
        if message.get("type") == "session.update":
            return dict(message["session"])
    raise AssertionError(f"no session.update in {session.id}")


async def test_each_number_gets_its_own_profile(
    tmp_path: Path,
    short_caller: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="voicebridge")
    monkeypatch.setenv("SOPORTE_TOKEN", "soporte-entra-token")
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    pcm, _ = read_wav(short_caller)
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=SPEED)
    acs = FakeAcs(speed=SPEED)
    await emulator.start()
    await acs.start()
    try:
        overrides = {
            "voicelive_endpoint": emulator.endpoint,
            "voicelive_api_key": EMULATOR_KEY,
            "voicelive_model": "gpt-realtime",
            "instructions": "You are the default line.",
            "log_dir": str(tmp_path / "logs"),
            "profiles_file": str(profiles),
            **fake_acs_settings(acs),
        }
        async with running_bridge(overrides, speed=SPEED) as (app, base):
            calls = {
                number: await acs.place_call(
                    webhook_url=f"{base}/api/incoming-call",
                    caller_pcm=pcm.tobytes(),
                    recipient=number,
                    call_connection_id=f"conn-{number[1:]}",
                )
                for number in (SALES, SOPORTE, OTHER)
            }
            await asyncio.gather(*(call.wait_ended(60) for call in calls.values()))
            async with httpx.AsyncClient() as client:
                status = (await client.get(f"{base}/api/status")).json()
            finished = list(app.state.ctx.registry.finished)
    finally:
        await acs.stop()
        await emulator.stop()

    by_call = {s.call_id: s for s in emulator.sessions}
    sales = by_call[f"conn-{SALES[1:]}"]
    soporte = by_call[f"conn-{SOPORTE[1:]}"]
    other = by_call[f"conn-{OTHER[1:]}"]

    # sales: model mode with its own voice, instructions and language, the env's key
    update = session_update(sales)
    assert sales.auth == "api-key" and sales.query.get("model") == "gpt-realtime"
    assert update["voice"]["name"] == "en-US-AndrewMultilingualNeural"
    assert update["instructions"] == "You are the sales line of Contoso."
    assert update["input_audio_transcription"]["language"] == "en-US"

    # soporte: an agent (Entra token, no model, no key), its voice and language, no
    # instructions (an agent takes none)
    update = session_update(soporte)
    assert soporte.auth == "bearer" and soporte.query.get("agent-name") == "soporte-agent"
    assert "model" not in soporte.query
    assert update["voice"]["name"] == "es-ES-ElviraNeural"
    assert update["input_audio_transcription"]["language"] == "es-ES"
    assert update["input_audio_transcription"]["model"] == "azure-speech"
    assert "instructions" not in update

    # any other number: the default profile (the environment)
    update = session_update(other)
    assert update["instructions"] == "You are the default line."
    assert update["voice"]["name"] == "en-US-AvaMultilingualNeural"

    # each call names its profile in its summary, conversation log and log lines
    profile_of = {f["call"]: f["profile"] for f in finished}
    assert profile_of == {
        f"conn-{SALES[1:]}": "sales",
        f"conn-{SOPORTE[1:]}": "soporte",
        f"conn-{OTHER[1:]}": "default",
    }
    for log in (tmp_path / "logs").glob("*.jsonl"):
        first = json.loads(log.read_text().splitlines()[0])
        assert first["event"] == "incoming_call" and first["profile"] in profile_of.values()

    stamped = {
        getattr(r, "profile", None) for r in caplog.records if r.name.startswith("voicebridge")
    }
    assert {"sales", "soporte", "default"} <= stamped  # every call's log lines name it

    # /api/status lists the profiles, never a secret
    names = [p["name"] for p in status["profiles"]]
    assert names == ["default", "sales", "soporte"]
    soporte_status = status["profiles"][2]
    assert soporte_status["mode"] == "agent" and soporte_status["auth"] == "bearer"
    assert soporte_status["language"] == "es-ES" and soporte_status["numbers"] == [SOPORTE]
    shown = json.dumps(status)
    assert "soporte-entra-token" not in shown and EMULATOR_KEY not in shown
    for call in calls.values():
        assert call.end_reason == "caller_hung_up", call.end_reason
