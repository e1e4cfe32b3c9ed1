"""CallBridge: a whole call fed as strings and mappings, no sockets, no clock."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebridge.core import acs, events
from voicebridge.core import voicelive as vl
from voicebridge.core.bridge import CallBridge


def make(**kw: Any) -> CallBridge:
    rate = kw.pop("vl_hz", 24000)
    cfg = vl.build_session_config(input_hz=rate, output_hz=rate, voice="alloy")
    if kw.pop("interrupt_response", True) is False:
        cfg["turn_detection"]["interrupt_response"] = False
    return CallBridge(session_config=cfg, voicelive_in_hz=rate, voicelive_out_hz=rate, **kw)


def caller_frame(samples: int = 320, value: int = 1000) -> str:
    pcm = np.full(samples, value, dtype="<i2").tobytes()
    return acs.audio_data_message(base64.b64encode(pcm).decode())


def delta(rid: str, samples: int, value: int = 2000) -> dict[str, Any]:
    pcm = np.full(samples, value, dtype="<i2").tobytes()
    return {
        "type": "response.audio.delta",
        "response_id": rid,
        "item_id": "i" + rid,
        "delta": base64.b64encode(pcm).decode(),
    }


def vl_in(b: CallBridge, event: dict[str, Any], now: float = 0.0) -> None:
    """Feed ``event`` as the frame a Voice Live socket delivers."""
    b.receive_voicelive(json.dumps(event).encode(), now)


def sent(b: CallBridge) -> list[dict[str, Any]]:
    """What the bridge queued for Voice Live, parsed back from its wire text."""
    return [json.loads(text) for text in b.voicelive_to_send()]


def start_session(b: CallBridge) -> list[dict[str, Any]]:
    vl_in(b, {"type": "session.created", "session": {"id": "s1"}})
    vl_in(b, {"type": "session.updated", "session": {"id": "s1"}})
    return sent(b)


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


def test_text_greeting_mode() -> None:
    b = make(greeting="text", greeting_text="Hi there")
    out = start_session(b)
    assert out[-1] == vl.greeting_pre_generated("Hi there")


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
    assert b.counters.acs_silent_frames == 1 and b.counters.caller_samples_in == 320


def test_agent_audio_is_paced_in_exact_frames() -> None:
    b = make(lead_ms=100)
    start_session(b)
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}})
    vl_in(b, delta("r1", 24000), now=10.0)  # 1 s of audio
    first = b.acs_to_send(10.0)
    assert len(first) == 5  # 100 ms lead = 5 frames at once
    assert all(len(base64.b64decode(json.loads(m)["AudioData"]["Data"])) == 640 for m in first)
    assert b.acs_to_send(10.0) == []
    assert b.next_acs_due() == pytest.approx(10.0)  # the 6th frame is due when 5 remain queued
    assert len(b.acs_to_send(10.001)) == 1
    assert len(b.acs_to_send(10.1)) == 4  # caught up after a late wake-up


def test_longer_outbound_frames_are_paced_by_their_length() -> None:
    b = make(lead_ms=160, out_frame_ms=40)
    start_session(b)
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}})
    vl_in(b, delta("r1", 24000 + 240), now=10.0)  # 1.01 s of audio
    first = b.acs_to_send(10.0)
    assert len(first) == 4  # 160 ms lead = four 40 ms frames
    assert all(len(base64.b64decode(json.loads(m)["AudioData"]["Data"])) == 1280 for m in first)
    assert b.next_acs_due() == pytest.approx(10.0)  # the 5th is due when 4 remain queued
    assert len(b.acs_to_send(10.0, ahead=0.04)) == 1
    assert b.next_acs_due() == pytest.approx(10.04)
    assert len(b.acs_to_send(10.08, ahead=0.04)) == 2  # one late, one within the batch
    vl_in(b, {"type": "response.audio.done", "response_id": "r1"}, now=10.1)
    vl_in(b, {"type": "response.done", "response": {"id": "r1", "status": "completed"}}, now=10.1)
    rest = b.acs_to_send(20.0, ahead=2.0)
    total = b._downlink.output_for(24000 + 240)  # ACS-rate samples of the response
    frames = -(-total // 640)
    assert len(first) + 3 + len(rest) == frames
    b.finish()
    out = b.report()["outbound"]
    assert out["conserved"], out
    assert out["padding_samples_sent"] == frames * 640 - total > 0


@pytest.mark.parametrize("bad", [0, 10, 30, 120])
def test_outbound_frame_length_is_a_multiple_of_20_ms_up_to_100(bad: int) -> None:
    with pytest.raises(ValueError, match="out_frame_ms"):
        make(out_frame_ms=bad)


def test_barge_in_stops_audio_drops_queue_and_late_deltas() -> None:
    b = make(lead_ms=100)
    start_session(b)
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}})
    vl_in(b, delta("r1", 48000), now=0.0)
    b.acs_to_send(0.0)
    vl_in(
        b,
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 5, "item_id": "u1"},
        now=0.05,
    )
    out = b.acs_to_send(0.05)
    assert out == [acs.stop_audio()]
    assert b.frames_queued == 0
    vl_in(b, delta("r1", 4800), now=0.06)  # late delta of the interrupted response
    assert b.acs_to_send(0.1) == [] and b.counters.late_deltas_dropped == 1
    vl_in(b, {"type": "response.done", "response": {"id": "r1", "status": "cancelled"}})
    # interrupt_response is on: the service cancels, we do not race it
    assert all(m["type"] != "response.cancel" for m in sent(b))
    b.finish()
    r = b.report()
    assert r["outbound"]["conserved"], r["outbound"]
    # the downlink is a pure 2.125 ms delay: 34 samples of filter ring-out at the end
    assert r["outbound"]["agent_samples_expected"] == (48000 + 4800) * 2 // 3 + 34
    assert r["outbound"]["samples_dropped_by_barge_in"] > 0


def test_barge_in_cancels_when_the_service_does_not() -> None:
    b = make(interrupt_response=False)
    start_session(b)
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}})
    vl_in(b, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 5, "item_id": "u"})
    assert sent(b) == [vl.response_cancel()]


def test_malformed_input_is_counted_not_raised() -> None:
    b = make()
    start_session(b)
    b.events_received()
    b.receive_acs("garbage")
    b.receive_voicelive(b'{"type": "response.audio.delta"}')
    vl_in(b, {"type": "response.audio.delta", "response_id": "r", "delta": "!!!"})
    b.receive_voicelive(b"[1, 2]")  # a frame that is no JSON object
    assert b.counters.acs_malformed == 1 and b.counters.voicelive_malformed == 3
    malformed = b.events_received()
    assert [type(e) for e in malformed] == [
        events.AcsMalformed,
        events.VoiceLiveMalformed,
        events.VoiceLiveMalformed,
        events.VoiceLiveMalformed,
    ]
    assert [e.name for e in malformed] == ["acs_malformed"] + ["voicelive_malformed"] * 3
    assert "invalid base64" in malformed[2].error and "unreadable" in malformed[3].error


def test_a_run_of_unreadable_frames_makes_the_session_unusable() -> None:
    b = make()
    start_session(b)
    events_in = b.counters.voicelive_events_in
    for _ in range(49):
        b.receive_voicelive(b"\xff not json")
    assert not b.voicelive_unusable
    vl_in(b, {"type": "rate_limits.updated"})  # one readable frame ends the run
    for i in range(50):
        assert not b.voicelive_unusable, i
        b.receive_voicelive("{")
    assert b.voicelive_unusable
    # unreadable frames are counted as malformed, not as events
    assert b.counters.voicelive_malformed == 99
    assert b.counters.voicelive_events_in == events_in + 1
    b.voicelive_lost(1.0)  # the next session starts a new run
    assert not b.voicelive_unusable


def test_error_after_our_response_create_frees_the_turn_table() -> None:
    b = make()
    start_session(b)
    assert b.responses.state.value == "requested"
    vl_in(b, {"type": "error", "error": {"code": "conversation_already_has_active_response"}})
    assert b.responses.state.value == "idle"
    assert b.counters.voicelive_errors["conversation_already_has_active_response"] == 1


@settings(max_examples=60, deadline=None)
@given(
    vl_hz=st.sampled_from([16000, 24000]),
    frame_ms=st.sampled_from([20, 40, 100]),
    script=st.lists(
        st.one_of(
            st.tuples(st.just("caller"), st.integers(1, 400)),
            st.tuples(st.just("delta"), st.integers(1, 3000)),
            st.tuples(st.just("done"), st.just(0)),
            st.tuples(st.just("barge"), st.just(0)),
            st.tuples(st.just("tick"), st.integers(1, 200)),
        ),
        max_size=60,
    ),
)
def test_every_sample_is_accounted_for(
    vl_hz: int, frame_ms: int, script: list[tuple[str, int]]
) -> None:
    """Random calls: inbound and outbound conservation always hold at the end."""
    b = make(vl_hz=vl_hz, lead_ms=60, out_frame_ms=frame_ms)
    start_session(b)
    now, rid, n = 0.0, 0, 0
    vl_in(b, {"type": "response.created", "response": {"id": "r0"}})
    for action, arg in script:
        if action == "caller":
            b.receive_acs(caller_frame(arg))
        elif action == "delta":
            vl_in(b, delta(f"r{rid}", arg), now=now)
        elif action == "done":
            vl_in(b, {"type": "response.audio.done", "response_id": f"r{rid}"}, now=now)
            vl_in(
                b,
                {"type": "response.done", "response": {"id": f"r{rid}", "status": "completed"}},
                now=now,
            )
            rid += 1
            vl_in(b, {"type": "response.created", "response": {"id": f"r{rid}"}})
        elif action == "barge":
            vl_in(
                b,
                {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u"},
                now=now,
            )
        else:
            now += arg / 1000
            b.acs_to_send(now)
        n += len(sent(b))
    b.finish()
    while b.frames_queued:
        now += 1.0
        b.acs_to_send(now)
    r = b.report()
    assert r["inbound"]["conserved"], r["inbound"]
    assert r["outbound"]["conserved"], r["outbound"]


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


def test_timeouts_nudge_then_give_up() -> None:
    b = make(response_start_timeout_s=1.0, session_update_timeout_s=2.0)
    vl_in(b, {"type": "session.created", "session": {"id": "s"}}, 0.0)
    assert b.poll(1.0) is None
    assert b.poll(2.5) == "session_update_timeout"
    vl_in(b, {"type": "session.updated", "session": {"id": "s"}}, 2.6)
    sent(b)
    vl_in(b, {"type": "response.created", "response": {"id": "g"}}, 2.7)
    vl_in(b, {"type": "response.done", "response": {"id": "g", "status": "completed"}}, 3.0)
    vl_in(b, {"type": "input_audio_buffer.committed", "item_id": "u"}, 4.0)
    assert b.poll(4.5) is None
    assert b.poll(5.1) is None  # nudged: one response.create of our own
    assert sent(b) == [vl.response_create()]
    assert b.poll(6.2) == "response_timeout"


def test_events_tell_the_adapter_what_happened_in_order() -> None:
    b = make(vl_hz=16000)
    assert not b.events_pending
    vl_in(
        b,
        {
            "type": "session.created",
            "session": {"id": "s1", "conversation_id": "c1", "expires_at": 1700000000},
        },
    )
    vl_in(b, {"type": "session.updated", "session": {"id": "s1", "voice": "alloy"}})
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}})
    vl_in(b, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 5, "item_id": "u"})
    vl_in(b, {"type": "response.done", "response": {"id": "r1", "status": "cancelled"}})
    assert b.events_pending
    got = b.events_received()
    assert got == [
        events.SessionStarted("s1", "c1", "session.conversation_id", None, None, 1700000000.0),
        events.SessionReady("s1", "alloy"),
        events.ResponseStarted("r1", turn=0),
        events.BargeIn(dropped_samples=0, response_id="r1"),
        events.ResponseEnded("r1", status="cancelled", reason=None),
    ]
    assert not b.events_pending and b.events_received() == []
