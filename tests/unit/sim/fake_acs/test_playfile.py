"""``:play`` with a ``FileSource`` through the real SDK: the fake fetches the WAV, mixes it into
what the caller hears (with or without a media socket), posts PlayStarted/PlayCompleted, and
fails clearly on anything but RIFF WAV PCM16 mono 16 kHz.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from typing import Any

import numpy as np
import pytest
from azure.communication.callautomation import AudioFormat, FileSource

from tests.unit.sim.fake_acs.bridgelet import RATE, Bridgelet, connected_call, until
from voicebridge.sim.fake_acs import FakeAcs, FakeCall
from voicebridge.sim.fake_acs.playfile import decode_wav

INF = {"hangup_after_audio_s": math.inf}


def wav_bytes(seconds: float, *, rate: int = RATE, channels: int = 1, width: int = 2) -> bytes:
    """A WAV of a constant tone (value 1000; 100 for 8-bit)."""
    frames = round(seconds * rate)
    value = 100 if width == 1 else 1000
    dtype = "u1" if width == 1 else "<i2"
    samples = np.full(frames * channels, value, dtype=dtype).tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples)
    return out.getvalue()


def float_wav() -> bytes:
    """A WAVE_FORMAT_IEEE_FLOAT file (format tag 3), which the fake must refuse."""
    data = np.zeros(160, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, RATE, RATE * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    body = b"WAVE" + chunks + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


async def play(bridge: Bridgelet, call: FakeCall, name: str, **kwargs: Any) -> None:
    assert call.call_connection_id is not None
    conn = bridge.client.get_call_connection(call.call_connection_id)
    await conn.play_media(FileSource(url=bridge.file_url(name)), **kwargs)


def heard_tone(call: FakeCall) -> np.ndarray:
    return np.flatnonzero(call.heard)


async def test_a_file_plays_into_what_the_caller_hears(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs=INF)
    bridge.files["hello.wav"] = wav_bytes(0.5)
    call = await connected_call(fake, bridge)
    await until(lambda: call.frames_sent >= 10)
    await play(bridge, call, "hello.wav", operation_context="prompt")
    await until(lambda: "PlayCompleted" in [kind for _, kind, _ in call.callbacks_posted])
    assert bridge.file_requests == ["hello.wav"]
    assert call.played_files == [bridge.file_url("hello.wav")]
    assert call.samples_played_from_files == RATE // 2
    where = heard_tone(call)
    assert len(where) == RATE // 2 and where[-1] - where[0] == RATE // 2 - 1  # one block
    assert (call.heard[where] == 1000).all()
    started = next(t for t, what, _ in call.timeline if what == "play_file")
    assert where[0] / RATE == pytest.approx(started, abs=0.002)
    assert where[0] >= 10 * RATE // 50  # not before the play was asked for
    types = bridge.callback_types()
    assert types.index("PlayStarted") < types.index("PlayCompleted")
    _, done = bridge.callbacks[types.index("PlayCompleted")]
    assert done["data"]["operationContext"] == "prompt"
    times = {kind: t for t, kind, _ in call.callbacks_posted if kind.startswith("Play")}
    assert times["PlayCompleted"] - times["PlayStarted"] >= 0.5 - 0.02
    # File audio is not bridge audio: the conservation counters are untouched.
    assert call.received_samples == 0 and call.samples_heard == 0
    assert call.summary()["played_files"] == call.played_files
    await call.hang_up()


async def test_a_file_plays_without_a_media_socket(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs=INF, start_media=False)
    bridge.files["hello.wav"] = wav_bytes(0.2)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    await until(lambda: "CallConnected" in bridge.callback_types())
    await play(bridge, call, "hello.wav")
    await until(lambda: "PlayCompleted" in bridge.callback_types())
    assert call.media_sockets == 0 and call.frames_sent == 0
    assert len(heard_tone(call)) == RATE // 5 and len(call.heard) % (RATE // 50) == 0
    await call.hang_up()


async def test_a_file_at_24k_call_rate_is_resampled(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs=INF, audio_format=AudioFormat.PCM24_K_MONO)
    bridge.files["hello.wav"] = wav_bytes(0.5)
    call = await connected_call(fake, bridge)
    await play(bridge, call, "hello.wav")
    await until(lambda: "PlayCompleted" in bridge.callback_types())
    assert call.acs_rate == 24000 and call.samples_played_from_files == 12000
    await call.hang_up()


async def test_cancel_cuts_a_file_short(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs=INF)
    bridge.files["long.wav"] = wav_bytes(60.0)
    call = await connected_call(fake, bridge)
    assert call.call_connection_id is not None
    await play(bridge, call, "long.wav")
    await until(lambda: "PlayStarted" in bridge.callback_types())
    await until(lambda: call.now() > call.timeline[-1][0] + 1.0)
    await bridge.client.get_call_connection(call.call_connection_id).cancel_all_media_operations()
    await until(lambda: "PlayCanceled" in bridge.callback_types())
    assert "PlayCompleted" not in bridge.callback_types()
    assert 0 < call.samples_played_from_files < 60 * RATE
    assert len(heard_tone(call)) == call.samples_played_from_files
    await call.hang_up()


@pytest.mark.parametrize(
    ("body", "subcode", "message"),
    [
        (wav_bytes(0.1, rate=8000), 8535, "8000 Hz (need 16000 Hz)"),
        (wav_bytes(0.1, channels=2), 8535, "2 channels (need mono)"),
        (wav_bytes(0.1, width=1), 8535, "8-bit (need 16-bit)"),
        (float_wav(), 8535, "not a PCM WAV"),
        (b"ID3\x03\x00" + bytes(100), 8535, "not a RIFF WAVE file"),
        (None, 8536, "HTTP 404"),
    ],
    ids=["8k", "stereo", "8bit", "float", "mp3", "missing"],
)
async def test_a_bad_file_fails_the_play(
    harness: Any, body: bytes | None, subcode: int, message: str
) -> None:
    fake, bridge = await harness(fake_kwargs=INF)
    if body is not None:
        bridge.files["bad.wav"] = body
    call = await connected_call(fake, bridge)
    await play(bridge, call, "bad.wav", operation_context="prompt")
    await until(lambda: "PlayFailed" in bridge.callback_types())
    assert "PlayStarted" not in bridge.callback_types()
    _, failed = bridge.callbacks[bridge.callback_types().index("PlayFailed")]
    result = failed["data"]["resultInformation"]
    assert result["subCode"] == subcode and message in result["message"]
    assert bridge.file_url("bad.wav") in result["message"]
    assert failed["data"]["operationContext"] == "prompt"
    assert call.played_files == [] and call.samples_played_from_files == 0
    assert call.play_failures == [{"uri": bridge.file_url("bad.wav"), "message": result["message"]}]
    assert not call.heard.any()
    await call.hang_up()


def test_decode_wav_accepts_exactly_pcm16_mono_16k() -> None:
    pcm = decode_wav(wav_bytes(0.01), "x.wav")
    assert pcm == np.full(160, 1000, dtype="<i2").tobytes()


def test_heard_without_plays_is_unchanged() -> None:
    call = FakeCall(
        FakeAcs(),
        caller="+1",
        recipient="+2",
        caller_pcm=b"",
        schema="eventgrid",
        fail_answer=False,
    )
    assert call.heard.dtype == np.int16 and len(call.heard) == 0
