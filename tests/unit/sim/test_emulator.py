"""The Voice Live emulator, driven by the real ``azure.ai.voicelive`` SDK over loopback.

Every server started here binds 127.0.0.1 port 0 and is stopped by the ``emulators`` fixture.
``speed`` > 1 compresses the emulated wall-clock durations so the file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import numpy as np
import pytest
import soxr
import websockets
from azure.ai.voicelive.aio import ConnectionClosed, VoiceLiveConnection, connect
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.ai.voicelive.models import (
    ServerEvent,
    ServerEventConversationItemTruncated,
    ServerEventError,
    ServerEventResponseAudioDelta,
    ServerEventResponseDone,
    ServerEventSessionCreated,
    ServerEventSessionUpdated,
)
from azure.core.credentials import AccessToken, AzureKeyCredential
from websockets.asyncio.client import connect as ws_connect

from voicebridge.sim.emulator import (
    EmulatedSession,
    VoiceLiveEmulator,
    load_prompts,
    prompt_pcm,
    read_wav,
)

KEY = "emulator-key"
#: a transcription model the default gpt-realtime session supports
WHISPER = {"model": "whisper-1"}
Factory = Callable[..., Awaitable[VoiceLiveEmulator]]


class FakeTokenCredential:
    """An async token credential: the SDK sends ``Authorization: Bearer <token>``."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-entra-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    # With these the SDK's isinstance(..., AsyncTokenCredential) protocol check passes.
    async def __aenter__(self) -> FakeTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def vl_connect(emulator: VoiceLiveEmulator, key: str = KEY, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "gpt-realtime")
    return connect(credential=AzureKeyCredential(key), endpoint=emulator.endpoint, **kwargs)


async def update(conn: VoiceLiveConnection, **session: Any) -> ServerEventSessionUpdated:
    """Send session.update (dict form) and return the session.updated after session.created."""
    await conn.send({"type": "session.update", "session": session})
    created = await conn.recv()
    assert isinstance(created, ServerEventSessionCreated)
    updated = await conn.recv()
    assert isinstance(updated, ServerEventSessionUpdated), updated
    return updated


async def until(conn: VoiceLiveConnection, *types: str) -> list[ServerEvent]:
    """Receive events up to and including the first one of ``types`` (5 s at most)."""
    seen: list[ServerEvent] = []
    async with asyncio.timeout(5.0):
        while True:
            event = await conn.recv()
            seen.append(event)
            if event.type in types:
                return seen


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")


