"""Playout: agent audio in exact frames, paced ahead of real time; barge-in drops it."""

from __future__ import annotations

import base64
import json

import pytest

from tests.unit.core.helpers import counters, delta, make, sent, start_session, vl_in
from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.accounting import Accounting
from voicebridge.core.audio import Resampler
from voicebridge.core.bridge import PlayoutConfig
from voicebridge.core.events import AcsSocketReplaced, BridgeEvent
from voicebridge.core.playout import Playout


def test_agent_audio_is_paced_in_exact_frames() -> None:
    b = make(playout=PlayoutConfig(lead_ms=100))
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
    b = make(playout=PlayoutConfig(lead_ms=160, frame_ms=40))
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
    # ACS-rate samples of the response (the downlink is a pure delay)
    total = Resampler(in_hz=24000, out_hz=16000, compensate_delay=False).output_for(24000 + 240)
    frames = -(-total // 640)
    assert len(first) + 3 + len(rest) == frames
    b.finish()
    out = b.report()["outbound"]
    assert out["conserved"], out
    assert out["padding_samples_sent"] == frames * 640 - total > 0


@pytest.mark.parametrize("bad", [0, 10, 30, 120])
def test_outbound_frame_length_is_a_multiple_of_20_ms_up_to_100(bad: int) -> None:
    with pytest.raises(ValueError, match="frame_ms"):
        make(playout=PlayoutConfig(frame_ms=bad))


def test_barge_in_stops_audio_drops_queue_and_late_deltas() -> None:
    b = make(playout=PlayoutConfig(lead_ms=100))
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
    assert b.acs_to_send(0.1) == [] and counters(b)["late_deltas_dropped"] == 1
    vl_in(b, {"type": "response.done", "response": {"id": "r1", "status": "cancelled"}})
    # interrupt_response is on: the service cancels, we do not race it
    assert all(m["type"] != "response.cancel" for m in sent(b))
    b.finish()
    r = b.report()
    assert r["outbound"]["conserved"], r["outbound"]
    # the downlink is a pure 2.125 ms delay: 34 samples of filter ring-out at the end
    assert r["outbound"]["agent_samples_expected"] == (48000 + 4800) * 2 // 3 + 34
    assert r["outbound"]["samples_dropped_by_barge_in"] > 0


def test_played_out_waits_for_the_queue_and_for_acs_to_play_it() -> None:
    b = make(playout=PlayoutConfig(lead_ms=100))
    start_session(b)
    assert b.played_out(0.0)
    b.play_prompt(bytes(640 * 10), 1.0)  # 200 ms of prompt at 16 kHz
    assert not b.played_out(1.0) and b.frames_queued == 10
    b.acs_to_send(1.0, ahead=1.0)
    assert b.frames_queued == 0 and not b.played_out(1.1)  # ACS still plays it
    assert b.played_out(1.201)
    c = counters(b)
    assert c["prompt_samples_sent"] == 3200 and c["agent_samples_sent"] == 0


# ----------------------------------------------------------------- the part alone


def playout(**config: float) -> tuple[Playout, list[BridgeEvent]]:
    accounting = Accounting()
    accounting.new_session()
    got: list[BridgeEvent] = []
    part = Playout(
        accounting,
        got.append,
        acs_hz=16000,
        voicelive_out_hz=24000,
        config=PlayoutConfig(**config),  # type: ignore[arg-type]
    )
    return part, got


def audio_delta(rid: str, samples: int) -> vl.AudioDelta:
    event = vl.classify(delta(rid, samples))
    assert isinstance(event, vl.AudioDelta)
    return event


def test_interrupt_sends_stop_audio_first_and_drops_the_rest() -> None:
    part, _ = playout(lead_ms=40)
    part.response_created("r1")
    part.agent_audio(audio_delta("r1", 4800), now=0.0)  # 200 ms
    assert len(part.acs_to_send(0.0)) == 2
    assert part.frames_queued == 8  # 2 of 10 frames went out within the lead
    dropped = part.interrupt(0.05, "r1")
    assert part.next_acs_due() == float("-inf")  # StopAudio is due at once
    assert part.acs_to_send(0.05) == [acs.stop_audio()]
    assert part.frames_queued == 0 and part.next_acs_due() is None
    part.agent_audio(audio_delta("r1", 480), now=0.06)  # late: dropped
    part.response_done("r1", 0.1)
    c = part._accounting.counters
    assert c.late_deltas_dropped == 1 and c.stop_audio_sent == 1 and c.barge_ins == 1
    assert c.agent_samples_sent + c.samples_dropped_by_barge_in == c.agent_samples_expected
    assert dropped > 0


def test_a_new_media_socket_restarts_pacing() -> None:
    part, got = playout(lead_ms=20)
    part.play_prompt(bytes(640 * 5), 0.0)
    assert len(part.acs_to_send(0.0)) == 1
    assert part.playing_until == pytest.approx(0.02)
    part.socket_replaced(5.0)
    assert part.playing_until == 5.0 and part.next_acs_due() == pytest.approx(4.98)
    assert got == [AcsSocketReplaced()]
