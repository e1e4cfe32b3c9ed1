"""The browser phone's routes, mounted only with ``PHONE_ENABLED=true`` (404 otherwise).

* ``GET /phone``, ``GET /phone/static/{name}`` — the page, its script, worklets and
  style (no secret in them);
* ``POST /phone/calls`` — ``Authorization: Bearer <PHONE_TOKEN>``: a signed URL for a
  new call's socket, good for one socket within 60 s;
* ``WS /phone/ws/{token}`` — the call's media socket: the URL token, and
  ``PHONE_TOKEN`` as a subprotocol.

Why a route of its own rather than ``/ws/media`` with the phone token instead of the
ACS JWT: the ACS route's checks stay exactly what they are (a phone token can never
open an ACS call's media, an ACS media URL is no phone URL: the signed purpose
differs), and only this route wraps its socket in :class:`~.socket.PhoneSocket`, which
adds what a browser needs (hang-up, the side channel). Behind both is the same
:class:`~voicebridge.relay.MediaRelay` over the same core.

Why ``POST /phone/calls`` registers nothing: the URL it returns is self-contained
(:class:`~voicebridge.security.CallUrlSigner`, purpose ``p``), so the call exists only
once its socket is up — a page that never connects leaves nothing behind, and any
node or worker holding the URL keys can take the socket. The POST gives the page a
plain HTTP answer it can show (401 wrong token, 503 busy or draining), which a
refused WebSocket upgrade cannot: browsers hide its status.

Why the token is a subprotocol on the socket: browsers cannot set headers on a
WebSocket, a query string lands in access logs, and a first message would mean
accepting the socket before it is authenticated. ``Sec-WebSocket-Protocol:
voicebridge.phone.v1, vbtoken.<PHONE_TOKEN>`` is checked before the upgrade (403
otherwise) and only ``voicebridge.phone.v1`` is echoed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from importlib import resources
from typing import Annotated, NoReturn
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketException
from fastapi.responses import JSONResponse, Response

from voicebridge import logs
from voicebridge.app import AppContext
from voicebridge.calls import Call, CallOutcome
from voicebridge.deps import POLICY_VIOLATION, CtxDep
from voicebridge.phone.socket import SUBPROTOCOL, TOKEN_PREFIX, PhoneSocket
from voicebridge.relay import MediaRelay
from voicebridge.routes.media import services
from voicebridge.security import PURPOSE_PHONE, CallUrlSigner, TokenRejected, constant_time_equal

log = logging.getLogger(__name__)

router = APIRouter(tags=["phone"])

#: How long a page has to open the socket a ``POST /phone/calls`` gave it.
SOCKET_URL_LIFETIME_S = 60.0
#: WebSocket close code when the bridge cannot take the call now (RFC 6455: try again later).
TRY_AGAIN_LATER = 1013

#: The files of the page (``voicebridge/phone/static``) and their types.
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "phone.js": "text/javascript; charset=utf-8",
    "worklets.js": "text/javascript; charset=utf-8",
    "phone.css": "text/css; charset=utf-8",
}
#: The page loads nothing from elsewhere and talks only to its own origin.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; media-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _static(name: str) -> Response:
    body = (resources.files("voicebridge.phone") / "static" / name).read_bytes()
    return Response(body, media_type=STATIC[name], headers=HEADERS)


@router.get("/phone", include_in_schema=False)
async def page() -> Response:
    """The phone page. It holds no secret: every call needs ``PHONE_TOKEN``, which the
    page reads from its URL fragment (``#token=``, never sent to a server)."""
    return _static("index.html")


@router.get("/phone/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in STATIC or name == "index.html":
        return JSONResponse({"error": "not found"}, status_code=404)
    return _static(name)


def token_ok(ctx: AppContext, given: str | None) -> bool:
    """``given`` is ``PHONE_TOKEN`` (compared in constant time)."""
    expected = ctx.settings.phone_token
    return expected is not None and constant_time_equal(given, expected.get_secret_value())


def _bearer(authorization: str | None) -> str | None:
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@router.post("/phone/calls")
async def new_call(request: Request, ctx: CtxDep) -> JSONResponse:
    """A socket URL for a new phone call (``Authorization: Bearer <PHONE_TOKEN>``)."""
    if not token_ok(ctx, _bearer(request.headers.get("authorization"))):
        ctx.stats.counters["phone_refused_token"] += 1
        log.warning("phone call refused: wrong or missing PHONE_TOKEN")
        return JSONResponse(
            {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
    busy = _busy(ctx)
    if busy is not None:
        log.warning("phone call refused: %s", busy)
        return JSONResponse({"error": busy}, status_code=503, headers={"Retry-After": "5"})
    call_id = CallUrlSigner.new_call_id()
    token = ctx.registry.signer.issue(call_id, PURPOSE_PHONE, lifetime_s=SOCKET_URL_LIFETIME_S)
    s = ctx.settings
    return JSONResponse(
        {
            "socket": f"/phone/ws/{token}",
            "subprotocol": SUBPROTOCOL,
            "sample_rate": s.acs_audio_rate,
            "frame_ms": 20,
            "expires_in_s": SOCKET_URL_LIFETIME_S,
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


def _busy(ctx: AppContext) -> str | None:
    """Why no call can start now ("draining", "busy"), or None. A phone call counts
    against ``MAX_CONCURRENT_CALLS`` like any other."""
    if ctx.draining:
        return "draining"
    if ctx.registry.active >= ctx.settings.max_concurrent_calls:
        return "busy"
    return None


async def phone_call_id(url_key: str, websocket: WebSocket, ctx: CtxDep) -> str:
    """The call id of a phone socket whose URL token (purpose ``p``), ``PHONE_TOKEN``
    (subprotocol) and origin are right; the upgrade is refused (403) otherwise."""
    try:
        call_id = ctx.registry.signer.check(url_key, PURPOSE_PHONE)
    except TokenRejected as exc:
        _refuse(ctx, f"the URL token is {exc.reason}")
    origin = websocket.headers.get("origin")
    if origin is not None and urlparse(origin).netloc != websocket.headers.get("host"):
        # A page of another site (cross-site WebSocket hijacking): it would need the
        # token too, but it is refused before any token is tried.
        _refuse(ctx, "a page of another origin")
    offered = websocket.scope.get("subprotocols") or []
    given = next((p[len(TOKEN_PREFIX) :] for p in offered if p.startswith(TOKEN_PREFIX)), None)
    if SUBPROTOCOL not in offered or not token_ok(ctx, given):
        _refuse(ctx, "wrong or missing PHONE_TOKEN")
    if ctx.registry.ids_of(call_id) is not None:
        _refuse(ctx, "its URL was used already")
    return call_id


def _refuse(ctx: AppContext, why: str) -> NoReturn:
    ctx.stats.counters["phone_refused_socket"] += 1
    log.warning("phone socket refused: %s", why)
    raise WebSocketException(code=POLICY_VIOLATION)


PhoneCallDep = Annotated[str, Depends(phone_call_id)]


@router.websocket("/phone/ws/{url_key}")
async def phone_media(websocket: WebSocket, call_id: PhoneCallDep, ctx: CtxDep) -> None:
    """One phone call: register it, then relay it like an ACS call until it ends."""
    busy = _busy(ctx)
    if busy is not None:  # the POST said yes, but the last free line went meanwhile
        log.warning("phone socket refused: %s", busy)
        ctx.stats.call_ended(f"rejected_{busy}")
        await websocket.accept(subprotocol=SUBPROTOCOL)
        await websocket.send_text(f'{{"kind":"phone.ended","outcome":"rejected_{busy}"}}')
        await websocket.close(TRY_AGAIN_LATER, busy)
        return
    call = ctx.registry.new_call(
        correlation_id=f"phone-{call_id}",
        server_call_id="",
        caller="phone",
        ids=(call_id, "", ""),
    )
    call.log.write("phone_call", user_agent=websocket.headers.get("user-agent", "")[:200])
    call.span = ctx.telemetry.start(
        "call", None, **{"voicebridge.correlation_id": call.correlation_id, "voicebridge.phone": 1}
    )
    await websocket.accept(subprotocol=SUBPROTOCOL)
    with logs.call_context(call), ctx.telemetry.activate(call.span):
        log.info("phone call %s: the page is connected", call.label)
        await _relay(ctx, websocket, call)


async def _relay(ctx: AppContext, websocket: WebSocket, call: Call) -> None:
    sock = PhoneSocket(websocket, call, ctx.stats.counters)
    # A phone call lives on the node its socket reached: nothing of it goes to the
    # shared record (no takeover), so the relay gets no cluster.
    relay = call.relay = MediaRelay(dataclasses.replace(services(ctx), cluster=None), call, sock)
    relay.observer = sock.side.on_event
    call.media_task = asyncio.current_task()
    s = ctx.settings
    sock.side.send(
        {
            "kind": "phone.call",
            "call": call.label,
            "sample_rate": relay.bridge.acs_hz,
            "mode": s.mode,
            "voicelive": s.voicelive_host,
        }
    )
    side = asyncio.create_task(sock.side.run(), name=f"phone-side-{call.id}")
    outcome = CallOutcome.ERROR
    try:
        outcome = await relay.run()
    except asyncio.CancelledError:
        outcome = CallOutcome.SHUTDOWN  # the process is stopping
        raise
    except Exception:
        log.exception("phone call %s: the relay failed", call.label)
    finally:
        ctx.registry.end(call, outcome)
        side.cancel()
        with contextlib.suppress(BaseException):
            await side
        log.info("phone call %s ended: %s", call.label, call.outcome)
        await sock.finish(call.outcome or outcome)
        call.relay = None
