"""The protocol audit's findings, each as a whole call against an emulator that enforces
the documented (or inferred) service rule, so the old behaviour fails here.

M1 transcription pairing · M2 agent-owned session fields and no ``model`` with an agent ·
M3 ``cancel_previous`` · §3 a caller on hold is not hung up · protocol_observation lines.
(M4, interim responses, is refused at startup: tests/unit/test_config.py.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SPEED
from voicebridge import observations
from voicebridge.sim.simulate import SimOptions, SimResult, read_wav, run_call, shipped, write_wav

pytestmark = pytest.mark.e2e

AGENT = {
    "voicelive_api_key": None,
    "voicelive_bearer_token": "token",
    "voicelive_model": None,
    "agent_name": "support",
    "project_name": "proj",
}
#: what the emulated agent stores with its configuration
STORED = {
    "voice": {"type": "azure-standard", "name": "en-US-JennyNeural"},
    "turn_detection": {"type": "azure_semantic_vad", "silence_duration_ms": 400},
    "input_audio_transcription": {"model": "azure-speech"},
}


def short_caller(tmp_path: Path, seconds: float = 12.0) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pcm, rate = read_wav(shipped("caller.wav"))
    path = tmp_path / "caller.wav"
    write_wav(path, pcm[: int(seconds * rate)], rate)
    return path


async def call(tmp_path: Path, *faults: str, conserved: bool = True, **kw: Any) -> SimResult:
    """One call; ``conserved=False`` for calls whose sessions are refused (audio sent into
    a session the service then closes is lost with it, as on the real service)."""
    kw.setdefault("caller_audio", short_caller(tmp_path))
    kw.setdefault("speed", SPEED)
    result = await run_call(SimOptions(out=tmp_path, faults=list(faults), **kw))
    if conserved:
        assert result.report["audio"]["conserved"], result.report["audio"]["checks"]
    return result


def errors_sent(result: SimResult) -> list[str]:
    assert result.emulator is not None
    return [e["code"] for s in result.emulator.sessions for e in s.errors_sent]


def transcripts(result: SimResult) -> list[str]:
    assert result.log_path is not None
    return [
        line for line in result.log_path.read_text().splitlines() if '"user_transcript"' in line
    ]


# --------------------------------------------------------------------------- M1


async def test_default_transcription_suits_gpt_realtime(tmp_path: Path) -> None:
    """The shipped default with gpt-realtime is a pairing the service supports: no error,
    and caller transcripts arrive (with azure-speech the emulator refuses and sends none)."""
    result = await call(tmp_path)
    assert result.report["session"]["input_audio_transcription"] == {"model": "whisper-1"}
    assert "unsupported_transcription_model" not in errors_sent(result)
    assert transcripts(result)


# --------------------------------------------------------------------------- M2


async def test_agent_mode_leaves_stored_fields_to_the_agent(tmp_path: Path) -> None:
    result = await call(tmp_path, settings=AGENT, emulator={"agents": {"support": STORED}})
    assert result.report["outcome"] == "caller_hung_up"
    sent = result.report["session"]
    assert not {"voice", "turn_detection", "input_audio_transcription", "instructions"} & set(sent)
    assert sent["input_audio_sampling_rate"] == 24000  # the transport is the bridge's own
    assert "max_config_attempts_exceeded" not in errors_sent(result)
    assert result.report["voicelive"]["query"]["agent-name"] == "support"
    assert transcripts(result)  # the agent's stored transcription applies


async def test_agent_mode_never_sends_model(tmp_path: Path) -> None:
    """VOICELIVE_MODEL left set in agent mode (the .env.example has one): not sent, so the
    emulator, which refuses model with agent-name, accepts the session."""
    result = await call(tmp_path, settings=AGENT | {"voicelive_model": "gpt-realtime"})
    assert result.report["outcome"] == "caller_hung_up"
    assert "model" not in result.report["voicelive"]["query"]
    assert result.report["turns"][0]["first_agent_audio_s"] is not None


async def test_agent_mode_sends_what_the_operator_set(tmp_path: Path) -> None:
    """An operator who sets VOICE_NAME means it: it is sent, and when it contradicts the
    agent's stored voice the service ends the session (max_config_attempts_exceeded)."""
    settings = AGENT | {"voice_name": "en-US-AvaMultilingualNeural"}
    result = await call(
        tmp_path,
        conserved=False,
        settings=settings | {"voicelive_reconnect_budget_s": 1.0},
        emulator={"agents": {"support": STORED}},
    )
    assert result.report["session"]["voice"]["name"] == "en-US-AvaMultilingualNeural"
    assert "max_config_attempts_exceeded" in errors_sent(result)
    assert result.report["outcome"] == "apology_hangup"


