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
from voicebridge.calls import Call, CallOutcome
from voicebridge.deps import POLICY_VIOLATION, AcsMediaDep, CtxDep
from voicebridge.errors import close_code
from voicebridge.relay import CallServices, MediaRelay
from voicebridge.voicelive.session import open_session

log = logging.getLogger(__name__)

router = APIRouter(tags=["media"])


@router.websocket("/ws/media/{url_key}")
async def media(websocket: WebSocket, call_id: AcsMediaDep, ctx: CtxDep) -> None:
    """Relay one call's audio between ACS and Voice Live until the call ends."""
    call = ctx.registry.get(call_id)
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
    relay = call.relay = MediaRelay(services(ctx), call, websocket)
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


def services(ctx: AppContext) -> CallServices:
    """What a relay may use of the app: settings, stats, telemetry, the clock, and the
    calls out (Voice Live connect with the app's credential, hang-up, call state)."""
    return CallServices(
        settings=ctx.settings,
        stats=ctx.stats,
        telemetry=ctx.telemetry,
        clock=ctx.clock,
        open_session=functools.partial(open_session, ctx.settings, ctx.voicelive_credential),
        hang_up=ctx.hang_up,
        call_state=ctx.call_state,
    )
