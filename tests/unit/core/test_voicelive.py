"""Voice Live event helpers: classification from plain mappings, client events."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebridge.core import voicelive as vl
from voicebridge.errors import VoiceLiveEventError


def test_classifies_the_events_the_bridge_acts_on() -> None:
    cases = [
        (
            {
                "type": "session.created",
                "session": {"id": "s1", "agent": {"name": "a", "conversation_id": "c"}},
            },
            vl.SessionCreated(
                "s1",
                "c",
                {"name": "a", "conversation_id": "c"},
                None,
                None,
                "session.agent.conversation_id",
            ),
        ),
        (
            {"type": "session.updated", "session": {"id": "s1", "voice": "alloy"}},
            vl.SessionUpdated("s1", "alloy", None),
        ),
        (
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": 10, "item_id": "i"},
            vl.SpeechStarted(10, "i"),
        ),
        (
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 20, "item_id": "i"},
            vl.SpeechStopped(20, "i"),
        ),
        ({"type": "input_audio_buffer.committed", "item_id": "i"}, vl.InputCommitted("i")),
        (
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "i",
                "transcript": "hi",
            },
            vl.TranscriptionCompleted("i", "hi"),
        ),
        ({"type": "response.created", "response": {"id": "r"}}, vl.ResponseCreated("r")),
        (
            {
                "type": "response.done",
                "response": {
                    "id": "r",
                    "status": "cancelled",
                    "status_details": {"reason": "turn_detected"},
                },
            },
            vl.ResponseDone("r", "cancelled", "turn_detected"),
        ),
        (
            {"type": "response.audio.delta", "response_id": "r", "item_id": "i", "delta": "AAAA"},
            vl.AudioDelta("r", "i", "AAAA"),
        ),
        (
            {"type": "response.audio.done", "response_id": "r", "item_id": "i"},
            vl.AudioDone("r", "i"),
        ),
        (
            {"type": "response.audio_transcript.delta", "response_id": "r", "delta": "he"},
            vl.TranscriptDelta("r", "he"),
        ),
        (
            {
                "type": "response.audio_transcript.done",
                "response_id": "r",
                "item_id": "i",
                "transcript": "hello",
            },
            vl.TranscriptDone("r", "i", "hello"),
        ),
        (
            {"type": "conversation.item.truncated", "item_id": "i", "audio_end_ms": 1500},
            vl.ItemTruncated("i", 1500),
        ),
        (
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": "x",
                    "message": "m",
                    "event_id": "e",
                },
            },
            vl.Error("invalid_request_error", "x", "m", None, "e"),
        ),
        ({"type": "rate_limits.updated"}, vl.Other("rate_limits.updated")),
    ]
    for event, expected in cases:
        assert vl.classify(event) == expected


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"type": 3},
        {"type": "response.audio.delta", "response_id": "r"},
        {"type": "response.created"},
        {"type": "response.done", "response": {"status": "completed"}},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": "x"},
        {"type": "session.created", "session": None},
    ],
)
def test_missing_fields_raise_the_event_error(event: dict[str, object]) -> None:
    with pytest.raises(VoiceLiveEventError):
        vl.classify(event)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["type", "response", "session", "delta", "response_id", "error", "item_id"]
        ),
        st.none()
        | st.integers()
        | st.text()
        | st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
    ).map(lambda d: d | {"type": d.get("type")} if "type" in d else d)
)
def test_any_mapping_classifies_or_raises_the_event_error(event: dict[str, object]) -> None:
    for etype in (
        event.get("type"),
        "response.done",
        "session.created",
        "error",
        "response.audio.delta",
    ):
        try:
            result = vl.classify({**event, "type": etype})
        except VoiceLiveEventError as exc:
            assert str(exc)
        else:
            assert type(result).__module__ == vl.__name__


def test_session_config_rate_modes_and_vad() -> None:
    cfg = vl.build_session_config(input_hz=16000, output_hz=16000, voice="en-US-AvaNeural")
    assert cfg["input_audio_sampling_rate"] == 16000
    assert cfg["output_audio_format"] == "pcm16_16000hz"
    assert cfg["voice"] == {"type": "azure-standard", "name": "en-US-AvaNeural"}
    td = cfg["turn_detection"]
    assert td["type"] == "azure_semantic_vad" and td["interrupt_response"] and td["auto_truncate"]
    assert cfg["input_audio_noise_reduction"] == {"type": "azure_deep_noise_suppression"}
    assert cfg["input_audio_echo_cancellation"] == {"type": "server_echo_cancellation"}
    cfg = vl.build_session_config(input_hz=24000, output_hz=24000, voice="alloy")
    assert cfg["output_audio_format"] == "pcm16" and cfg["voice"] == "alloy"
    with pytest.raises(ValueError):
        vl.build_session_config(input_hz=8000, output_hz=24000, voice=None)


def test_greeting_events() -> None:
    # cancel_previous false: a response the server started meanwhile is never cut short
    assert vl.response_create() == {
        "type": "response.create",
        "response": {"cancel_previous": False},
    }
    pre = vl.greeting_pre_generated("Hello")
    assert pre["response"]["cancel_previous"] is False
    msg = pre["response"]["pre_generated_assistant_message"]
    assert msg["role"] == "assistant" and msg["content"] == [{"type": "text", "text": "Hello"}]


@given(st.binary(max_size=4000))
def test_append_json_is_exactly_what_json_dumps_writes(pcm: bytes) -> None:
    b64 = base64.b64encode(pcm).decode()
    assert vl.append_json(b64) == json.dumps(vl.input_audio_append(b64))


@given(st.binary(max_size=400))
def test_append_audio_reads_back_what_append_json_wrote(pcm: bytes) -> None:
    b64 = base64.b64encode(pcm).decode()
    assert vl.append_audio(vl.append_json(b64)) == b64
    assert vl.append_audio(json.dumps(vl.response_create())) is None


def test_parse_reads_wire_frames() -> None:
    frame = b'{"type": "session.updated", "session": {"id": "s", "expires_at": 1700000000}}'
    assert vl.parse(frame) == vl.SessionUpdated("s", None, 1700000000.0)
    assert vl.parse(frame.decode()) == vl.parse(frame)
    created = vl.parse(b'{"type": "session.created", "session": {"expires_at": 12.5}}')
    assert isinstance(created, vl.SessionCreated) and created.expires_at == 12.5
    # expires_at that is no number is left out rather than guessed at
    odd = vl.parse(b'{"type": "session.created", "session": {"expires_at": "soon"}}')
    assert isinstance(odd, vl.SessionCreated) and odd.expires_at is None


@pytest.mark.parametrize("frame", [b"", b"{", b"\xff\xfe", b"[1]", b'"text"', b"null", "{]"])
def test_unreadable_frames_raise_the_event_error(frame: bytes | str) -> None:
    with pytest.raises(VoiceLiveEventError, match="unreadable frame"):
        vl.parse(frame)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"conversation_id": "c"}, "session.conversation_id"),
        ({"agent": {"conversation_id": "c"}}, "session.agent.conversation_id"),
        ({"agent": {"thread_id": "c"}}, "session.agent.thread_id"),
        ({"agent": {"name": "a"}}, None),
    ],
)
def test_session_created_says_where_the_conversation_id_was(
    payload: dict[str, object], field: str | None
) -> None:
    ev = vl.classify({"type": "session.created", "session": {"id": "s", **payload}})
    assert isinstance(ev, vl.SessionCreated)
    assert ev.conversation_id_field == field
    assert ev.conversation_id == ("c" if field else None)


@pytest.mark.parametrize(
    ("mode", "model", "default"),
    [
        ("model", "gpt-realtime", "whisper-1"),
        ("model", "gpt-realtime-mini", "whisper-1"),
        ("model", "gpt-4o-realtime-preview", "whisper-1"),
        ("model", "gpt-4o-mini-realtime-preview", "whisper-1"),
        ("model", "gpt-4.1", "azure-speech"),
        ("model", "phi4-mini", "azure-speech"),
        ("agent", None, "azure-speech"),
        ("agent", "gpt-realtime", "azure-speech"),
    ],
)
def test_transcription_models_follow_the_model_family(
    mode: str, model: str | None, default: str
) -> None:
    supported = vl.transcription_models(mode, model)
    assert supported[0] == default
    assert ("azure-speech" in supported) == (default == "azure-speech")