async def test_unknown_agent_is_reported(tmp_path: Path) -> None:
    result = await call(
        tmp_path,
        conserved=False,
        settings=AGENT | {"voicelive_reconnect_budget_s": 1.0},
        emulator={"agents": {"sales": STORED}},
    )
    assert "agent_not_found" in errors_sent(result)
    assert result.report["outcome"] == "apology_hangup"


# --------------------------------------------------------------------------- M3


async def test_nudge_cannot_cut_a_server_response_short(tmp_path: Path) -> None:
    """The server schedules its answer when the turn ends but starts it 2.5 s later; the
    bridge's nudge (after 0.3 s without response.created) lands in between. With the
    service's default cancel_previous=true the nudge would cancel the server's response
    and replace it; the bridge sends cancel_previous=false, so it is refused instead."""
    result = await call(
        tmp_path,
        settings={"response_start_timeout_s": 0.3},
        emulator={"response_delay_ms": 2500},
    )
    assert result.emulator is not None
    responses = [r for s in result.emulator.sessions for r in s.responses]
    assert result.report["guard"]["sent_by_type"]["response.create"] >= 2  # greeting + nudge
    assert "conversation_already_has_active_response" in errors_sent(result)
    assert not [r for r in responses if r["reason"] == "client_cancelled"]
    assert not [r for r in responses if r["status"] == "dropped" and r["trigger"] == "turn"]
    assert result.report["turns"][0]["first_agent_audio_s"] is not None


# --------------------------------------------------------------------------- §3: silence and hold


async def test_caller_on_hold_is_not_hung_up(tmp_path: Path) -> None:
    """ACS pauses the stream for 10 s (acs-hold) while the call stays connected: the idle
    limit passes (0.5 s here), Call Automation says the call is connected, the call goes on
    and ends when the caller hangs up (the old bridge hung up: media_idle_timeout)."""
    result = await call(tmp_path, "acs-hold=6", settings={"media_idle_timeout_s": 0.5})
    assert [name for _, name in result.call.faults_fired] == ["acs-hold"]
    assert result.report["outcome"] == "caller_hung_up"
    assert result.call.end_reason == "caller_hung_up"
    lines = result.log_path.read_text()  # type: ignore[union-attr]
    assert '"media_idle"' in lines and '"call_state": "connected"' in lines


# --------------------------------------------------------------------------- observations


async def test_first_call_logs_each_observation_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    observations.reset()
    caplog.set_level(logging.INFO, logger="voicebridge.protocol")
    await call(tmp_path, settings=AGENT)
    await call(tmp_path / "second", settings=AGENT)
    lines = [r.getMessage() for r in caplog.records if r.name == "voicebridge.protocol"]
    facts = [line.split('"fact": "')[1].split('"')[0] for line in lines]
    assert sorted(facts) == sorted(
        {
            "acs_jwt_audience",
            "acs_callback_content_type",
            "agent_conversation_id",
            "acs_inbound_during_playback",
            "acs_silent_frames",
        }
    )
    assert all(line.startswith("protocol_observation {") for line in lines)
    agent = next(line for line in lines if "agent_conversation_id" in line)
    assert '"field": "session.conversation_id"' in agent
    assert "token" not in " ".join(lines).lower()
