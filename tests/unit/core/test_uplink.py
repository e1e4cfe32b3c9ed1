"""Uplink: caller audio resampled, held until session.update, requeued when unsent."""

from __future__ import annotations

import base64
import json

import numpy as np

from tests.unit.core.helpers import caller_frame, counters, make, sent, start_session, vl_in
from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.accounting import Accounting
from voicebridge.core.guard import OutboundGuard
from voicebridge.core.responses import ResponseState
from voicebridge.core.uplink import Uplink, UplinkConfig


def test_session_update_goes_first_and_buffered_caller_audio_follows() -> None:
    b = make()
    b.receive_acs(acs.audio_metadata_message(sample_rate=16000))
    for _ in range(5):
        b.receive_acs(caller_frame())
    assert sent(b) == []  # nothing may precede session.update
    out = start_session(b)
    types = [m["type"] for m in out]
    assert types[0] == "session.update"
    assert types[1:6] == ["input_audio_buffer.append"] * 5
    assert types[6:] == ["response.create"]  # the greeting, once
    vl_in(b, {"type": "session.updated", "session": {"id": "s1"}})
    assert sent(b) == []


def test_passthrough_forwards_the_callers_base64_untouched() -> None:
    b = make(vl_hz=16000)
    start_session(b)
    frame = caller_frame()
    b.receive_acs(frame)
    assert b.voicelive_to_send() == [vl.append_json(json.loads(frame)["audioData"]["data"])]


def test_silent_frames_without_data_are_forwarded_as_zeros() -> None:
    b = make(vl_hz=16000)
    start_session(b)
    b.receive_acs(acs.audio_data_message(None, silent=True))
    (msg,) = sent(b)
    assert base64.b64decode(msg["audio"]) == bytes(640)
    c = counters(b)
    assert c["acs_silent_frames"] == 1 and c["caller_samples_in"] == 320


def test_session_loss_keeps_caller_audio_in_order_and_replays_history() -> None:
    b = make(vl_hz=16000)
    start_session(b)
    vl_in(
        b,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "u",
            "transcript": "hi",
        },
    )
    vl_in(
        b,
        {
            "type": "response.audio_transcript.done",
            "response_id": "r",
            "item_id": "a",
            "transcript": "hello",
        },
    )
    frames = [caller_frame(value=v) for v in (1, 2, 3, 4)]
    b.receive_acs(frames[0])
    b.receive_acs(frames[1])
    texts = b.voicelive_to_send()
    b.unsent(texts[1:])  # frame 2 never made it out
    b.receive_acs(frames[2])  # arrives while the socket is dying: buffered after frame 2
    b.voicelive_lost(1.0)
    b.receive_acs(frames[3])
    vl_in(b, {"type": "session.created", "session": {"id": "s2"}}, 2.0)
    out = sent(b)
    assert [m["type"] for m in out] == [
        "session.update",
        "conversation.item.create",
        "conversation.item.create",
        "input_audio_buffer.append",
        "input_audio_buffer.append",
        "input_audio_buffer.append",
    ]
    assert [m["item"]["role"] for m in out[1:3]] == ["user", "assistant"]
    values = [int(np.frombuffer(base64.b64decode(m["audio"]), "<i2")[0]) for m in out[3:]]
    assert values == [2, 3, 4]
    report = b.report()
    assert report["sessions"]["appended"] == [320, 960]
    b.finish()
    assert b.report()["inbound"]["conserved"]


# ----------------------------------------------------------------- the part alone


def uplink(
    max_buffered_ms: int = 100, vl_hz: int = 16000
) -> tuple[Uplink, OutboundGuard, list[str]]:
    guard = OutboundGuard(ResponseState())
    out: list[str] = []
    accounting = Accounting()
    accounting.new_session()
    part = Uplink(
        guard,
        out,
        accounting,
        acs_hz=16000,
        voicelive_in_hz=vl_hz,
        config=UplinkConfig(max_buffered_ms=max_buffered_ms),
    )
    return part, guard, out


def audio_data(value: int) -> acs.AudioData:
    event = acs.parse(caller_frame(value=value))
    assert isinstance(event, acs.AudioData)
    return event


def first_samples(texts: list[str]) -> list[int]:
    return [int(np.frombuffer(base64.b64decode(vl.append_audio(t) or ""), "<i2")[0]) for t in texts]


def test_caller_audio_is_held_bounded_oldest_dropped_until_configured() -> None:
    part, guard, out = uplink(max_buffered_ms=40)  # two 20 ms frames
    for v in (1, 2, 3):
        part.caller_audio(audio_data(v))
    assert out == [] and part.buffered_samples == 640
    assert part._accounting.counters.caller_samples_buffered_dropped == 320
    part.release()  # session.update not out yet: the audio stays held
    assert out == [] and part.buffered_samples == 640
    guard.check(vl.session_update({}))
    part.release()
    assert first_samples(out) == [2, 3] and part.buffered_samples == 0
    part.caller_audio(audio_data(4))  # configured: straight out
    assert first_samples(out) == [2, 3, 4]


def test_unsent_appends_go_back_ahead_of_newer_audio() -> None:
    part, guard, out = uplink(max_buffered_ms=1000)
    guard.check(vl.session_update({}))
    out.clear()
    for v in (1, 2):
        part.caller_audio(audio_data(v))
    unsent = out[:]
    out.clear()
    guard.new_session()  # the socket went: nothing is configured
    part.caller_audio(audio_data(3))  # held
    part.requeue([json.dumps(vl.response_create()), *unsent])  # only audio comes back
    assert part._accounting.counters.voicelive_samples_appended == 0
    guard.check(vl.session_update({}))
    part.release()
    assert first_samples(out) == [1, 2, 3]
    assert part._accounting.appended_per_session == [960]
