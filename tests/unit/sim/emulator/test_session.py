"""The session protocol through the real SDK: configuration, conversations, errors, and a
whole caller script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import numpy as np
import pytest
from azure.ai.voicelive.aio import ConnectionClosed, connect
from azure.ai.voicelive.models import (
    ServerEvent,
    ServerEventConversationItemTruncated,
    ServerEventError,
    ServerEventSessionUpdated,
)
from websockets.asyncio.client import connect as ws_connect

from tests.unit.sim.emulator.client import (
    KEY,
    WHISPER,
    Factory,
    FakeTokenCredential,
    b64,
    caller_at_24k,
    only_session,
    tone,
    until,
    update,
    vl_connect,
)


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
