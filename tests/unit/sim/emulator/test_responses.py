"""Responses: prompt streaming, response.create / cancel, barge-in with truncation."""

from __future__ import annotations

import numpy as np
import pytest
from azure.ai.voicelive.models import (
    ServerEventConversationItemTruncated,
    ServerEventError,
    ServerEventResponseAudioDelta,
    ServerEventResponseDone,
)

from tests.unit.sim.emulator.client import (
    Factory,
    b64,
    only_session,
    tone,
    until,
    update,
    vl_connect,
)
from voicebridge.sim.emulator import (
    load_prompts,
    prompt_pcm,
)


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