def tone(seconds: float, rate: int = 24_000, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def only_session(emulator: VoiceLiveEmulator) -> EmulatedSession:
    assert len(emulator.sessions) == 1
    return emulator.sessions[0]


def caller_at_24k() -> tuple[np.ndarray, list[dict[str, Any]]]:
    data = resources.files("voicebridge.sim") / "data"
    pcm16k, rate = read_wav((data / "caller.wav").read_bytes())
    assert rate == 16_000
    y = soxr.resample(pcm16k.astype(np.float32) / 32768.0, 16_000, 24_000, quality="VHQ")
    pcm = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    return pcm, json.loads((data / "caller.json").read_text())


# --- handshake ------------------------------------------------------------------------------
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


async def test_new_conversation_id_is_exposed_and_can_be_resumed(emulators: Factory) -> None:
    emulator = await emulators()
    async with vl_connect(emulator) as conn:
        created = await conn.recv()
    conversation = created.session["conversation_id"]
    assert conversation.startswith("conv_")
    async with connect(
        credential=FakeTokenCredential(),
        endpoint=emulator.endpoint,
        agent_name="bot",
        project_name="proj",
        conversation_id=conversation,
    ) as conn:
        again = await conn.recv()
    assert again.session.agent.thread_id == conversation
    assert emulator.sessions[1].resumed


# --- session configuration ----------------------------------------------------------------
async def test_session_update_is_echoed_and_sets_the_audio_rates(emulators: Factory) -> None:
    emulator = await emulators()
    async with vl_connect(emulator) as conn:
        updated = await update(
            conn,
            instructions="Be brief.",
            input_audio_sampling_rate=16_000,
            output_audio_format="pcm16_16000hz",
            turn_detection={"type": "azure_semantic_vad", "silence_duration_ms": 700},
        )
    assert updated.session.instructions == "Be brief."
    assert updated.session.input_audio_sampling_rate == 16_000
    assert updated.session.output_audio_format == "pcm16_16000hz"
    assert updated.session.turn_detection is not None
    assert updated.session.turn_detection.type == "azure_semantic_vad"
    session = only_session(emulator)
    assert (session.input_rate, session.output_rate) == (16_000, 16_000)
    assert session.received_types["session.update"] == 1


async def test_first_message_must_be_session_update(emulators: Factory) -> None:
    emulator = await emulators()
    async with vl_connect(emulator) as conn:
        await conn.recv()  # session.created
        await conn.send({"type": "response.create"})
        error = await conn.recv()
        assert isinstance(error, ServerEventError)
        assert error.error.code == "session_update_required"
        assert error.error.type == "invalid_request_error"
        await conn.send({"type": "session.update", "session": {}})
        assert (await conn.recv()).type == "session.updated"
    assert only_session(emulator).responses == []


async def test_malformed_json_gets_an_error_and_the_session_goes_on(emulators: Factory) -> None:
    emulator = await emulators()
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?api-version=x"
    async with ws_connect(url, additional_headers={"api-key": KEY}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send("{not json")
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        assert json.loads(await ws.recv())["type"] == "session.updated"
    session = only_session(emulator)
    assert session.received_types["<invalid-json>"] == 1
    assert session.errors_sent[0]["code"] == "invalid_json"


# --- turn detection -------------------------------------------------------------------------
async def test_vad_finds_the_caller_segments(emulators: Factory) -> None:
    """The shipped caller.wav, resampled to 24 kHz, yields one turn per caller.json segment."""
    emulator = await emulators(speed=20)
    pcm, segments = caller_at_24k()
    td = {"type": "server_vad", "create_response": False}
    async with vl_connect(emulator) as conn:
        await update(conn, turn_detection=td, input_audio_transcription=WHISPER)
        chunk = 1_680  # 70 ms: not a multiple of the VAD's 20 ms block
        for at in range(0, len(pcm), chunk):
            await conn.input_audio_buffer.append(audio=b64(pcm[at : at + chunk]))
        events: list[ServerEvent] = []
        while sum(e.type.endswith("transcription.completed") for e in events) < len(segments):
            events += await until(conn, "conversation.item.input_audio_transcription.completed")
    started = [e.audio_start_ms for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e.audio_end_ms for e in events if e.type == "input_audio_buffer.speech_stopped"]
    transcripts = [e.transcript for e in events if e.type.endswith("transcription.completed")]
    assert len(started) == len(stopped) == len(segments)
    for seg, start_ms, end_ms in zip(segments, started, stopped, strict=True):
        assert abs(start_ms - seg["start_s"] * 1000) <= 40, (seg, start_ms)
        assert abs(end_ms - seg["end_s"] * 1000) <= 40, (seg, end_ms)
    assert transcripts == [s["text"] for s in segments]
    session = only_session(emulator)
    assert session.input_samples == len(pcm)
    appends = [r for r in session.received if r["type"] == "input_audio_buffer.append"]
    # One record for the whole run of appends: the payloads kept as a sample count.
    sent = -(-len(pcm) // chunk)
    assert appends == [{"type": "input_audio_buffer.append", "audio": len(pcm), "messages": sent}]
    assert session.received_types["input_audio_buffer.append"] == sent
    assert session.responses == []
    kinds = [kind for _, kind, _ in session.timeline]
    assert kinds.count("input_audio_buffer.speech_started") == len(segments)


async def test_shipped_caller_script_plays_out_as_designed(emulators: Factory) -> None:
    """caller.wav streamed in (scaled) real time gets the designed answers and one barge-in.

    This checks the layout scripts/make_audio.py computed: the greeting, then answer_1, the
    long answer cut by the barge-in while still streaming, the short answer and goodbye, with
    no caller turn overlapping an answer except the barge-in.
    """
    speed = 10.0
    emulator = await emulators(speed=speed)
    pcm, segments = caller_at_24k()
    td = {"type": "server_vad", "auto_truncate": True}
    loop = asyncio.get_running_loop()
    async with vl_connect(emulator) as conn:
        await update(conn, turn_detection=td, input_audio_transcription=WHISPER)
        await conn.response.create()  # the bridge's greeting, right after session.updated

        async def drain() -> list[ServerEvent]:
            seen: list[ServerEvent] = []
            with contextlib.suppress(ConnectionClosed):
                while True:
                    seen.append(await conn.recv())
            return seen

        reader = asyncio.create_task(drain())
        chunk, t0 = 2_400, loop.time()  # 100 ms frames, sent at `speed` x real time
        for at in range(0, len(pcm), chunk):
            await asyncio.sleep(max(0.0, t0 + at / 24_000 / speed - loop.time()))
            await conn.input_audio_buffer.append(audio=b64(pcm[at : at + chunk]))
        await asyncio.sleep(0.3)
        await conn.close()
        events = await reader
    records = only_session(emulator).responses
    assert [(r["prompt"], r["status"]) for r in records] == [
        ("greeting", "completed"),
        ("answer_1", "completed"),
        ("answer_long", "cancelled"),
        ("answer_short", "completed"),
        ("goodbye", "completed"),
    ]
    truncated = [e for e in events if isinstance(e, ServerEventConversationItemTruncated)]
    assert len(truncated) == 1 and truncated[0].item_id == records[2]["item_id"]
    # Barge-in at ~18.9 s, the long answer began at ~16.7 s: ~2.2 s of it was played.
    assert 1_500 < truncated[0].audio_end_ms < 3_000
    transcripts = [e.transcript for e in events if e.type.endswith("transcription.completed")]
    assert transcripts == [s["text"] for s in segments]


# --- responses ------------------------------------------------------------------------------
@pytest.mark.parametrize(("out_format", "rate"), [("pcm16", 24_000), ("pcm16_16000hz", 16_000)])
async def test_response_streams_the_whole_prompt_in_varying_chunks(
    emulators: Factory, out_format: str, rate: int
) -> None:
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn, output_audio_format=out_format)
        await conn.response.create()
        events = await until(conn, "response.done")
    deltas = [e for e in events if isinstance(e, ServerEventResponseAudioDelta)]
    sizes = [len(e.delta) // 2 for e in deltas]
    greeting = load_prompts().greeting
    assert sum(sizes) == len(prompt_pcm(greeting, rate))
    if rate == 24_000:
        assert sum(sizes) == len(load_prompts().prompts[greeting].pcm)
    assert len(set(sizes[:-1])) > 3, "chunk sizes should vary"
    assert any(n % (rate // 50) for n in sizes), "some chunks are not whole 20 ms frames"
    assert all(rate * 0.04 <= n <= rate * 0.2 for n in sizes[:-1])
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
    ]
    assert types[-5:] == [
        "response.audio.done",
        "response.audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    transcript = "".join(e.delta for e in events if e.type == "response.audio_transcript.delta")
    assert transcript == load_prompts().prompts[greeting].text
    done = events[-1]
    assert isinstance(done, ServerEventResponseDone)
    assert done.response.status == "completed" and done.response.usage is not None
    record = only_session(emulator).responses[0]
    assert (record["prompt"], record["status"], record["samples_sent"]) == (
        greeting,
        "completed",
        sum(sizes),
    )


async def test_pre_generated_message_speaks_the_greeting_with_the_given_text(
    emulators: Factory,
) -> None:
    emulator = await emulators(speed=20)
    text = "Welcome to the emulator."
    message = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": text}]}
    async with vl_connect(emulator) as conn:
        await update(conn)
        await conn.send(
            {"type": "response.create", "response": {"pre_generated_assistant_message": message}}
        )
        events = await until(conn, "response.done")
    done = [e for e in events if e.type == "response.audio_transcript.done"]
    assert done[0].transcript == text
    assert only_session(emulator).responses[0]["prompt"] == load_prompts().greeting


async def test_response_create_while_active_cancels_the_previous_one(
    emulators: Factory,
) -> None:
    """``cancel_previous`` defaults to true (SDK ResponseCreateParams): the service cancels
    the running response and starts the new one rather than refusing."""
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn)
        await conn.response.create()
        await until(conn, "response.audio.delta")
        await conn.response.create()
        events = await until(conn, "response.done")
        assert events[-1].response.status == "cancelled"
        events = await until(conn, "response.done")
        assert events[-1].response.status == "completed"
    assert not [e for e in events if isinstance(e, ServerEventError)]
    records = only_session(emulator).responses
    assert [(r["status"], r["reason"]) for r in records] == [
        ("cancelled", "client_cancelled"),
        ("completed", None),
    ]


async def test_response_create_without_cancel_previous_is_refused(emulators: Factory) -> None:
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn)
        await conn.response.create()
        await conn.send({"type": "response.create", "response": {"cancel_previous": False}})
        events = await until(conn, "response.done")
    errors = [e for e in events if isinstance(e, ServerEventError)]
    assert [e.error.code for e in errors] == ["conversation_already_has_active_response"]
    assert [e.type for e in events].count("response.created") == 1
    assert events[-1].response.status == "completed"
    assert len(only_session(emulator).responses) == 1


async def test_response_cancel(emulators: Factory) -> None:
    emulator = await emulators(speed=2)
    async with vl_connect(emulator) as conn:
        await update(conn)
        await conn.send({"type": "response.cancel"})
        error = await conn.recv()
        assert isinstance(error, ServerEventError) and error.error.code
        await conn.response.create()
        await until(conn, "response.audio.delta")
        await conn.send({"type": "response.cancel"})
        done = (await until(conn, "response.done"))[-1]
    assert done.response.status == "cancelled"
    assert done.response.status_details.reason == "client_cancelled"
    record = only_session(emulator).responses[0]
    assert record["status"] == "cancelled"
    assert 0 < record["samples_sent"] < record["samples_total"]


async def test_barge_in_cancels_and_truncates_then_the_turn_is_answered(
    emulators: Factory,
) -> None:
    emulator = await emulators(speed=4)
    td = {"type": "server_vad", "auto_truncate": True, "interrupt_response": True}
    async with vl_connect(emulator) as conn:
        await update(conn, turn_detection=td)
        await conn.response.create()
        await until(conn, "response.audio.delta")
        await conn.input_audio_buffer.append(audio=b64(tone(0.3)))
        events = await until(conn, "conversation.item.truncated")
        await conn.input_audio_buffer.append(audio=b64(np.zeros(24_000, np.int16)))
        events += await until(conn, "response.done")
    types = [e.type for e in events]
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    assert types.index("response.done") < types.index("conversation.item.truncated")
    cancelled = next(e for e in events if isinstance(e, ServerEventResponseDone))
    assert cancelled.response.status == "cancelled"
    assert cancelled.response.status_details.reason == "turn_detected"
    truncated = next(e for e in events if isinstance(e, ServerEventConversationItemTruncated))
    assert truncated.content_index == 0
    first, second = only_session(emulator).responses
    assert truncated.item_id == first["item_id"]
    assert 0 <= truncated.audio_end_ms <= first["samples_sent"] * 1000 // 24_000
    assert first["audio_end_ms"] == truncated.audio_end_ms
    assert (first["status"], first["reason"]) == ("cancelled", "turn_detected")
    assert (second["status"], second["prompt"]) == ("completed", load_prompts().answer_cycle[0])


# --- message_creation_failed ----------------------------------------------------------------
@pytest.mark.parametrize(
    "bad_event",
    [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "x" * 101}],
            },
        },
        {"type": "response.create", "response": {"instructions": {"not": "a string"}}},
    ],
    ids=["too-long", "not-a-string"],
)
async def test_message_creation_failed_stalls_then_closes_1011(
    emulators: Factory, bad_event: dict[str, Any]
) -> None:
    emulator = await emulators(speed=20, max_text_chars=100, stall_s=0.3)
    async with vl_connect(emulator) as conn:
        await update(conn)
        await conn.send(bad_event)
        error = await conn.recv()
        assert isinstance(error, ServerEventError)
        assert error.error.code == "message_creation_failed"
        failed_at = time.monotonic()
        await conn.response.create()  # ignored during the stall
        await conn.input_audio_buffer.append(audio=b64(tone(0.5)))
        with pytest.raises(ConnectionClosed) as closed:
            await conn.recv()
        stalled = time.monotonic() - failed_at
    assert closed.value.code == 1011
    assert 0.25 <= stalled < 2.0
    session = only_session(emulator)
    await asyncio.wait_for(session.closed.wait(), 2)
    assert session.close_code == 1011
    assert session.responses == [] and session.input_samples == 0
    assert session.received_types["input_audio_buffer.append"] == 1  # recorded, not acted on


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


