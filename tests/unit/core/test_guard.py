"""The outbound guard: order, text coercion and caps, size caps, one response per turn."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebridge.core import voicelive as vl
from voicebridge.core.guard import TRUNCATION_MARKER, OutboundGuard, cap_text, to_text
from voicebridge.core.responses import ResponseState, Trigger
from voicebridge.errors import GuardRejected


def parsed(g: OutboundGuard, message: dict[str, Any]) -> list[dict[str, Any]]:
    """``g.check(message)``: the wire texts it returns, parsed back."""
    return [json.loads(text) for text in g.check(message)]


def configured(**kw: int) -> OutboundGuard:
    g = OutboundGuard(ResponseState(), **kw)
    g.check(vl.session_update({"instructions": "be nice"}))
    return g


def test_session_update_must_be_first() -> None:
    g = OutboundGuard(ResponseState())
    for msg in (
        vl.input_audio_append("AAAA"),
        vl.response_create(),
        {"type": "conversation.item.create"},
    ):
        with pytest.raises(GuardRejected, match="before_session_update"):
            g.check(msg)
    assert g.blocked["before_session_update"] == 3
    assert parsed(g, vl.session_update({}))[0]["type"] == "session.update"
    assert g.check(vl.input_audio_append("AAAA")) == [vl.append_json("AAAA")]
    assert g.append("AAAA") == [vl.append_json("AAAA")]


def test_the_wire_text_is_what_the_sdk_would_have_written() -> None:
    """One serialisation, json.dumps as in the SDK's send(dict): same bytes on the wire."""
    g = OutboundGuard(ResponseState())
    update = vl.session_update(vl.build_session_config(input_hz=24000, output_hz=24000, voice="x"))
    assert g.check(update) == [json.dumps(update)]
    assert g.check(vl.response_create()) == [json.dumps(vl.response_create())]


def test_the_size_cap_measures_the_wire_text() -> None:
    fits = vl.message_item_create("user", "x")
    size = len(json.dumps(fits))
    g = configured(max_message_bytes=size)
    assert g.check(fits) == [json.dumps(fits)]
    with pytest.raises(GuardRejected, match="too_large"):
        g.check(vl.message_item_create("user", "xy"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        (None, ""),
        (42, "42"),
        (1.5, "1.5"),
        (True, "True"),
        ({"b": 1, "a": [1, "x"]}, '{"b":1,"a":[1,"x"]}'),
        (["x", 2], '["x",2]'),
    ],
)
def test_to_text(value: object, expected: str) -> None:
    assert to_text(value)[0] == expected


def test_text_fields_are_coerced_everywhere() -> None:
    g = configured()
    g.responses.user_turn()
    item = parsed(g, vl.message_item_create("user", {"order": 12}))[0]
    assert item["item"]["content"][0]["text"] == '{"order":12}'
    out = parsed(
        g,
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c", "output": [1, 2]},
        },
    )[0]
    assert out["item"]["output"] == "[1,2]"
    greeting = parsed(g, vl.greeting_pre_generated(None))[0]  # type: ignore[arg-type]
    assert greeting["response"]["pre_generated_assistant_message"]["content"][0]["text"] == ""
    assert g.coerced == 3


def test_session_instructions_coerced() -> None:
    g = OutboundGuard(ResponseState())
    msg = parsed(g, vl.session_update({"instructions": ["a", "b"]}))[0]
    assert msg["session"]["instructions"] == '["a","b"]'


def test_text_is_capped_with_a_marker() -> None:
    g = configured(max_text_bytes=100)
    msg = parsed(g, vl.message_item_create("user", "é" * 500))[0]
    text = msg["item"]["content"][0]["text"]
    assert text.endswith(TRUNCATION_MARKER) and len(text.encode()) <= 100
    assert g.truncated == 1
    assert cap_text("short", 100) == ("short", False)


def test_audio_appends_are_split_never_dropped() -> None:
    g = configured(max_message_bytes=4096)
    pcm = bytes(range(256)) * 100  # 25600 bytes
    b64 = base64.b64encode(pcm).decode()
    parts = g.check(vl.input_audio_append(b64))
    assert len(parts) > 1 and g.split == 1
    assert all(len(p) <= 4096 for p in parts)  # the wire text, as sent
    audio = [vl.append_audio(p) or "" for p in parts]
    assert all(json.loads(p) == vl.input_audio_append(a) for p, a in zip(parts, audio, strict=True))
    assert all(len(base64.b64decode(a)) % 2 == 0 for a in audio)
    assert b"".join(base64.b64decode(a) for a in audio) == pcm


def test_other_oversized_messages_are_refused() -> None:
    g = configured(max_message_bytes=4096, max_text_bytes=100_000)
    with pytest.raises(GuardRejected, match="too_large"):
        g.check(vl.message_item_create("user", "x" * 5000))
    assert g.blocked["too_large"] == 1


def test_one_response_create_per_turn_and_never_while_active() -> None:
    g = configured()
    assert g.check(vl.response_create())  # the greeting: turn 0
    with pytest.raises(GuardRejected, match="response_active"):
        g.check(vl.response_create())
    g.responses.handle(Trigger.CREATED, "r1")
    with pytest.raises(GuardRejected, match="response_active"):
        g.check(vl.response_create())
    g.responses.handle(Trigger.DONE, "r1")
    with pytest.raises(GuardRejected, match="already_requested_this_turn"):
        g.check(vl.response_create())
    g.responses.user_turn()
    assert g.check(vl.response_create())
    assert g.blocked == {"response_active": 2, "already_requested_this_turn": 1}
    assert g.sent_by_type["response.create"] == 2


def test_cancel_only_while_active() -> None:
    g = configured()
    with pytest.raises(GuardRejected, match="no_active_response"):
        g.check(vl.response_cancel())
    g.responses.handle(Trigger.CREATED, "r")
    assert g.check(vl.response_cancel()) == [json.dumps(vl.response_cancel())]


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=10,
    )
)
def test_any_content_becomes_a_capped_string(value: object) -> None:
    g = configured(max_text_bytes=256)
    (wire,) = g.check(vl.message_item_create("user", value))  # always serialisable
    text = json.loads(wire)["item"]["content"][0]["text"]
    assert isinstance(text, str) and len(text.encode()) <= 256
