"""The routes' typed dependencies (FastAPI ``Depends``), instead of ``request.app.state``.

* :data:`CtxDep` — the app's :class:`~voicebridge.app.AppContext` (settings, clients,
  the call registry, stats, telemetry);
* :data:`SettingsDep` — its :class:`~voicebridge.config.Settings`;
* :data:`AcsCallbackDep`, :data:`AcsMediaDep` — the id of the call an ACS request is
  for, once the per-call URL token (for that route's purpose: a callback token is no
  media token) and the ACS JWT are both valid (protocols.md §5). One check for the Call
  Automation callbacks and the media WebSocket: a refused callback gets HTTP 401
  ``{"error": "unauthorized"}`` (:class:`Refused`, rendered by :func:`refused`); a
  refused media upgrade is closed with 1008 before ``accept``, which the client sees
  as HTTP 403.
"""

from __future__ import annotations

import logging
from typing import Annotated, cast

from fastapi import Depends, WebSocketException
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection, Request

from voicebridge import logs, observations
from voicebridge.app import AppContext
from voicebridge.config import Settings
from voicebridge.security import (
    PURPOSE_CALLBACK,
    PURPOSE_MEDIA,
    TokenRejected,
    unverified_audience,
)

log = logging.getLogger(__name__)

#: WebSocket close code for a refused upgrade (RFC 6455 §7.4.1: policy violation).
POLICY_VIOLATION = 1008


def get_ctx(conn: HTTPConnection) -> AppContext:
    """The context :func:`~voicebridge.app.create_app` built for this app."""
    return cast(AppContext, conn.app.state.ctx)


CtxDep = Annotated[AppContext, Depends(get_ctx)]


def get_settings(ctx: CtxDep) -> Settings:
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


class Refused(Exception):
    """An HTTP request refused by a dependency: answered ``{"error": message}`` with
    ``status`` by :func:`refused` (registered by ``create_app``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def refused(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for :class:`Refused`."""
    assert isinstance(exc, Refused)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def authenticate_acs(
    ctx: AppContext, url_key: str, purpose: bytes, authorization: str | None
) -> str | None:
    """The call id if the per-call URL token (for ``purpose``) and the ACS token are both
    valid; None (and a log line saying why, never the token) otherwise. The URL token is
    checked first: it costs one HMAC and no I/O."""
    try:
        call_id = ctx.registry.signer.check(url_key, purpose)
    except TokenRejected as exc:
        log.warning("ACS request refused: the per-call URL token is %s", exc.reason)
        return None
    if ctx.acs_tokens is not None:
        try:
            claims = await ctx.acs_tokens.validate(authorization)
        except TokenRejected as exc:
            if exc.reason == "bad_audience":  # what the real aud is, once (docs/first-call.md)
                observations.observe(
                    "acs_jwt_audience",
                    received=unverified_audience(authorization),
                    expected=ctx.settings.acs_resource_id,
                    accepted=False,
                )
            with logs.call_context(ctx.registry.ids_of(call_id)):
                log.warning("ACS request for call %s refused: token %s", call_id, exc.reason)
            return None
        observations.observe(
            "acs_jwt_audience",
            received=claims.get("aud"),
            expected=ctx.settings.acs_resource_id,
            accepted=True,
        )
    return str(call_id)


async def _acs_call_id(url_key: str, purpose: bytes, conn: HTTPConnection, ctx: AppContext) -> str:
    """The call id of an authenticated ACS request (``url_key`` is the path parameter);
    refuses the request or the WebSocket upgrade otherwise."""
    call_id = await authenticate_acs(ctx, url_key, purpose, conn.headers.get("authorization"))
    if call_id is not None:
        return call_id
    if conn.scope["type"] == "websocket":
        raise WebSocketException(code=POLICY_VIOLATION)
    raise Refused(401, "unauthorized")


async def acs_callback_call_id(url_key: str, conn: HTTPConnection, ctx: CtxDep) -> str:
    """:func:`_acs_call_id` for ``/api/callbacks/{url_key}`` (callback tokens only)."""
    return await _acs_call_id(url_key, PURPOSE_CALLBACK, conn, ctx)


async def acs_media_call_id(url_key: str, conn: HTTPConnection, ctx: CtxDep) -> str:
    """:func:`_acs_call_id` for ``/ws/media/{url_key}`` (media tokens only)."""
    return await _acs_call_id(url_key, PURPOSE_MEDIA, conn, ctx)


AcsCallbackDep = Annotated[str, Depends(acs_callback_call_id)]
AcsMediaDep = Annotated[str, Depends(acs_media_call_id)]
