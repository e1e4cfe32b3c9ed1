"""Event Grid deliveries and Call Automation callbacks, parsed (protocols.md §1, §3).

Pure functions from a request body to small frozen dataclasses, so the routes only
decide what to do, and the parsers can be fuzzed without sockets. Anything unusable
raises :class:`~voicebridge.errors.WebhookError` with a clear message; unknown event
types are returned as :class:`Ignored`, never an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voicebridge.errors import WebhookError

__all__ = [
    "INCOMING_CALL",
    "VALIDATION_EVENT",
    "CallbackEvent",
    "DeliveryEvent",
    "Ignored",
    "IncomingCall",
    "SubscriptionValidation",
    "parse_callbacks",
    "parse_delivery",
]

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
INCOMING_CALL = "Microsoft.Communication.IncomingCall"
_CA_PREFIX = "Microsoft.Communication."


@dataclass(frozen=True, slots=True)
class SubscriptionValidation:
    validation_code: str


@dataclass(frozen=True, slots=True)
class IncomingCall:
    event_id: str
    incoming_call_context: str
    correlation_id: str
    server_call_id: str
    caller_raw_id: str
    callee_raw_id: str = ""  # the number (or ACS identity) that was called


@dataclass(frozen=True, slots=True)
class Ignored:
    event_type: str
    why: str


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One Call Automation callback; ``type`` without the ``Microsoft.Communication.`` prefix."""

    type: str
    call_connection_id: str | None
    result_code: Any
    sub_code: Any
    message: str
    status_details: str | None


DeliveryEvent = SubscriptionValidation | IncomingCall | Ignored


def _events(body: bytes | str) -> list[Mapping[str, Any]]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise WebhookError("body is not JSON") from None
    if isinstance(data, Mapping):
        data = [data]  # a single CloudEvent
    if not isinstance(data, list):
        raise WebhookError(f"expected a JSON array of events, got {type(data).__name__}")
    if not all(isinstance(e, Mapping) for e in data):
        raise WebhookError("every event must be a JSON object")
    return data


def _type(event: Mapping[str, Any]) -> str:
    value = event.get("eventType") or event.get("type")
    return value if isinstance(value, str) else ""


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_delivery(body: bytes | str) -> list[DeliveryEvent]:
    """An Event Grid delivery (Event Grid schema array, or CloudEvents object/array)."""
    out: list[DeliveryEvent] = []
    for event in _events(body):
        etype = _type(event)
        data = event.get("data")
        if etype == VALIDATION_EVENT:
            code = data.get("validationCode") if isinstance(data, Mapping) else None
            if not isinstance(code, str) or not code:
                raise WebhookError("validation event without data.validationCode")
            out.append(SubscriptionValidation(code))
        elif etype == INCOMING_CALL:
            if not isinstance(data, Mapping) or not isinstance(
                data.get("incomingCallContext"), str
            ):
                out.append(Ignored(etype, "no data.incomingCallContext"))
                continue
            caller, callee = data.get("from"), data.get("to")
            out.append(
                IncomingCall(
                    event_id=_str(event.get("id")),
                    incoming_call_context=data["incomingCallContext"],
                    correlation_id=_str(data.get("correlationId")),
                    server_call_id=_str(data.get("serverCallId")),
                    caller_raw_id=_str(caller.get("rawId")) if isinstance(caller, Mapping) else "",
                    callee_raw_id=_str(callee.get("rawId")) if isinstance(callee, Mapping) else "",
                )
            )
        else:
            out.append(Ignored(etype or "(no type)", "not handled"))
    return out


def parse_callbacks(body: bytes | str) -> list[CallbackEvent]:
    """A Call Automation callback POST: a JSON array of CloudEvents."""
    out = []
    for event in _events(body):
        data = event.get("data")
        data = data if isinstance(data, Mapping) else {}
        result = data.get("resultInformation")
        result = result if isinstance(result, Mapping) else {}
        update = data.get("mediaStreamingUpdate")
        details = update.get("mediaStreamingStatusDetails") if isinstance(update, Mapping) else None
        out.append(
            CallbackEvent(
                type=_type(event).removeprefix(_CA_PREFIX),
                call_connection_id=data.get("callConnectionId")
                if isinstance(data.get("callConnectionId"), str)
                else None,
                result_code=result.get("code"),
                sub_code=result.get("subCode"),
                message=_str(result.get("message")),
                status_details=details if isinstance(details, str) else None,
            )
        )
    return out
