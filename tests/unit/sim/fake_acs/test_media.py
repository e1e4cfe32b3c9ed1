"""The media socket: headers, metadata and frames on the media clock, the play queue and
StopAudio, a 24 kHz answer, DTMF.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

import numpy as np
import pytest
from azure.communication.callautomation import (
    AudioFormat,
)

from tests.unit.sim.fake_acs.bridgelet import (
    FRAME,
    RATE,
    connected_call,
    tone_frame,
    until,
)
from voicebridge.core import acs
from voicebridge.sim.fake_acs import FRAME_S, FakeAcs, FakeCall


async def test_media_stream_headers_metadata_frames_and_caller_hang_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": 0.1}, inline_answer=True)
    frames = [tone_frame(500), tone_frame(0), tone_frame(0), tone_frame(-7), tone_frame(0)]
    frames += [tone_frame(0), tone_frame(3)]
    pcm = b"".join(frames) + tone_frame(9, 100)  # a short last frame
    samples = len(pcm) // 2
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm)
    await call.wait_ended(5)
    assert call.end_reason == "caller_hung_up"
    await until(lambda: bridge.ws_close_code is not None)
    assert bridge.ws_close_code == 1000

    assert bridge.media_headers["x-ms-call-connection-id"] == call.call_connection_id
    assert bridge.media_headers["x-ms-call-correlation-id"] == call.correlation_id
    assert bridge.media_headers["Authorization"].startswith("Bearer ")

    first = acs.parse(bridge.media_messages[0])
    assert isinstance(first, acs.AudioMetadata)
    assert (first.sample_rate, first.channels, first.length, first.encoding) == (
        16000,
        1,
        640,
        "PCM",
    )
    audio = bridge.audio_frames()
    assert len(audio) == len(bridge.media_messages) - 1 == call.frames_sent
    n_caller = math.ceil(samples / FRAME)
    # Hang-up 0.1 s after the caller audio ended: exactly 5 trailing silent frames.
    assert len(audio) == n_caller + 5
    assert call.caller_samples_sent == samples
    rebuilt = b"".join(f.pcm if f.pcm else bytes(2 * FRAME) for f in audio[:n_caller])
    assert rebuilt == pcm.ljust(n_caller * 2 * FRAME, b"\0")
    expected_silent = [not any(f) for f in frames] + [False]
    assert [f.silent for f in audio[:n_caller]] == expected_silent
    assert all(f.silent for f in audio[n_caller:])
    silent = [f for f in audio if f.silent]
    assert any(f.data == "" for f in silent) and any(f.data for f in silent)  # both forms
    assert all(len(f.pcm) == 2 * FRAME for f in audio if f.pcm)
    assert {f.participant_raw_id for f in audio} == {"4:+15551230001"}
    stamps = [f.timestamp for f in audio]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    names = [name if kind == "callback" else kind for kind, name in bridge.events]
    # Caller hang-up: CallDisconnected first, then the socket closes.
    assert names.index("CallDisconnected") < names.index("ws_closed")
    assert [kind for _, kind, _ in call.callbacks_posted][-1] == "CallDisconnected"
    hangup = [detail for _, what, detail in call.timeline if what == "caller_hangs_up"]
    assert hangup == [{"tick": n_caller + 5}]


async def test_frames_follow_the_media_clock(harness: Any) -> None:
    speed = 10.0
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": 0.0, "speed": speed})
    call = await connected_call(fake, bridge, tone_frame(1000) * 50)  # 1 s of call time
    await call.wait_ended(5)
    assert call.frames_sent == 50
    assert [d for _, w, d in call.timeline if w == "caller_hangs_up"] == [{"tick": 50}]
    # Paced, not dumped: 49 frame intervals take about 49 * 20 ms / speed. Bounds are
    # loose because arrival times include this test loop's own scheduling delays.
    arrivals = bridge.media_times[1:]  # skip AudioMetadata
    nominal = 49 * FRAME_S / speed
    assert 0.7 * nominal <= arrivals[-1] - arrivals[0] < nominal + 0.5


async def test_playback_queue_order_and_stop_audio(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: bridge.ws is not None)
    for value in range(1, 11):
        await bridge.send(acs.audio_data(base64.b64encode(tone_frame(value)).decode()))
    await until(lambda: call.samples_heard == 10 * FRAME)
    heard = call.heard
    assert len(heard) % FRAME == 0
    start = int(np.flatnonzero(heard)[0])
    assert start % FRAME == 0
    # One frame per tick, in the order sent (a loaded test loop may leave gaps).
    frames = heard[start:].reshape(-1, FRAME)
    played = frames[frames.any(axis=1)]
    assert [int(v) for v in played[:, 0]] == list(range(1, 11))
    assert (played == played[:, :1]).all()
    assert call.first_audio_heard_s[0] == pytest.approx(start / RATE)

    # One message of ten frames plays contiguously, frame by frame.
    block = b"".join(tone_frame(v) for v in range(11, 21))
    await bridge.send(acs.audio_data(base64.b64encode(block).decode()))
    await until(lambda: call.samples_heard == 20 * FRAME)
    frames = call.heard.reshape(-1, FRAME)
    first = int(np.flatnonzero(frames[:, 0] == 11)[0])
    assert [int(v) for v in frames[first : first + 10, 0]] == list(range(11, 21))

    for _ in range(500):  # 10 s of audio, far more than plays before StopAudio arrives
        await bridge.send(acs.audio_data(base64.b64encode(tone_frame(42)).decode()))
    await bridge.send(acs.stop_audio())
    await until(lambda: len(call.stop_audio) == 1)
    _, flushed = call.stop_audio[0]
    assert flushed > 0 and call.queued_samples == 0
    assert call.received_frames == 511
    # Conservation: every sample received was either played or flushed.
    assert call.samples_heard + flushed == call.received_samples == 520 * FRAME

    await bridge.send("{not json")
    await bridge.send(json.dumps({"Kind": "Bogus"}))
    await bridge.send(acs.audio_data(base64.b64encode(tone_frame(7)).decode()))
    bursts = len(call.first_audio_heard_s)
    await until(lambda: len(call.first_audio_heard_s) == bursts + 1 and len(call.errors) == 2)
    assert "bad outbound message" in call.errors[0] and "Bogus" in call.errors[1]
    await call.hang_up()
    assert call.end_reason == "caller_hung_up"
    assert len(call.heard) % FRAME == 0


async def test_24k_answer_resamples_caller_audio(harness: Any) -> None:
    fake, bridge = await harness(
        fake_kwargs={"hangup_after_audio_s": 0.0}, audio_format=AudioFormat.PCM24_K_MONO
    )
    t = np.arange(RATE // 5) / RATE  # 200 ms at 16 kHz
    pcm = (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm)
    await call.wait_ended(5)
    assert call.acs_rate == 24000
    meta = acs.parse(bridge.media_messages[0])
    assert isinstance(meta, acs.AudioMetadata) and meta.sample_rate == 24000
    assert call.caller_samples_sent == 24000 // 5
    assert all(len(f.pcm) == 960 for f in bridge.audio_frames() if f.pcm)


async def test_dtmf_reaches_the_media_socket(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await call.send_dtmf("5")
    await until(lambda: any('"DtmfData"' in m for m in bridge.media_messages))
    tone = next(acs.parse(m) for m in bridge.media_messages if '"DtmfData"' in m)
    assert isinstance(tone, acs.DtmfData) and tone.data == "5"
    assert tone.participant_raw_id == "4:+15551230001"
    await call.hang_up()


def test_overdue_is_none_until_media_streams() -> None:
    fake = FakeAcs(speed=2.0)
    call = FakeCall(
        fake,
        caller="+15551230001",
        recipient="+18005550100",
        caller_pcm=b"",
        schema="eventgrid",
        fail_answer=False,
    )
    now = time.monotonic()
    assert call.overdue_s(now) is None
    call._origin, call._next_tick, call._ws = now - 1.0, 90, object()  # type: ignore[assignment]
    assert call.overdue_s(now) == pytest.approx(1.0 - 90 * FRAME_S / 2.0)
    call._ending = True
    assert call.overdue_s(now) is None
