"""Opening a Voice Live session with the real SDK against the local emulator (loopback)."""

from __future__ import annotations

import asyncio
import base64
import json

from azure.core.credentials import AzureKeyCredential

from voicebridge.config import Settings
from voicebridge.core.voicelive import append_json, input_audio_append, session_update
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.voicelive.session import (
    connect_kwargs,
    open_session,
    sdk_sender,
    session_config,
    text_sender,
)

KEY = "emulator-key"


def settings_for(emulator: VoiceLiveEmulator) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint=emulator.endpoint,
        voicelive_model="gpt-realtime",
        voicelive_api_key=KEY,
        acs_connection_string="endpoint=https://acs.communication.azure.com/;accesskey=eA==",
        public_base_url="https://bridge.example.com",
        acs_jwt_validation=False,
    )


async def test_appends_go_as_prebuilt_text_through_the_sdk_socket_and_arrive_whole() -> None:
    """The installed SDK exposes its aiohttp socket, so messages skip its re-encoding
    (if an SDK upgrade breaks this, they still go through send(), but slower: this
    test is the alarm). The emulator must receive every sample either way."""
    emulator = VoiceLiveEmulator(api_key=KEY)
    await emulator.start("127.0.0.1", 0)
    try:
        s = settings_for(emulator)
        session = await open_session(s, AzureKeyCredential(KEY), call_id="t1")
        try:
            conn = session.connection
            fast = text_sender(conn)
            assert fast is not None, "SDK socket not found: appends lose the fast path"
            assert session.send_text == fast
            assert json.loads(await conn.recv_bytes())["type"] == "session.created"
            await conn.send(session_update({"input_audio_sampling_rate": 24000}))
            assert json.loads(await conn.recv_bytes())["type"] == "session.updated"
            pcm = bytes(range(256)) * 15  # 3840 bytes = 1920 samples
            b64 = base64.b64encode(pcm).decode()
            await session.send_text(append_json(b64))
            await conn.send(input_audio_append(b64))  # the SDK path, for comparison
            await sdk_sender(conn)(append_json(b64))  # the fallback without the socket
            for _ in range(100):
                if emulator.sessions[0].input_samples >= 3 * 1920:
                    break
                await asyncio.sleep(0.01)
            received = emulator.sessions[0]
            assert received.input_samples == 3 * 1920
            assert received.received_types["input_audio_buffer.append"] == 3
        finally:
            await session.close()
    finally:
        await emulator.stop()


def test_text_sender_is_none_for_an_object_without_the_sdk_socket() -> None:
    assert text_sender(object()) is None


def agent_settings(**extra: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint="https://res.services.ai.azure.com",
        voicelive_model="gpt-realtime",  # left over from model mode: must not be sent
        agent_name="support",
        project_name="proj",
        acs_connection_string="endpoint=https://acs.communication.azure.com/;accesskey=eA==",
        public_base_url="https://bridge.example.com",
        acs_jwt_validation=False,
        **extra,
    )


def test_agent_mode_sends_only_what_the_operator_set() -> None:
    """The agent's stored configuration owns voice, VAD, noise, echo and transcription
    (audit M2): with nothing set, only the audio transport goes out."""
    config = session_config(agent_settings())
    assert set(config) == {
        "modalities",
        "input_audio_format",
        "input_audio_sampling_rate",
        "output_audio_format",
    }
    config = session_config(agent_settings(voice_name="en-US-JennyNeural", echo_cancellation=False))
    assert config["voice"] == {"type": "azure-standard", "name": "en-US-JennyNeural"}
    assert config["input_audio_echo_cancellation"] is None  # explicitly off
    assert "turn_detection" not in config and "input_audio_transcription" not in config


def test_agent_mode_never_sends_model() -> None:
    kwargs = connect_kwargs(agent_settings())
    assert "model" not in kwargs and kwargs["agent_name"] == "support"


def test_model_mode_sends_the_whole_configuration() -> None:
    s = agent_settings().model_copy(update={"agent_name": None, "project_name": None})
    config = session_config(s)
    assert config["input_audio_transcription"] == {"model": "whisper-1"}
    assert {"voice", "turn_detection", "instructions"} <= set(config)
    assert connect_kwargs(s)["model"] == "gpt-realtime"
