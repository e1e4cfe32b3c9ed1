"""Accounting: every caller and agent sample is accounted for; the report's shape."""

from __future__ import annotations

from dataclasses import fields

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.helpers import caller_frame, delta, make, sent, start_session, vl_in
from voicebridge.core.accounting import Counters
from voicebridge.core.bridge import PlayoutConfig, UplinkConfig


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
    b = make(vl_hz=vl_hz, playout=PlayoutConfig(lead_ms=60, frame_ms=frame_ms))
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


def test_the_report_keeps_its_keys() -> None:
    """Report keys are read by the relay, the service stats, metrics and the simulator."""
    b = make()
    start_session(b)
    b.finish()
    r = b.report()
    assert list(r) == [
        "acs_hz",
        "sessions",
        "voicelive_in_hz",
        "voicelive_out_hz",
        "inbound",
        "outbound",
        "counters",
        "guard",
        "outbound_latency_ms",
    ]
    assert list(r["sessions"]) == ["count", "appended", "agent_in"]
    assert list(r["inbound"]) == [
        "caller_samples_in",
        "voicelive_samples_appended",
        "expected_appended",
        "buffered_dropped",
        "conserved",
    ]
    assert list(r["outbound"]) == [
        "agent_samples_in",
        "agent_samples_expected",
        "agent_samples_sent",
        "samples_dropped_by_barge_in",
        "queued_unsent",
        "unsent_at_hangup",
        "padding_samples_sent",
        "conserved",
    ]
    assert list(r["counters"]) == [f.name for f in fields(Counters)]
    assert list(r["guard"]) == ["sent_by_type", "blocked", "coerced", "truncated", "split"]
    assert list(r["outbound_latency_ms"]) == ["count", "p50", "p99", "max"]


def test_audio_left_in_the_queue_is_not_conserved() -> None:
    b = make(playout=PlayoutConfig(lead_ms=20))
    start_session(b)
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}})
    vl_in(b, delta("r1", 2400))
    vl_in(b, {"type": "response.done", "response": {"id": "r1", "status": "completed"}})
    b.acs_to_send(0.0)
    b.finish()
    out = b.report()["outbound"]
    assert out["queued_unsent"] > 0 and not out["conserved"]
    assert out["agent_samples_expected"] == out["agent_samples_sent"] + out["queued_unsent"]


def test_audio_queued_when_the_caller_hung_up_is_counted_not_lost() -> None:
    b = make(playout=PlayoutConfig(lead_ms=20))
    start_session(b)
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}})
    vl_in(b, delta("r1", 2400))
    b.acs_to_send(0.0)
    b.finish(party_left=True)
    out = b.report()["outbound"]
    assert out["queued_unsent"] == 0 and out["unsent_at_hangup"] > 0 and out["conserved"]
    assert out["agent_samples_expected"] == out["agent_samples_sent"] + out["unsent_at_hangup"]


def test_caller_audio_dropped_while_waiting_is_a_counted_loss() -> None:
    b = make(vl_hz=16000, uplink=UplinkConfig(max_buffered_ms=20))
    for _ in range(3):
        b.receive_acs(caller_frame())  # no session yet: held, oldest dropped
    b.finish()
    inbound = b.report()["inbound"]
    assert inbound["buffered_dropped"] == 640 and inbound["conserved"]
    assert b.report()["sessions"] == {"count": 0, "appended": [], "agent_in": []}