# --------------------------------------------------------------------------- audit rules


async def test_unsupported_transcription_pairing_is_refused(emulators: Factory) -> None:
    """azure-speech with gpt-realtime (protocol audit M1): an error before session.updated,
    the rest applies, transcription is off and no caller transcript is ever sent."""
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await conn.send(
            {
                "type": "session.update",
                "session": {"input_audio_transcription": {"model": "azure-speech"}},
            }
        )
        assert (await conn.recv()).type == "session.created"
        error = await conn.recv()
        assert isinstance(error, ServerEventError)
        assert error.error.code == "unsupported_transcription_model"
        assert error.error.param == "session.input_audio_transcription.model"
        updated = await conn.recv()
        assert isinstance(updated, ServerEventSessionUpdated)
        turn = np.concatenate([tone(0.6), np.zeros(24_000, dtype=np.int16)])
        await conn.input_audio_buffer.append(audio=b64(turn))
        events = await until(conn, "response.done")
    assert not [e for e in events if e.type.endswith("transcription.completed")]
    assert only_session(emulator).config["input_audio_transcription"] is None


async def test_agent_registry_conflicts_and_unknown_agents(emulators: Factory) -> None:
    stored = {"voice": {"type": "azure-standard", "name": "en-US-JennyNeural"}}
    emulator = await emulators(speed=20, agents={"bot": stored})
    agent = {"agent_name": "bot", "project_name": "proj"}
    async with connect(credential=FakeTokenCredential(), endpoint=emulator.endpoint, **agent) as c:
        updated = await update(c, voice=stored["voice"])  # the same value: no conflict
        assert updated.session.voice["name"] == "en-US-JennyNeural"
    async with connect(credential=FakeTokenCredential(), endpoint=emulator.endpoint, **agent) as c:
        await c.send({"type": "session.update", "session": {"voice": "alloy"}})
        assert (await c.recv()).type == "session.created"
        error = await c.recv()
        assert isinstance(error, ServerEventError)
        assert error.error.code == "max_config_attempts_exceeded"
        assert error.error.param == "session.voice"
    await emulator.sessions[1].closed.wait()
    assert emulator.sessions[1].close_code == 1008
    other = {"agent_name": "nobody", "project_name": "proj"}
    async with connect(credential=FakeTokenCredential(), endpoint=emulator.endpoint, **other) as c:
        assert (await c.recv()).type == "session.created"
        error = await c.recv()
        assert isinstance(error, ServerEventError) and error.error.code == "agent_not_found"
    await emulator.sessions[2].closed.wait()
    assert emulator.sessions[2].close_code == 1008


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
