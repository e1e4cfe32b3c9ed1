"""The emulator's opt-in fast paths (``fast=True``) decide and write exactly as the plain way.

Appends with the bridge's spelling skip the JSON parser and are remembered by text, audio
deltas are written from a template: each is held here to the straightforward computation,
and a whole short session gives the same wire text either way.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect

from tests.unit.sim.emulator.client import KEY, WHISPER, Factory, caller_at_24k
from voicebridge.sim.emulator import EmulatedSession, VoiceLiveEmulator, connection, fastpath


@given(st.binary(max_size=1500))
def test_a_plain_append_is_what_json_would_read(pcm: bytes) -> None:
    audio = base64.b64encode(pcm).decode("ascii")
    message = json.dumps({"type": "input_audio_buffer.append", "audio": audio})
    if len(pcm) % 2:
        assert fastpath.plain_append(message) is None
    else:
        assert fastpath.plain_append(message) == pcm
        assert json.loads(message) == {"type": "input_audio_buffer.append", "audio": audio}


@given(st.text(max_size=40))
def test_no_other_text_is_taken_for_a_plain_append(middle: str) -> None:
    message = fastpath.APPEND_HEAD + middle + fastpath.APPEND_TAIL
    pcm = fastpath.plain_append(message)
    if pcm is not None:
        event = json.loads(message)
        assert event == {"type": "input_audio_buffer.append", "audio": middle}
        assert base64.b64decode(middle, validate=True) == pcm


@pytest.mark.parametrize(
    "message",
    [
        json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "e1"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": "AA=="}),  # odd
        json.dumps({"type": "input_audio_buffer.append", "audio": "AA AA"}),
        '{"type":"input_audio_buffer.append","audio":"AAAA"}',
        b'{"type": "input_audio_buffer.append", "audio": "AAAA"}',
    ],
)
def test_other_spellings_take_the_general_path(message: str | bytes) -> None:
    assert fastpath.plain_append(message) is None


def test_plain_appends_are_remembered_by_text(monkeypatch: pytest.MonkeyPatch) -> None:
    server = VoiceLiveEmulator(fast=True)
    assert server.fastpath is not None

    def append(pcm: bytes) -> str:
        audio = base64.b64encode(pcm).decode("ascii")
        return json.dumps({"type": "input_audio_buffer.append", "audio": audio})

    text = append(bytes(range(8)))
    first = server.fastpath.append(text)
    assert first is not None and first.samples.tolist() == [256, 770, 1284, 1798]
    assert server.fastpath.append("".join(text)) is first  # an equal text: the same audio
    assert server.fastpath.append(text[:-2] + "!" + text[-2:]) is None  # and not remembered
    monkeypatch.setattr(fastpath, "APPEND_MEMO_SIZE", 1)
    other = append(bytes(4))
    assert server.fastpath.append(other) is not first
    assert list(server.fastpath._appends) == [other]  # full: forgotten, then this one remembered


async def test_both_paths_record_an_append_alike(emulators: Factory) -> None:
    """The same audio appended plainly and with an event id (the JSON path) is counted,
    recorded and heard by the VAD the same way."""
    emulator = await emulators(speed=20, fast=True)
    speech, _ = caller_at_24k()
    chunks = [speech[i : i + 480] for i in range(24_000 * 4, 24_000 * 9, 480)]  # a turn
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?model=m"
    for n, spelling in enumerate(("plain", "with-id")):
        async with ws_connect(url, additional_headers={"api-key": KEY}) as ws:
            await ws.recv()  # session.created
            update = {
                "input_audio_sampling_rate": 24000,
                "turn_detection": {"type": "server_vad", "create_response": False},
            }
            await ws.send(json.dumps({"type": "session.update", "session": update}))
            await ws.recv()  # session.updated
            for i, chunk in enumerate(chunks):
                event: dict[str, Any] = {"type": "input_audio_buffer.append"}
                event["audio"] = base64.b64encode(chunk.tobytes()).decode("ascii")
                if spelling == "with-id":
                    event["event_id"] = f"e{i}"
                await ws.send(json.dumps(event))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            await ws.recv()
        await asyncio.wait_for(emulator.sessions[n].closed.wait(), 5)
    plain, general = emulator.sessions
    assert plain.input_samples == general.input_samples == 480 * len(chunks)
    strip = [{k: v for k, v in r.items() if k != "event_id"} for r in general.received]
    assert plain.received == strip
    # The run of appends is one record; the message after it starts a new one.
    kinds = [r["type"] for r in plain.received]
    assert kinds == ["session.update", "input_audio_buffer.append", "input_audio_buffer.clear"]
    assert plain.received[1]["messages"] == len(chunks)
    assert plain.received[1]["audio"] == 480 * len(chunks)
    vad_events = [
        [(at, kind, {k: v for k, v in d.items() if k != "item_id"}) for at, kind, d in s.timeline]
        for s in (plain, general)
    ]
    assert vad_events[0] == vad_events[1]
    assert any(kind == "input_audio_buffer.speech_started" for _, kind, _ in plain.timeline)


def test_audio_delta_text_is_what_json_writes() -> None:
    ids = {"response_id": "resp_1", "item_id": "item_2", "output_index": 0, "content_index": 0}
    event = {"type": "response.audio.delta", **ids, "delta": ""}
    head, mid, tail = fastpath.event_template(event, "delta")
    delta = base64.b64encode(bytes(range(256)) * 9).decode("ascii")
    expected = json.dumps({"event_id": "event_000042", **event, "delta": delta})
    assert f"{head}event_{42:06d}{mid}{delta}{tail}" == expected


async def _short_session_wire(
    emulators: Factory, monkeypatch: pytest.MonkeyPatch, *, fast: bool
) -> tuple[list[str], EmulatedSession]:
    """Every text frame the emulator sends in a short session: the greeting, then one
    caller turn (appended in the bridge's spelling) and its answer, asked for once all of
    it is in (so nothing depends on timing); ids made deterministic."""
    counter = itertools.count()
    monkeypatch.setattr(connection.secrets, "token_hex", lambda n: f"{next(counter):0{2 * n}x}")
    emulator = await emulators(speed=20, fast=fast)
    speech, segments = caller_at_24k()
    turn = speech[: int((segments[0]["end_s"] + 1.0) * 24_000)]  # the first turn + 1 s
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?model=gpt-realtime"
    received: list[str] = []

    async def until_done(ws: Any) -> None:
        while True:
            text = await ws.recv()
            received.append(text)
            if json.loads(text).get("type") == "response.done":
                return

    async with ws_connect(url, additional_headers={"api-key": KEY}) as ws:
        received.append(await ws.recv())  # session.created
        session = {
            "input_audio_sampling_rate": 24000,
            "input_audio_transcription": WHISPER,
            "turn_detection": {"type": "server_vad", "create_response": False},
        }
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        received.append(await ws.recv())  # session.updated
        await ws.send(json.dumps({"type": "response.create"}))
        await until_done(ws)  # the greeting
        for at in range(0, len(turn), 480):  # 20 ms appends, as the bridge sends them
            audio = base64.b64encode(turn[at : at + 480].tobytes()).decode("ascii")
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await ws.send(json.dumps({"type": "response.create"}))
        await until_done(ws)  # the answer
    await asyncio.wait_for(emulator.sessions[0].closed.wait(), 5)
    wire = [re.sub(r'"expires_at": \d+', '"expires_at": 0', text) for text in received]
    return wire, emulator.sessions[0]


async def test_the_fast_paths_put_the_same_text_on_the_wire(
    emulators: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short session with and without ``fast=True``: the same frames, byte for byte, and
    the same records (the fast path did engage: appends were remembered)."""
    plain, plain_session = await _short_session_wire(emulators, monkeypatch, fast=False)
    fast, fast_session = await _short_session_wire(emulators, monkeypatch, fast=True)
    types = [json.loads(text)["type"] for text in plain]
    assert types.count("response.audio.delta") > 20 and types.count("response.done") == 2
    assert "conversation.item.input_audio_transcription.completed" in types
    assert fast == plain
    for attribute in ("received", "input_samples", "output_samples", "timeline", "responses"):
        assert getattr(fast_session, attribute) == getattr(plain_session, attribute), attribute
    emulator_fast = fast_session._emu.fastpath
    assert emulator_fast is not None and emulator_fast._appends
    assert plain_session._emu.fastpath is None
