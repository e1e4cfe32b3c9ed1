"""Event Grid ``IncomingCall`` webhook and Call Automation callbacks (protocols.md §1, §3, §5).

The webhook answers fast: it registers the call, starts ``answer_call`` in the
background and returns 200 at once — a slow reply makes Event Grid retry, which
would mean a second answer attempt. Retries that still arrive are dropped by event id.

Every request is checked before its body is parsed: content type, size
(``MAX_BODY_BYTES``), then the configured credentials — the Event Grid shared secret
and/or Entra token on the webhook (the validation handshake is always answered),
the per-call URL key and the ACS JWT on callbacks (:data:`~voicebridge.deps.AcsCallbackDep`,
checked before the body is read).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from voicebridge import logs, observations
from voicebridge.acs import client as acs_client
from voicebridge.app import AppContext
from voicebridge.calls import OUTCOMES, Call, CallOutcome
from voicebridge.cluster import service
from voicebridge.core import webhooks
from voicebridge.deps import AcsCallbackDep, CtxDep
from voicebridge.errors import WebhookError
from voicebridge.outbound import create_failed
from voicebridge.security import TokenRejected, constant_time_equal

log = logging.getLogger(__name__)

router = APIRouter(tags=["calls"])

_JSON_TYPES = (
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | JSONResponse:
    """The body, or the error response for a wrong content type or an oversized body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in _JSON_TYPES:
        return _error(415, f"content type must be JSON, not {ctype or '(none)'}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _error(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _error(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.options("/api/incoming-call")
async def cloudevents_handshake(request: Request) -> Response:
    """CloudEvents webhook validation: echo the requesting origin back."""
    origin = request.headers.get("webhook-request-origin", "*")
    return Response(
        status_code=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"}
    )


@router.post("/api/incoming-call")
async def incoming_call(request: Request, ctx: CtxDep) -> Response:
    """Event Grid delivery: the validation handshake, or IncomingCall events."""
    s = ctx.settings
    body = await _read_body(request, s.max_body_bytes)
    if isinstance(body, Response):
        return body
    try:
        events = webhooks.parse_delivery(body)
    except WebhookError as exc:
        log.warning("Event Grid delivery refused: %s", exc)
        return _error(400, str(exc))
    for event in events:
        if isinstance(event, webhooks.SubscriptionValidation):
            # Always answered: it proves URL ownership to Event Grid and echoes a code
            # (validation events may come without the delivery token).
            log.info("Event Grid subscription validated")
            return JSONResponse({"validationResponse": event.validation_code})
    denied = await _check_event_grid(ctx, request)
    if denied is not None:
        return denied
    if ctx.draining and ctx.cluster is None:
        # Event Grid retries a 503 (after ~10 s), by when the ingress routes it to a
        # replica that is not shutting down; the caller just rings a little longer. With
        # many nodes a draining one answers: the call runs wherever its media socket lands,
        # and the ingress no longer sends sockets here.
        log.warning("draining: IncomingCall delivery refused with 503 for a retry elsewhere")
        return _error(503, "draining")
    answering = 0
    for event in events:
        if isinstance(event, webhooks.Ignored):
            log.info("ignoring Event Grid event %s (%s)", event.event_type, event.why)
        elif isinstance(event, webhooks.IncomingCall):
            with logs.call_context(logs.CallIds(event.correlation_id)):
                if event.event_id and not await _first_delivery(ctx, event):
                    log.info(
                        "IncomingCall %s delivered again (aeg-delivery-count=%s): ignored",
                        event.event_id,
                        request.headers.get("aeg-delivery-count", "?"),
                    )
                    continue
                ids = ctx.registry.signer.new_call()
                if not await _admit(ctx, ids[0]):
                    _reject(ctx, event, "busy")
                else:
                    _start_answer(ctx, event, ids)
                    answering += 1
    return JSONResponse({"answering": answering})


async def _first_delivery(ctx: AppContext, event: webhooks.IncomingCall) -> bool:
    """False for an Event Grid retry of a call some node (this one alone, without Redis)
    has already taken."""
    if ctx.cluster is not None:
        first = await ctx.cluster.first_delivery(event.event_id, event.server_call_id)
        if first is not None:
            return first
    return not ctx.registry.seen_before(event.event_id)


async def _admit(ctx: AppContext, call_id: str) -> bool:
    """One process: below MAX_CONCURRENT_CALLS. Many nodes: MAX_CONCURRENT_CALLS is per
    node, and a call is refused only when every node is full and no more nodes can come
    (MAX_NODES); the node that gets the media socket runs the call anyway."""
    if ctx.cluster is not None:
        admitted = await ctx.cluster.admit(call_id)
        if admitted is not None:
            return admitted
    return ctx.registry.active < ctx.settings.max_concurrent_calls


async def _check_event_grid(ctx: AppContext, request: Request) -> Response | None:
    """The configured Event Grid protections; None when the request passes."""
    s = ctx.settings
    if s.eventgrid_shared_secret is not None:
        given = request.query_params.get("secret")
        if not constant_time_equal(given, s.eventgrid_shared_secret.get_secret_value()):
            log.warning("Event Grid delivery refused: wrong or missing shared secret")
            return _error(401, "unauthorized")
    if ctx.eventgrid_tokens is not None:
        try:
            await ctx.eventgrid_tokens.validate(request.headers.get("authorization"))
        except TokenRejected as exc:
            log.warning("Event Grid delivery refused: Entra token %s", exc.reason)
            return _error(401, "unauthorized")
    return None


def _reject(ctx: AppContext, event: webhooks.IncomingCall, why: str) -> None:
    """Refuse a call we cannot take: ACS gives the caller a busy signal at once."""
    log.warning(
        "IncomingCall %s rejected (%s): %d active calls, limit %d",
        event.correlation_id,
        why,
        ctx.registry.active,
        ctx.settings.max_concurrent_calls,
    )
    ctx.stats.call_ended(f"rejected_{why}")
    ctx.spawn(_reject_call(ctx, event.incoming_call_context), name=f"reject-{event.event_id[:8]}")


async def _reject_call(ctx: AppContext, incoming_call_context: str) -> None:
    try:
        assert ctx.acs is not None  # built by AppContext.start, before any request
        await ctx.acs.reject_call(incoming_call_context, call_reject_reason="busy")
    except Exception as exc:
        log.error("reject_call failed: %s %s", type(exc).__name__, getattr(exc, "status_code", ""))


def _start_answer(ctx: AppContext, event: webhooks.IncomingCall, ids: tuple[str, str, str]) -> Call:
    call: Call = ctx.registry.new_call(
        correlation_id=event.correlation_id,
        server_call_id=event.server_call_id,
        caller=event.caller_raw_id,
        ids=ids,
    )
    call.callee = event.callee_raw_id
    profile = ctx.profiles.for_number(event.callee_raw_id)  # unknown numbers: default
    call.profile, call.settings = profile.name, profile.settings
    call.log.write("incoming_call", correlation_id=call.correlation_id, profile=call.profile)
    # The call's trace starts here and ends in CallRegistry.end (a no-op when tracing is off).
    call.span = ctx.telemetry.start(
        "call",
        None,  # a root span (or a child of the Event Grid request's, when traced)
        **{
            "voicebridge.correlation_id": call.correlation_id,
            "voicebridge.server_call_id": call.server_call_id or None,
            "voicebridge.profile": call.profile,
        },
    )
    with logs.call_context(call):  # the answer task, and its log lines, belong to the call
        ctx.spawn(_answer(ctx, call, event.incoming_call_context), name=f"answer-{call.id}")
    return call


async def _answer(ctx: AppContext, call: Call, incoming_call_context: str) -> None:
    s = ctx.settings
    if ctx.cluster is not None:  # the record first: the media socket may land anywhere
        await ctx.cluster.answering(call, traceparent=ctx.telemetry.traceparent(call.span))
    with ctx.telemetry.use("answer", call.span) as span:
        try:
            assert ctx.acs is not None  # built by AppContext.start, before any request
            call.call_connection_id = await acs_client.answer(
                ctx.acs,
                incoming_call_context=incoming_call_context,
                callback_url=f"{s.public_base_url}/api/callbacks/{call.callback_token}",
                transport_url=f"{s.media_base_url}/ws/media/{call.media_token}",
                acs_rate=s.acs_audio_rate,
            )
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            log.error(
                "answer_call failed for %s: %s %s", call.label, type(exc).__name__, status or ""
            )
            call.log.write("answer_failed", error=type(exc).__name__, status=status)
            span.fail(f"{type(exc).__name__} {status or ''}".strip())
            ctx.registry.end(call, CallOutcome.ANSWER_FAILED)
            return
        span.set_attribute("voicebridge.call_connection_id", call.call_connection_id)
    log.info(
        "answered call %s (correlation %s, profile %s)",
        call.call_connection_id,
        call.correlation_id,
        call.profile,
    )
    call.log.write("answered", call_connection_id=call.call_connection_id)
    if ctx.cluster is not None and call.call_connection_id:
        await ctx.cluster.update(call.id, ccid=call.call_connection_id)
        if call.media_task is None and not call.ended.is_set():
            ctx.registry.hand_off(call)  # whichever node gets the media socket runs it


@router.post("/api/callbacks/{url_key}")
async def callbacks(call_id: AcsCallbackDep, request: Request, ctx: CtxDep) -> Response:
    """Call Automation mid-call events (a JSON array of CloudEvents); ``call_id`` is
    authenticated (per-call URL key and ACS JWT) before the body is read."""
    observations.observe(
        "acs_callback_content_type", value=request.headers.get("content-type", "(none)")
    )
    body = await _read_body(request, ctx.settings.max_body_bytes)
    if isinstance(body, Response):
        return body
    try:
        events = webhooks.parse_callbacks(body)
    except WebhookError as exc:
        log.warning("callback refused: %s", exc)
        return _error(400, str(exc))
    call = ctx.registry.get(call_id)
    if call is None and ctx.cluster is not None:
        await _forward(ctx, call_id, body, events)
        return Response(status_code=204)
    span = call.span if call is not None else None
    with logs.call_context(call or ctx.registry.ids_of(call_id)), ctx.telemetry.activate(span):
        if call is None:
            # Late events for a call that already ended are normal (CallDisconnected
            # after our hang-up); acknowledge so ACS does not retry.
            log.info("callback for an ended call: %s", [e.type for e in events])
            return Response(status_code=204)
        for event in events:
            await _callback(ctx, call, event)
    return Response(status_code=204)


async def _forward(
    ctx: AppContext, call_id: str, body: bytes, events: list[webhooks.CallbackEvent]
) -> None:
    """Many nodes: a callback for a call this node does not run. What must survive a
    lost message goes into the record first (the call ended; its connection id); then
    the delivery goes to the owner, which handles it as if it had come in itself. With
    no owner listening, a ``MediaStreamingFailed`` is this node's to end: apology and
    hang-up through Call Automation."""
    cluster = ctx.cluster
    assert cluster is not None
    record = await cluster.record(call_id)
    ccid = next((e.call_connection_id for e in events if e.call_connection_id), None)
    with logs.call_context(logs.CallIds((record or {}).get("corr", ""), ccid)):
        if record is not None:
            if ccid and not record.get("ccid"):
                await cluster.update(call_id, ccid=ccid)
                record["ccid"] = ccid
            outbound = record.get("dir") == "outbound"
            for event in events:
                if event.type == "CallDisconnected" and not record.get("we_hung_up"):
                    # the other party left; if the node that held the call had died,
                    # that is why
                    dead = record.get("owner") and not await cluster.alive(record["owner"])
                    hung_up = CallOutcome.CALLEE_HUNG_UP if outbound else CallOutcome.CALLER_HUNG_UP
                    outcome = CallOutcome.OWNER_LOST if dead else hung_up
                    await cluster.ended(call_id, outcome, we_hung_up=False)
                elif event.type == "AnswerFailed":
                    await cluster.ended(call_id, CallOutcome.ANSWER_FAILED, we_hung_up=False)
                elif event.type == "CreateCallFailed":
                    outcome, failure = create_failed(event)
                    await cluster.update(call_id, failure=failure)
                    await cluster.ended(call_id, outcome, we_hung_up=False)
        received = await cluster.forward(call_id, body)
        types = [e.type for e in events]
        if received:
            log.info("callback %s forwarded to the call's node", types)
            return
        log.info("callback %s for call %s: no node holds it", types, call_id)
        if record is None or record.get("state") == "ended":
            return
        if "MediaStreamingFailed" in types and received == 0:
            if record.get("owner"):  # its node died: that is the outcome, whatever follows
                await cluster.ended(call_id, CallOutcome.OWNER_LOST, we_hung_up=False)
            ctx.spawn(
                service.end_orphan(ctx, call_id, record, media_gone=True),
                name=f"orphan-{call_id}",
            )


async def deliver(ctx: AppContext, call: Call, message: dict[str, Any]) -> None:
    """A message for a call this node runs, from another node (or the record, after a
    pub/sub gap): a forwarded callback delivery, or "the call has ended"."""
    with logs.call_context(call), ctx.telemetry.activate(call.span):
        if message.get("t") == "callbacks":
            try:
                events = webhooks.parse_callbacks(str(message.get("body", "")).encode())
            except WebhookError as exc:
                log.warning("forwarded callback refused: %s", exc)
                return
            for event in events:
                await _callback(ctx, call, event)
        elif message.get("t") == "ended":
            log.info("call %s ended while this node was not listening", call.label)
            if call.we_hung_up and call.relay is not None:
                call.disconnected.set()
            else:
                outcome = str(message.get("outcome") or "")
                known = outcome in OUTCOMES
                _end(ctx, call, CallOutcome(outcome) if known else CallOutcome.CALLER_HUNG_UP)


async def _callback(ctx: AppContext, call: Call, event: webhooks.CallbackEvent) -> None:
    if not call.call_connection_id and event.call_connection_id:
        call.call_connection_id = event.call_connection_id
    call.log.write(
        "callback",
        type=event.type,
        code=event.result_code,
        sub_code=event.sub_code,
        message=event.message or None,
    )
    etype = event.type
    if etype == "CallConnected":
        call.connected = True
        what = "answered by the callee" if call.direction == "outbound" else "connected"
        log.info("call %s %s", call.label, what)
    elif etype == "MediaStreamingStarted":
        log.info("call %s: media streaming started", call.label)
    elif etype in ("MediaStreamingFailed", "MediaStreamingStopped"):
        hint = ""
        if event.sub_code == 8581:
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
            event.result_code,
            event.sub_code,
            event.status_details,
            event.message,
            hint,
        )
        if etype == "MediaStreamingFailed":
            await ctx.hang_up(call)
            _end(ctx, call, CallOutcome.MEDIA_FAILED)
    elif etype in ("CallTransferAccepted", "CallTransferFailed"):
        log.log(
            logging.INFO if etype == "CallTransferAccepted" else logging.WARNING,
            "call %s: %s code=%s subCode=%s: %s",
            call.label,
            etype,
            event.result_code,
            event.sub_code,
            event.message,
        )
        if call.transfer is not None and not call.transfer.done():
            call.transfer.set_result(event)
    elif etype == "AnswerFailed":
        log.error("call %s: answer failed: %s", call.label, event.message)
        _end(ctx, call, CallOutcome.ANSWER_FAILED)
    elif etype == "CreateCallFailed":
        outcome, call.failure = create_failed(event)
        log.warning("call %s: not placed: %s (%s)", call.label, outcome, call.failure)
        _end(ctx, call, outcome)
    elif etype == "CallDisconnected":
        log.info("call %s disconnected", call.label)
        if call.we_hung_up and call.relay is not None:
            # The echo of our own hang-up: the relay is ending the call and names
            # the outcome (drained, apology_hangup, ...); only let it know.
            call.disconnected.set()
        elif call.direction == "outbound" and not call.connected and call.media_task is None:
            # Never answered (no CallConnected here, no media anywhere: a node that got
            # the media socket has it as media_task), and no CreateCallFailed said why.
            call.failure = call.failure or "CallDisconnected before CallConnected"
            _end(ctx, call, CallOutcome.FAILED)
        else:
            _end(ctx, call, CallOutcome.CALLER_HUNG_UP)
    else:
        log.info("call %s: %s", call.label, etype)


def _end(ctx: AppContext, call: Call, outcome: CallOutcome) -> None:
    """End ``call``: a running media relay winds down and records the outcome itself."""
    call.outcome = call.outcome or outcome
    call.disconnected.set()
    if call.media_task is None or call.media_task.done():
        ctx.registry.end(call, outcome)
