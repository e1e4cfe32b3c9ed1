"""The emulator's shortcuts on its per-message paths decide exactly as the plain way would.

Appends with the bridge's spelling skip the JSON parser and are remembered by text, the VAD
works on exact sums of squares carried across appends, audio deltas are written from a
template: each is held here to the straightforward computation. Also the WebSocket details
the server library leaves to the emulator: keepalive pings and close codes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect

from tests.unit.sim.test_emulator import KEY, caller_at_24k
from voicebridge.sim import emulator as emu
from voicebridge.sim.emulator import AppendedAudio, EnergyVad, VoiceLiveEmulator

EmuFactory = Callable[..., Awaitable[VoiceLiveEmulator]]


class ReferenceVad:
    """The VAD as written before: RMS of every 20 ms block, in numpy, carrying samples."""

    def __init__(self, rate_hz: int, threshold_dbfs: float, silence_ms: int) -> None:
        self.block = rate_hz // 50
        self.threshold = 10 ** (threshold_dbfs / 20.0) * 32768.0
        self.silence_blocks = max(1, math.ceil(silence_ms / 20))
        self.carry = np.zeros(0, dtype=np.int16)
        self.blocks_seen, self.speaking, self.run = 0, False, 0

    def feed(self, samples: np.ndarray) -> list[tuple[str, float]]:
        x = np.concatenate([self.carry, samples])
        n = len(x) // self.block
        self.carry = x[n * self.block :].copy()
        blocks = x[: n * self.block].astype(np.float64).reshape(n, self.block)
        events: list[tuple[str, float]] = []
        for is_loud in np.sqrt(np.mean(blocks**2, axis=1)) > self.threshold:
            self.blocks_seen += 1
            if self.speaking:
                self.run = 0 if is_loud else self.run + 1
                if self.run >= self.silence_blocks:
                    self.speaking, self.run = False, 0
                    events.append(("speech_stopped", self.ms(self.silence_blocks)))
            else:
                self.run = self.run + 1 if is_loud else 0
                if self.run >= 5:  # 100 ms of onset
                    self.speaking, self.run = True, 0
                    events.append(("speech_started", self.ms(5)))
        return events

    def ms(self, blocks_back: int) -> float:
        return 7.0 + (self.blocks_seen - blocks_back) * 20


@pytest.mark.parametrize("rate", [16_000, 24_000])
def test_vad_decides_as_the_rms_of_each_block(rate: int) -> None:
    """Real speech at several levels and thresholds, appended in chunks of every kind of
    size (whole blocks, the bridge's 429 + 51 start, odd ones, empty ones)."""
    speech, _ = caller_at_24k()
    if rate == 16_000:
        speech = speech[::3][: len(speech) // 2]
    rng = random.Random(11)
    turns = 0
    for _trial in range(12):
        level = rng.choice([0.003, 0.02, 0.3, 1.0, 4.0])
        pcm = np.clip(np.round(speech * level), -32768, 32767).astype(np.int16)
        threshold = rng.uniform(-65.0, -25.0)
        silence = rng.choice([100, 500, 900])
        vad = EnergyVad(rate, threshold_dbfs=threshold, silence_ms=silence, base_ms=7.0)
        reference = ReferenceVad(rate, threshold, silence)
        got: list[tuple[str, float]] = []
        expected: list[tuple[str, float]] = []
        pos = 0
        while pos < len(pcm):
            n = rng.choice([rate // 50, 429, 51, 0, 1, rng.randint(2, 3 * rate // 50)])
            chunk = pcm[pos : pos + n]
            pos += n
            got += vad.feed(AppendedAudio(chunk.tobytes()))
            expected += reference.feed(chunk)
            assert (vad.speaking, vad.run, vad.blocks_seen) == (
                reference.speaking,
                reference.run,
                reference.blocks_seen,
            )
        assert got == expected
        turns += sum(kind == "speech_started" for kind, _ in got)
    assert turns > 20  # decisions were made, not just none on both sides


def test_loud_energy_is_the_rms_threshold_exactly() -> None:
    for block in (320, 480):
        for dbfs in np.linspace(-65.0, -25.0, 81):
            threshold = 10 ** (dbfs / 20.0) * 32768.0
            least = emu._loud_energy(block, threshold)
            assert np.sqrt(np.float64(least) / block) > threshold
            assert not np.sqrt(np.float64(least - 1) / block) > threshold


@given(st.binary(max_size=1500))
def test_a_plain_append_is_what_json_would_read(pcm: bytes) -> None:
    audio = base64.b64encode(pcm).decode("ascii")
    message = json.dumps({"type": "input_audio_buffer.append", "audio": audio})
    if len(pcm) % 2:
        assert emu._plain_append(message) is None
    else:
        assert emu._plain_append(message) == pcm
        assert json.loads(message) == {"type": "input_audio_buffer.append", "audio": audio}


@given(st.text(max_size=40))
def test_no_other_text_is_taken_for_a_plain_append(middle: str) -> None:
    message = emu._APPEND_HEAD + middle + emu._APPEND_TAIL
    pcm = emu._plain_append(message)
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
    assert emu._plain_append(message) is None


def test_plain_appends_are_remembered_by_text(monkeypatch: pytest.MonkeyPatch) -> None:
    server = VoiceLiveEmulator()

    def append(pcm: bytes) -> str:
        audio = base64.b64encode(pcm).decode("ascii")
        return json.dumps({"type": "input_audio_buffer.append", "audio": audio})

    text = append(bytes(range(8)))
    first = server.plain_append(text)
    assert first is not None and first.samples.tolist() == [256, 770, 1284, 1798]
    assert server.plain_append("".join(text)) is first  # an equal text: the same audio
    assert server.plain_append(text[:-2] + "!" + text[-2:]) is None  # and not remembered
    monkeypatch.setattr(emu, "APPEND_MEMO_SIZE", 1)
    other = append(bytes(4))
    assert server.plain_append(other) is not first
    assert list(server._appends) == [other]  # full: forgotten, then this one remembered


async def test_both_paths_record_an_append_alike(emulators: EmuFactory) -> None:
    """The same audio appended plainly and with an event id (the JSON path) is counted,
    recorded and heard by the VAD the same way."""
    emulator = await emulators(speed=20)
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
    head, mid, tail = emu._event_template(event, "delta")
    delta = base64.b64encode(bytes(range(256)) * 9).decode("ascii")
    expected = json.dumps({"event_id": "event_000042", **event, "delta": delta})
    assert f"{head}event_{42:06d}{mid}{delta}{tail}" == expected


async def test_keepalive_pings_and_closes_1011_without_pongs(
    emulators: EmuFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emu, "KEEPALIVE_S", 0.1)
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


async def test_a_dropped_connection_closes_1006(emulators: EmuFactory) -> None:
    emulator = await emulators()
    url = emulator.endpoint.replace("http", "ws") + "/voice-live/realtime?model=m"
    async with ws_connect(url, additional_headers={"api-key": KEY}) as ws:
        await ws.recv()
        ws.transport.abort()
    session = emulator.sessions[0]
    await asyncio.wait_for(session.closed.wait(), 5)
    assert session.close_code == 1006
