"""Event Grid ``IncomingCall`` webhook and Call Automation callbacks (protocols.md §1, §3).

The webhook answers fast: it registers the call, starts ``answer_call`` in the
background and returns 200 at once — a slow reply makes Event Grid retry, which
would mean a second answer attempt. Retries that still arrive are dropped by event id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from voicebridge.acs import client as acs_client
from voicebridge.calls import Call

log = logging.getLogger(__name__)

router = APIRouter(tags=["calls"])

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
INCOMING_CALL = "Microsoft.Communication.IncomingCall"
_CA = "Microsoft.Communication."


def _events(body: bytes) -> list[Mapping[str, Any]] | None:
    """The delivered events (an array, or one CloudEvents object), or None if unusable."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(e, Mapping) for e in data):
        return None
    return data


def _event_type(event: Mapping[str, Any]) -> str:
    value = event.get("eventType") or event.get("type") or ""
    return value if isinstance(value, str) else ""


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


@router.options("/api/incoming-call")
async def cloudevents_handshake(request: Request) -> Response:
    """CloudEvents webhook validation: echo the requesting origin back."""
    origin = request.headers.get("webhook-request-origin", "*")
    return Response(
        status_code=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"}
    )


@router.post("/api/incoming-call")
async def incoming_call(request: Request) -> Response:
    """Event Grid delivery: the validation handshake, or IncomingCall events."""
    ctx = request.app.state.ctx
    events = _events(await request.body())
    if events is None:
        return _bad_request("expected a JSON array of Event Grid events or a CloudEvent")
    answered = 0
    for event in events:
        etype = _event_type(event)
        data = event.get("data")
        if etype == VALIDATION_EVENT:
            code = data.get("validationCode") if isinstance(data, Mapping) else None
            if not isinstance(code, str):
                return _bad_request("validation event without data.validationCode")
            log.info("Event Grid subscription validated")
            return JSONResponse({"validationResponse": code})
        if etype != INCOMING_CALL:
            log.info("ignoring Event Grid event %s", etype or "(no type)")
            continue
        if not isinstance(data, Mapping) or not isinstance(data.get("incomingCallContext"), str):
            log.warning("IncomingCall without data.incomingCallContext: ignored")
            continue
        event_id = str(event.get("id") or "")
        if event_id and ctx.registry.seen_before(event_id):
            log.info(
                "IncomingCall %s delivered again (aeg-delivery-count=%s): ignored",
                event_id,
                request.headers.get("aeg-delivery-count", "?"),
            )
            continue
        _start_answer(ctx, data)
        answered += 1
    return JSONResponse({"answering": answered})


def _start_answer(ctx: Any, data: Mapping[str, Any]) -> Call:
    caller = data.get("from")
    caller_id = caller.get("rawId", "") if isinstance(caller, Mapping) else ""
    call: Call = ctx.registry.new_call(
        correlation_id=str(data.get("correlationId") or ""),
        server_call_id=str(data.get("serverCallId") or ""),
        caller=str(caller_id),
    )
    call.log.write("incoming_call", correlation_id=call.correlation_id)
    ctx.spawn(_answer(ctx, call, str(data["incomingCallContext"])), name=f"answer-{call.key[:8]}")
    return call


async def _answer(ctx: Any, call: Call, incoming_call_context: str) -> None:
    s = ctx.settings
    try:
        call.call_connection_id = await acs_client.answer(
            ctx.acs,
            incoming_call_context=incoming_call_context,
            callback_url=f"{s.public_base_url}/api/callbacks/{call.key}",
            transport_url=f"{s.media_base_url}/ws/media/{call.key}",
            acs_rate=s.acs_audio_rate,
        )
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        log.error("answer_call failed for %s: %s %s", call.label, type(exc).__name__, status or "")
        call.log.write("answer_failed", error=type(exc).__name__, status=status)
        ctx.registry.end(call, "answer_failed")
        return
    log.info("answered call %s (correlation %s)", call.call_connection_id, call.correlation_id)
    call.log.write("answered", call_connection_id=call.call_connection_id)


@router.post("/api/callbacks/{call_key}")
async def callbacks(call_key: str, request: Request) -> Response:
    """Call Automation mid-call events (a JSON array of CloudEvents)."""
    ctx = request.app.state.ctx
    events = _events(await request.body())
    if events is None:
        return _bad_request("expected a JSON array of CloudEvents")
    call = ctx.registry.get(call_key)
    if call is None:
        # Late events for a call that already ended are normal (CallDisconnected
        # after our hang-up); acknowledge so ACS does not retry.
        log.info("callback for an unknown or ended call: %s", [_event_type(e) for e in events])
        return Response(status_code=204)
    for event in events:
        await _callback(ctx, call, event)
    return Response(status_code=204)


async def _callback(ctx: Any, call: Call, event: Mapping[str, Any]) -> None:
    etype = _event_type(event).removeprefix(_CA)
    data = event.get("data") if isinstance(event.get("data"), Mapping) else {}
    assert isinstance(data, Mapping)
    result = data.get("resultInformation")
    result = result if isinstance(result, Mapping) else {}
    if not call.call_connection_id and isinstance(data.get("callConnectionId"), str):
        call.call_connection_id = data["callConnectionId"]
    call.log.write("callback", type=etype, result=dict(result) if result else None)
    if etype == "CallConnected":
        call.connected = True
        log.info("call %s connected", call.label)
    elif etype == "MediaStreamingStarted":
        log.info("call %s: media streaming started", call.label)
    elif etype in ("MediaStreamingFailed", "MediaStreamingStopped"):
        update = data.get("mediaStreamingUpdate")
        details = update.get("mediaStreamingStatusDetails") if isinstance(update, Mapping) else None
        sub_code = result.get("subCode")
        hint = ""
        if sub_code == 8581:
            hint = (
                " — ACS could not keep the media WebSocket: check that PUBLIC_BASE_URL is a"
                " public wss:// host that forwards WebSocket upgrades, and this app's logs for"
                " a handler error or rejected token on /ws/media"
            )
        level = logging.ERROR if etype == "MediaStreamingFailed" else logging.INFO
        log.log(
            level,
            "call %s: %s code=%s subCode=%s status=%s: %s%s",
            call.label,
            etype,
            result.get("code"),
            sub_code,
            details,
            result.get("message", ""),
            hint,
        )
        if etype == "MediaStreamingFailed":
            await ctx.hang_up(call)
            _end(ctx, call, "media_failed")
    elif etype == "AnswerFailed":
        log.error("call %s: answer failed: %s", call.label, result.get("message", ""))
        _end(ctx, call, "answer_failed")
    elif etype == "CallDisconnected":
        log.info("call %s disconnected", call.label)
        _end(ctx, call, "caller_hung_up")
    else:
        log.info("call %s: %s", call.label, etype)


def _end(ctx: Any, call: Call, outcome: str) -> None:
    """End ``call``: a running media relay winds down and records the outcome itself."""
    call.outcome = call.outcome or outcome
    call.disconnected.set()
    if call.media_task is None or call.media_task.done():
        ctx.registry.end(call, outcome)
