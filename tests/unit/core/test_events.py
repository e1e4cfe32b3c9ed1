"""The core's events: frozen, slotted, named as the conversation log has always named them."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from voicebridge.core import events
from voicebridge.core.events import BridgeEvent, as_record

EVENT_TYPES = typing.get_args(BridgeEvent)

#: The "event" values of the conversation log's core lines (readers key on them:
#: sim/simulate.py, the e2e tests, operators' queries).
LOG_NAMES = {
    "acs_malformed",
    "acs_metadata",
    "acs_rate_changed",
    "acs_rate_mismatch",
    "dtmf",
    "acs_socket_replaced",
    "session_created",
    "session_updated",
    "history_replayed",
    "voicelive_lost",
    "voicelive_malformed",
    "voicelive_error",
    "guard_blocked",
    "response_created",
    "response_done",
    "response_nudged",
    "turn_anomaly",
    "barge_in",
    "user_transcript",
    "agent_transcript",
    "speech_stopped",
    "truncated",
    "tool_requested",
    "tool_answered",
    "no_input",
    "server_tool",
}


def test_every_event_is_exported_and_keeps_its_log_name() -> None:
    assert {t.name for t in EVENT_TYPES} == LOG_NAMES
    assert len(EVENT_TYPES) == len(LOG_NAMES)
    assert {t.__name__ for t in EVENT_TYPES} <= set(events.__all__)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda t: t.__name__)
def test_events_are_frozen_and_slotted(cls: type) -> None:
    params = dataclasses.fields(cls)
    event = cls(*[None] * len(params))
    assert not hasattr(event, "__dict__")
    if params:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, params[0].name, "x")


def test_a_record_is_the_fields_then_the_name() -> None:
    record = as_record(events.ResponseEnded("r1", status="completed", reason=None))
    assert list(record.items()) == [
        ("response_id", "r1"),
        ("status", "completed"),
        ("reason", None),
        ("input_tokens", 0),
        ("output_tokens", 0),
        ("event", "response_done"),
    ]
    assert as_record(events.AcsSocketReplaced()) == {"event": "acs_socket_replaced"}
