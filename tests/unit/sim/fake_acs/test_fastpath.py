"""The fake ACS's opt-in fast paths (``fast=True``) say exactly what the plain way says.

Caller frames are built from templates cut out of ``acs.audio_data_message`` and the
bridge's audio is read without a JSON parser when it has the bridge's spelling; these
tests hold both to the codec in :mod:`voicebridge.core.acs`, byte for byte. The frame
sender's bypass of websockets' per-message wrapping is checked against a real server,
and a whole short call gives the same frames and records either way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
from datetime import timedelta
from typing import Any

import jwt
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.unit.sim.fake_acs.bridgelet import FRAME, tone_frame, until
from voicebridge.core import acs
from voicebridge.errors import AcsCodecError
from voicebridge.sim.fake_acs import FRAME_S, FakeAcs, FakeCall, fastpath, media

PARTICIPANTS = ["4:+15551230001", '4:+1555"quoted"\\', "4:+1555\u00e9\u4e2d"]


@pytest.mark.parametrize("participant", PARTICIPANTS)
@pytest.mark.parametrize(
    ("b64", "silent"),
    [("AAEC", False), (base64.b64encode(bytes(640)).decode(), True), (None, True)],
)
def test_frame_messages_are_the_codecs(participant: str, b64: str | None, silent: bool) -> None:
    frames = fastpath.FrameText(participant)
    stamp = "2024-11-15T19:16:12.925Z"
    expected = acs.audio_data_message(
        b64, silent=silent, timestamp=stamp, participant_raw_id=participant
    )
    assert frames.message(stamp, b64, silent) == expected


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))  # 1970 .. 2100
def test_frame_stamps_are_iso_ms(epoch_us: int) -> None:
    frames = fastpath.FrameText("4:+15551230001")
    moment = media.EPOCH + timedelta(microseconds=epoch_us)
    assert frames.stamp(epoch_us) == media.iso_ms(moment)
    # the cached date and time of day of the second before must not leak into this one
    assert frames.stamp(epoch_us + 1_000_000) == media.iso_ms(moment + timedelta(seconds=1))


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_caller_frames_are_what_the_codec_writes(fast: bool) -> None:
    """A whole caller stream: audio, zeros, audio cut short, then trailing silence."""
    rng = np.random.default_rng(7)
    audio = rng.integers(-3000, 3000, 320 * 5, dtype=np.int16).tobytes()
    pcm = audio + bytes(320 * 2 * 3) + audio[: 320 * 2 + 100]
    call = FakeCall(
        FakeAcs(fast=fast),
        caller="+15551230001",
        recipient="+18005550100",
        caller_pcm=pcm,
        schema="eventgrid",
        fail_answer=False,
    )
    wall_origin = media.now_utc().replace(microsecond=987_654)
    call._wall_origin_us = media.epoch_us(wall_origin)
    silent_form = False
    for tick in range(14):
        chunk = pcm[tick * 640 : (tick + 1) * 640].ljust(640, b"\0") if tick < 10 else b""
        stamp = media.iso_ms(wall_origin + timedelta(seconds=tick * FRAME_S))
        if chunk and chunk.count(0) != len(chunk):
            b64: str | None = base64.b64encode(chunk).decode("ascii")
            silent = False
        else:
            silent_form = not silent_form
            b64 = None if silent_form else base64.b64encode(bytes(640)).decode("ascii")
            silent = True
        expected = acs.audio_data_message(
            b64, silent=silent, timestamp=stamp, participant_raw_id=call.caller_raw_id
        )
        assert call._caller_frame(tick) == expected, tick
    assert call.frames_sent == 14 and call.caller_samples_sent == len(pcm) // 2


def parse_or_error(text: str) -> Any:
    try:
        event = acs.parse_outbound(text)
    except AcsCodecError as exc:
        return str(exc)
    return (type(event).__name__, getattr(event, "data", None), getattr(event, "pcm", None))


@given(st.binary(max_size=2000))
def test_bridge_audio_is_read_as_the_codec_reads_it(pcm: bytes) -> None:
    text = acs.audio_data(base64.b64encode(pcm).decode("ascii"))
    fast = fastpath.outbound_audio(text)
    if len(pcm) % 2:
        assert fast is None  # left to the codec, which reports the odd length
    else:
        assert fast is not None
        assert ("OutboundAudio", fast.data, fast.pcm) == parse_or_error(text)


@pytest.mark.parametrize(
    "text",
    [
        acs.audio_data("AA=="),  # one byte: odd
        acs.audio_data("not base64!"),
        acs.audio_data("AA=A"),
        acs.audio_data('AA\\u0041A"'),
        acs.audio_data("AA\\/A"),
        acs.stop_audio(),
        json.dumps({"Kind": "AudioData", "AudioData": {"Data": "AAAA"}, "StopAudio": None}),
        '{"kind":"audiodata","audioData":{"data":"AAAA"}}',
        "",
    ],
)
def test_anything_else_takes_the_codec(text: str) -> None:
    assert fastpath.outbound_audio(text) is None


@given(st.text(max_size=60))
def test_no_text_is_read_differently(middle: str) -> None:
    text = acs.audio_data(middle)
    fast = fastpath.outbound_audio(text)
    if fast is not None:
        assert ("OutboundAudio", fast.data, fast.pcm) == parse_or_error(text)


async def test_send_text_frames_arrive_as_sent() -> None:
    """The frames the sender writes below websockets' send() reach a real server whole
    and in order; once the server has closed, it raises ConnectionClosed as send() does."""
    received: list[str | bytes] = []
    closed = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)
            if message == "close":
                await ws.close(1000)
        closed.set()

    messages = [
        base64.b64encode(os.urandom(n)).decode("ascii") for n in (0, 1, 90, 125, 640, 70_000)
    ]
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with ws_connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            for text in messages:
                await fastpath.send_text(ws, text)
            await ws.send("close")
            await asyncio.wait_for(closed.wait(), 5)
            with pytest.raises(ConnectionClosed):
                await fastpath.send_text(ws, "too late")
    assert received == [*messages, "close"]


def test_plain_tokens_are_signed_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.25]
    monkeypatch.setattr(fastpath.time, "time", lambda: now[0])
    fake = FakeAcs(fast=True)
    assert fake.fastpath is not None
    first = fake.sign_jwt(lifetime_s=300)
    assert fake.sign_jwt(lifetime_s=300) is first  # remembered
    fake.fastpath._tokens.clear()
    assert fake.sign_jwt(lifetime_s=300) == first  # signing again gives the same bytes
    claims = jwt.decode(
        first,
        fake._key.public_key(),
        algorithms=["RS256"],
        audience=fake.resource_id,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_000_300)
    # anything but a plain token is signed each time and not remembered
    custom = fake.sign_jwt(lifetime_s=300, sub="x")
    assert custom != first and fake.sign_jwt(lifetime_s=300) == first
    assert fake.sign_jwt(lifetime_s=60) != first
    fake.issuer = "https://somebody.else"
    assert jwt.decode(fake.sign_jwt(lifetime_s=300), options={"verify_signature": False})[
        "iss"
    ] == ("https://somebody.else")
    now[0] += 1.0  # the next second: a new token
    later = jwt.decode(fake.sign_jwt(lifetime_s=300), options={"verify_signature": False})
    assert later["iat"] == 1_700_000_001


STAMP = re.compile(r'"timestamp": ?"[^"]*"')


async def _short_call(harness: Any, *, fast: bool) -> tuple[FakeCall, Any]:
    """A short call: caller audio with loud, quiet and silent frames; the bridge plays
    audio back (one message of whole frames, one of an odd length, junk, StopAudio, one
    more frame); the caller hangs up once all that is read and 40 frames are out."""
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf, "fast": fast})
    assert (fake.fastpath is not None) is fast
    frames = [tone_frame(500), tone_frame(0), tone_frame(0), tone_frame(-7), tone_frame(3)]
    pcm = b"".join(frames * 4) + tone_frame(9, 100)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm)
    await until(lambda: bridge.ws is not None)
    for message in (
        acs.audio_data(base64.b64encode(tone_frame(11) * 3).decode()),
        acs.audio_data(base64.b64encode(b"\x01\x02\x03").decode()),  # odd: an error
        "{not json",
        acs.stop_audio(),
        acs.audio_data(base64.b64encode(tone_frame(12)).decode()),
    ):
        await bridge.send(message)
    await until(lambda: len(call.errors) == 2 and call.received_frames == 2)
    await until(lambda: call.queued_samples == 0 and call.frames_sent >= 40)
    await call.hang_up()
    await until(lambda: bridge.ws_close_code is not None)
    return call, bridge


async def test_a_short_call_is_the_same_either_way(harness: Any) -> None:
    """The same call with and without ``fast=True``: the same frames (timestamps aside,
    each checked against its own call's clock), the same callbacks and the same reading
    of what the bridge sent."""
    calls = [await _short_call(harness, fast=fast) for fast in (False, True)]
    texts = []
    for call, bridge in calls:
        metadata, *audio = bridge.media_messages
        assert json.loads(metadata)["kind"] == "AudioMetadata"
        assert len(audio) == call.frames_sent >= 40
        origin = media.EPOCH + timedelta(microseconds=call._wall_origin_us)
        expected = [media.iso_ms(origin + timedelta(seconds=n * FRAME_S)) for n in range(40)]
        assert [acs.parse(text).timestamp for text in audio[:40]] == expected  # type: ignore[union-attr]
        texts.append([STAMP.sub('"timestamp": ""', text) for text in audio[:40]])
    assert texts[0] == texts[1]
    (plain, plain_bridge), (fast, fast_bridge) = calls
    assert plain_bridge.callback_types() == fast_bridge.callback_types()
    for attribute in (
        "end_reason",
        "caller_samples_sent",
        "received_frames",
        "received_samples",
        "errors",
    ):
        assert getattr(fast, attribute) == getattr(plain, attribute), attribute
    assert plain.received_samples == 4 * FRAME and plain.caller_samples_sent == 20 * FRAME + 100
    assert len(plain.stop_audio) == len(fast.stop_audio) == 1
    for call in (plain, fast):
        flushed = sum(n for _, n in call.stop_audio)
        assert call.samples_heard + flushed + call.queued_samples == call.received_samples
