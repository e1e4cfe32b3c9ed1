"""The ACS media WebSocket (protocols.md §4, §5): one relay per call.

The upgrade is refused (HTTP 403, before ``accept``) unless the per-call URL key and
the ACS JWT are valid (:data:`~voicebridge.deps.AcsMediaDep`) and the call is live. A
second valid socket for a call that already has one *replaces* it — ACS may reconnect a
dropped stream (``streamConnectionReestablished``, protocols §4) — and the relay
carries on with it.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from fastapi import APIRouter, WebSocket

from voicebridge import logs
from voicebridge.app import AppContext
from voicebridge.calls import OUTCOMES, Call, CallOutcome
from voicebridge.deps import POLICY_VIOLATION, AcsMediaDep, CtxDep
from voicebridge.errors import close_code
from voicebridge.outbound import call_settings, context_of
from voicebridge.relay import CallServices, MediaRelay
from voicebridge.voicelive.session import open_session

log = logging.getLogger(__name__)

router = APIRouter(tags=["media"])


@router.websocket("/ws/media/{url_key}")
async def media(websocket: WebSocket, call_id: AcsMediaDep, ctx: CtxDep) -> None:
    """Relay one call's audio between ACS and Voice Live until the call ends."""
    call = ctx.registry.get(call_id)
    if ctx.cluster is not None and (call is None or call.relay is None):
        call = await _claim(ctx, websocket, call_id, call)
        if call is None:
            await websocket.close(code=POLICY_VIOLATION)
            return
    if call is None:
        with logs.call_context(ctx.registry.ids_of(call_id)):
            log.warning("media socket for an ended call %s: refused", call_id)
        await websocket.close(code=POLICY_VIOLATION)
        return
    # Everything from here on, the relay's pump tasks included (they copy this context
    # when they are created), logs with the call's ids and traces into the call's trace.
    with logs.call_context(call), ctx.telemetry.activate(call.span):
        await _media(ctx, websocket, call)


async def _media(ctx: AppContext, websocket: WebSocket, call: Call) -> None:
    if call.relay is not None:
        log.info("call %s: a new media socket replaces the current one", call.label)
        await websocket.accept()
        await call.relay.attach(websocket).wait()
        return
    if not call.call_connection_id:
        call.call_connection_id = websocket.headers.get("x-ms-call-connection-id") or None
    await websocket.accept()
    relay = call.relay = MediaRelay(services(ctx, call), call, websocket)
    call.media_task = asyncio.current_task()
    outcome = CallOutcome.ERROR
    code = 1000
    try:
        outcome = await relay.run()
    except Exception as exc:
        log.exception("call %s: media relay failed", call.label)
        code = close_code(exc)
        await ctx.hang_up(call)
    finally:
        ctx.registry.end(call, outcome)
        try:
            await relay.ws.close(code=code)
        except Exception as exc:  # already closed by the peer
            log.debug("media close: %s", type(exc).__name__)
        call.relay = None  # the relay (and its CallBridge) can go now


async def _claim(
    ctx: AppContext, websocket: WebSocket, call_id: str, call: Call | None
) -> Call | None:
    """Many nodes: the call lives where its media socket lands. Claim it in the shared
    record (a new generation); a call another node held is taken over — resumed without
    a second greeting, its old node told to let go. None if the record says the call is
    over (or unknown), so the socket is refused. Redis down: this node owns the call
    from what the socket's headers say, as one process alone would."""
    cluster = ctx.cluster
    assert cluster is not None
    if call is not None:
        call.media_task = asyncio.current_task()  # the answering node keeps it (no hand-off)
    headers = websocket.headers
    claim = await cluster.claim(call_id)
    if claim is not None and claim.refused == "unknown":
        # A valid token for a call Redis does not know (it restarted empty): the record
        # is rebuilt from what the socket says, and claimed.
        await cluster.restore(
            call_id,
            corr=headers.get("x-ms-call-correlation-id", ""),
            ccid=headers.get("x-ms-call-connection-id", ""),
            state="answering",
        )
        claim = await cluster.claim(call_id)
    if claim is not None and claim.refused is not None:
        with logs.call_context(call or ctx.registry.ids_of(call_id)):
            log.warning("media socket for call %s refused: %s call", call_id, claim.refused)
        if call is not None:
            call.media_task = None
            outcome = claim.previous_owner
            ctx.registry.end(
                call, CallOutcome(outcome) if outcome in OUTCOMES else CallOutcome.CALLER_HUNG_UP
            )
        return None
    record = (await cluster.record(call_id) if claim is not None else None) or {}
    if call is None:
        call = ctx.registry.adopt(
            call_id,
            correlation_id=record.get("corr") or headers.get("x-ms-call-correlation-id", ""),
            server_call_id=record.get("scid", ""),
            caller=record.get("caller", ""),
            call_connection_id=record.get("ccid") or headers.get("x-ms-call-connection-id"),
        )
        call.callee = record.get("callee", "")
        _profile(ctx, call, record)
        # The call's trace goes on here, under the answering node's span.
        call.span = ctx.telemetry.start(
            "call",
            ctx.telemetry.remote(record.get("traceparent")),
            **{
                "voicebridge.correlation_id": call.correlation_id,
                "voicebridge.node": cluster.name,
                "voicebridge.profile": call.profile,
            },
        )
    gen = claim.gen if claim is not None else 0
    call.gen = gen
    cluster.own(call, gen)
    previous = claim.previous_owner if claim is not None else ""
    if gen > 1:  # the call had media before, here or elsewhere: resume it
        call.resume = True
        call.conversation_id = record.get("conversation_id") or call.conversation_id
        if (call.settings or ctx.settings).mode == "model":
            call.history = await cluster.transcript(call_id)
        with logs.call_context(call):
            log.info(
                "call %s: taken over from node %s (generation %d, %d turns to replay)",
                call.label,
                previous or "(unknown)",
                gen,
                len(call.history),
            )
        call.log.write("taken_over", previous_node=previous, gen=gen, turns=len(call.history))
        if previous and previous != cluster.name:
            await cluster.announce_takeover(call_id, gen)
    if call.call_connection_id and not record.get("ccid") and claim is not None:
        await cluster.update(call_id, ccid=call.call_connection_id)
    return call


def _profile(ctx: AppContext, call: Call, record: dict[str, str]) -> None:
    """A call answered (or dialled) elsewhere: its profile by the name in its record
    (the default one for a name this node does not know), and for an outbound call its
    context and first speaker, as the dialling node set them."""
    profile = ctx.profiles.named(record.get("profile"))
    call.profile = profile.name
    if record.get("dir") == "outbound":
        call.direction = "outbound"
        call.context = context_of(record)
        call.settings = call_settings(profile, call.context)
    else:
        call.settings = profile.settings


def services(ctx: AppContext, call: Call | None = None) -> CallServices:
    """What a relay may use of the app: the call's settings (its profile's), stats,
    telemetry, the clock, and the calls out (Voice Live connect with the credential of
    the call's profile, hang-up, call state)."""
    settings = (call.settings if call is not None else None) or ctx.settings
    return CallServices(
        settings=settings,
        stats=ctx.stats,
        telemetry=ctx.telemetry,
        clock=ctx.clock,
        open_session=functools.partial(open_session, settings, ctx.credential_for(settings)),
        hang_up=ctx.hang_up,
        call_state=ctx.call_state,
        transfer=ctx.transfer,
        cluster=ctx.cluster,
    )
