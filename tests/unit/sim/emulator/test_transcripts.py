"""Caller transcripts from given segments: each turn gets the segment its audio overlaps
(on the caller's time line, which runs on across a call's sessions), not the next one."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from azure.ai.voicelive.aio import ConnectionClosed
from azure.ai.voicelive.models import ServerEvent

from tests.unit.sim.emulator.client import (
    WHISPER,
    Factory,
    b64,
    caller_at_24k,
    tone,
    until,
    update,
    vl_connect,
)
from voicebridge.sim.emulator import CALL_ID_HEADER

SCRIPT = [
    {"start_s": 0.0, "end_s": 0.6, "text": "alpha"},
    {"start_s": 3.0, "end_s": 3.6, "text": "bravo"},
    {"start_s": 5.0, "end_s": 5.6, "text": "charlie"},
]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * 24_000), dtype=np.int16)


async def test_a_turn_gets_the_segment_it_overlaps(emulators: Factory) -> None:
    emulator = await emulators(speed=20, caller_segments=SCRIPT)
    audio = np.concatenate([silence(3.0), tone(0.6), silence(1.0)])
    async with vl_connect(emulator) as conn:
        await update(conn, input_audio_transcription=WHISPER)
        await conn.input_audio_buffer.append(audio=b64(audio))
        events = await until(conn, "conversation.item.input_audio_transcription.completed")
    assert events[-1].transcript == "bravo"  # the shipped order would say "alpha"


async def test_the_time_line_runs_on_across_a_calls_sessions(emulators: Factory) -> None:
    emulator = await emulators(speed=20, caller_segments=SCRIPT)
    first = np.concatenate([tone(0.6), silence(1.4)])  # 0.0-2.0 s: alpha
    second = np.concatenate([silence(3.0), tone(0.6), silence(1.0)])  # 2.0 s on: charlie
    heard = []
    for audio in (first, second):
        async with vl_connect(emulator, headers={CALL_ID_HEADER: "call-1"}) as conn:
            await update(conn, input_audio_transcription=WHISPER)
            await conn.input_audio_buffer.append(audio=b64(audio))
            events = await until(conn, "conversation.item.input_audio_transcription.completed")
            heard.append(events[-1].transcript)
        await emulator.sessions[-1].closed.wait()
    assert heard == ["alpha", "charlie"]
    assert emulator.sessions[1].audio_base_s == 2.0


async def test_a_split_turn_and_a_turn_outside_every_segment(emulators: Factory) -> None:
    """A second turn inside a used segment is not given its text again; a turn that
    overlaps no segment takes the next unused one (times that do not line up)."""
    script = [{"start_s": 0.0, "end_s": 2.0, "text": "one long sentence"}, *SCRIPT[1:]]
    emulator = await emulators(speed=20, caller_segments=script)
    audio = np.concatenate(
        [tone(0.5), silence(0.8), tone(0.4), silence(7.0), tone(0.5), silence(1.0)]
    )
    async with vl_connect(emulator) as conn:
        await update(
            conn,
            input_audio_transcription=WHISPER,
            turn_detection={"type": "server_vad", "create_response": False},
        )
        await conn.input_audio_buffer.append(audio=b64(audio))
        heard = []
        while len(heard) < 3:
            events = await until(conn, "conversation.item.input_audio_transcription.completed")
            heard.append(events[-1].transcript)
    assert heard[0] == "one long sentence"
    assert heard[1].startswith("(speech ")
    assert heard[2] == "bravo"


async def test_the_shipped_call_with_its_script_and_tools(emulators: Factory) -> None:
    """caller.wav with caller.json as given segments: every turn lines up with its segment,
    and with tools declared the farewell turn ends in goodbye + end_call."""
    speed = 10.0
    pcm, segments = caller_at_24k()
    emulator = await emulators(speed=speed, caller_segments=segments)
    tools = [{"type": "function", "name": "end_call", "parameters": {}}]
    td = {"type": "server_vad", "auto_truncate": True}
    loop = asyncio.get_running_loop()
    async with vl_connect(emulator) as conn:
        await update(conn, turn_detection=td, input_audio_transcription=WHISPER, tools=tools)
        await conn.response.create()

        async def drain() -> list[ServerEvent]:
            seen: list[ServerEvent] = []
            with contextlib.suppress(ConnectionClosed):
                while True:
                    seen.append(await conn.recv())
            return seen

        reader = asyncio.create_task(drain())
        chunk, t0 = 2_400, loop.time()
        for at in range(0, len(pcm), chunk):
            await asyncio.sleep(max(0.0, t0 + at / 24_000 / speed - loop.time()))
            await conn.input_audio_buffer.append(audio=b64(pcm[at : at + chunk]))
        await asyncio.sleep(0.3)
        await conn.close()
        events = await reader
    transcripts = [e.transcript for e in events if e.type.endswith("transcription.completed")]
    assert transcripts == [s["text"] for s in segments]
    session = emulator.sessions[0]
    assert [(r["prompt"], r["status"]) for r in session.responses] == [
        ("greeting", "completed"),
        ("answer_1", "completed"),
        ("answer_long", "cancelled"),
        ("answer_short", "completed"),
        ("goodbye", "completed"),
    ]
    assert [c["name"] for c in session.tool_calls] == ["end_call"]
    assert session.responses[-1]["rule"] == "farewell"
