"""Fuzz targets: arbitrary and mutated-valid input always has a handled outcome.

Each target takes whatever hypothesis makes — random text and bytes, random JSON, and
valid messages with fields mutated — and asserts the documented result: an event, or
the module's one documented error; for the CallBridge, never an exception at all.
Example counts come from the hypothesis profile (tests/conftest.py): ``make fuzz`` runs
10 000 per target.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebridge.core import acs, webhooks
from voicebridge.core import voicelive as vl
from voicebridge.core.bridge import CallBridge
from voicebridge.errors import AcsCodecError, WebhookError

pytestmark = pytest.mark.fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=16,
)
B64 = base64.b64encode(bytes(640)).decode()
odd_strings = st.sampled_from([B64, "AAAA", "AA==", "", "!!", "A" * 7, "\u0000", "é"])


def mutate(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``valid`` with some fields replaced, removed or added (one level deep and in ``data``)."""
    keys = list(valid)

    def build(drop: list[str], replace: dict[str, Any], inner: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in valid.items() if k not in drop}
        out.update(replace)
        for k, v in list(out.items()):
            if isinstance(v, dict) and inner:
                out[k] = {**v, **inner}
        return out

    return st.builds(
        build,
        st.lists(st.sampled_from(keys), max_size=2),
        st.dictionaries(st.sampled_from([*keys, "extra"]), json_values | odd_strings, max_size=2),
        st.dictionaries(st.text(max_size=20), json_values | odd_strings, max_size=3),
    )


# --------------------------------------------------------------------------- ACS codec

ACS_VALID = [
    json.loads(acs.audio_metadata_message(sample_rate=16000)),
    json.loads(acs.audio_data_message(B64)),
    json.loads(acs.audio_data_message(None, silent=True)),
    json.loads(acs.dtmf_message("5")),
]
acs_inputs = st.one_of(
    st.text(),
    st.binary(),
    json_values.map(json.dumps),
    st.sampled_from(ACS_VALID).flatmap(mutate).map(json.dumps),
)


@given(acs_inputs)
def test_fuzz_acs_codec(text: str | bytes) -> None:
    try:
        event = acs.parse(text)
    except AcsCodecError as exc:
        assert str(exc)
    else:
        assert isinstance(event, acs.AudioMetadata | acs.AudioData | acs.DtmfData | acs.Unknown)


# --------------------------------------------------------------------------- Event Grid / callbacks

EVENT_GRID_VALID = [
    {
        "id": "1",
        "eventType": webhooks.VALIDATION_EVENT,
        "data": {"validationCode": "abc"},
    },
    {
        "id": "2",
        "eventType": webhooks.INCOMING_CALL,
        "data": {
            "incomingCallContext": "ctx",
            "correlationId": "c",
            "serverCallId": "s",
            "from": {"rawId": "4:+1555"},
        },
    },
    {
        "id": "3",
        "type": webhooks.INCOMING_CALL,
        "specversion": "1.0",
        "data": {"incomingCallContext": "x"},
    },
]
CALLBACK_VALID = [
    {
        "id": "4",
        "type": "Microsoft.Communication.MediaStreamingFailed",
        "data": {
            "callConnectionId": "cc",
            "resultInformation": {"code": 400, "subCode": 8581, "message": "m"},
            "mediaStreamingUpdate": {"mediaStreamingStatusDetails": "x"},
        },
    },
    {
        "id": "5",
        "type": "Microsoft.Communication.CallDisconnected",
        "data": {"callConnectionId": "cc"},
    },
]


def bodies(valid: list[dict[str, Any]]) -> st.SearchStrategy[str | bytes]:
    event = st.sampled_from(valid).flatmap(mutate)
    return st.one_of(
        st.text(),
        st.binary(),
        json_values.map(json.dumps),
        st.lists(event | json_values, max_size=4).map(json.dumps),
        event.map(json.dumps),
    )


@given(bodies(EVENT_GRID_VALID))
def test_fuzz_event_grid_parser(body: str | bytes) -> None:
    try:
        events = webhooks.parse_delivery(body)
    except WebhookError as exc:
        assert str(exc)
    else:
        for e in events:
            assert isinstance(
                e, webhooks.SubscriptionValidation | webhooks.IncomingCall | webhooks.Ignored
            )
            if isinstance(e, webhooks.IncomingCall):
                assert isinstance(e.incoming_call_context, str)


@given(bodies(CALLBACK_VALID))
def test_fuzz_callback_parser(body: str | bytes) -> None:
    try:
        events = webhooks.parse_callbacks(body)
    except WebhookError as exc:
        assert str(exc)
    else:
        for e in events:
            assert isinstance(e.type, str) and isinstance(e.message, str)


# ----------------------------------------------------------- Voice Live events -> CallBridge

VL_VALID: list[dict[str, Any]] = [
    {"type": "session.created", "session": {"id": "s", "agent": {"name": "a"}}},
    {"type": "session.updated", "session": {"id": "s"}},
    {"type": "input_audio_buffer.speech_started", "audio_start_ms": 5, "item_id": "i"},
    {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 9, "item_id": "i"},
    {"type": "input_audio_buffer.committed", "item_id": "i"},
    {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "i",
        "transcript": "t",
    },
    {"type": "response.created", "response": {"id": "r"}},
    {"type": "response.audio.delta", "response_id": "r", "item_id": "i", "delta": B64},
    {"type": "response.audio.done", "response_id": "r", "item_id": "i"},
    {
        "type": "response.audio_transcript.done",
        "response_id": "r",
        "item_id": "i",
        "transcript": "t",
    },
    {"type": "response.done", "response": {"id": "r", "status": "completed"}},
    {"type": "conversation.item.truncated", "item_id": "i", "audio_end_ms": 3},
    {"type": "error", "error": {"code": "x", "message": "m"}},
    {"type": "rate_limits.updated"},
]
vl_events = st.one_of(
    st.sampled_from(VL_VALID),
    st.sampled_from(VL_VALID).flatmap(mutate),
    st.dictionaries(
        st.sampled_from(["type", "response", "delta", "response_id", "session"]), json_values
    ),
)


vl_frames = st.one_of(
    vl_events.map(lambda e: json.dumps(e).encode()),
    vl_events.map(json.dumps),
    st.binary(max_size=40),  # frames that are no JSON object at all
    json_values.map(json.dumps),
)


@given(st.lists(st.one_of(vl_frames, acs_inputs.map(lambda t: {"__acs__": t})), max_size=25))
def test_fuzz_callbridge_never_raises(script: list[Any]) -> None:
    """Any interleaving of Voice Live frames and ACS messages: handled, counted, and the
    outboxes stay well-formed (JSON object texts for Voice Live, strings for ACS)."""
    cfg = vl.build_session_config(input_hz=24000, output_hz=24000, voice="alloy")
    bridge = CallBridge(session_config=cfg)
    now = 0.0
    for item in script:
        now += 0.01
        if isinstance(item, dict):
            bridge.receive_acs(item["__acs__"])
        else:
            bridge.receive_voicelive(item, now)
        for text in bridge.voicelive_to_send():
            assert isinstance(text, str)
            message = json.loads(text)
            assert isinstance(message, dict) and isinstance(message.get("type"), str)
        for text in bridge.acs_to_send(now + 1.0):
            assert isinstance(acs.parse_outbound(text), acs.OutboundAudio | acs.OutboundStop)
    bridge.finish()
    report = bridge.report()
    assert report["inbound"]["conserved"]
