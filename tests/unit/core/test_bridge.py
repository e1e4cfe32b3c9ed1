"""CallBridge, the facade: codec dispatch, malformed input, the events it reports."""

from __future__ import annotations

import json

from tests.unit.core.helpers import caller_frame, counters, make, start_session, vl_in
from voicebridge.core import acs, events
from voicebridge.core import voicelive as vl


def test_malformed_input_is_counted_not_raised() -> None:
    b = make()
    start_session(b)
    b.events_received()
    b.receive_acs("garbage")
    b.receive_voicelive(b'{"type": "response.audio.delta"}')
    vl_in(b, {"type": "response.audio.delta", "response_id": "r", "delta": "!!!"})
    b.receive_voicelive(b"[1, 2]")  # a frame that is no JSON object
    c = counters(b)
    assert c["acs_malformed"] == 1 and c["voicelive_malformed"] == 3
    malformed = b.events_received()
    assert [type(e) for e in malformed] == [
        events.AcsMalformed,
        events.VoiceLiveMalformed,
        events.VoiceLiveMalformed,
        events.VoiceLiveMalformed,
    ]
    assert [e.name for e in malformed] == ["acs_malformed"] + ["voicelive_malformed"] * 3
    assert "invalid base64" in malformed[2].error and "unreadable" in malformed[3].error


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


def test_a_stream_at_another_rate_is_adopted_before_any_audio() -> None:
    b = make(vl_hz=24000)
    b.receive_acs(acs.audio_metadata_message(sample_rate=24000))
    assert b.acs_hz == 24000
    start_session(b)
    frame = caller_frame(samples=480)  # 20 ms at 24 kHz: passed through untouched
    b.receive_acs(frame)
    assert b.voicelive_to_send() == [vl.append_json(json.loads(frame)["audioData"]["data"])]
    b.receive_acs(acs.audio_metadata_message(sample_rate=16000))  # too late: reported
    assert b.acs_hz == 24000
    assert [type(e) for e in b.events_received() if e.name.startswith("acs_")] == [
        events.AcsMetadata,
        events.AcsRateChanged,
        events.AcsMetadata,
        events.AcsRateMismatch,
    ]
    assert b.report()["acs_hz"] == 24000


def test_dtmf_and_unknown_kinds_are_counted() -> None:
    b = make()
    b.receive_acs(acs.dtmf_message("5"))
    b.receive_acs(json.dumps({"kind": "SomethingNew", "somethingNew": {}}))
    c = counters(b)
    assert c["dtmf_tones"] == 1 and c["acs_unknown_kinds"] == 1 and c["acs_messages_in"] == 2
    got = b.events_received()
    assert events.Dtmf(kind="collecting", length=1) in got
    assert "5" not in repr(got)  # keys never appear in events (the conversation log)
