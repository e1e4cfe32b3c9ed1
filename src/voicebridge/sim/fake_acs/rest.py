"""The Call Automation REST API the bridge's SDK calls, every request HMAC-checked (§2):
answer, reject, create (:mod:`.outbound`), get, hang up, terminate, transfer
(:mod:`.transfer`), play, start/stop media streaming, cancel media operations; plus the JWKS
and OpenID configuration the bridge fetches to verify tokens.

:class:`CallAutomation` is the top protocol layer of
:class:`~voicebridge.sim.fake_acs.FakeAcs`, on :class:`~.outbound.OutboundCalls` (on
:class:`~.transfer.CallTransfers`, on :class:`~.flow.CallFlow`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from aiohttp import web

from voicebridge.sim.fake_acs.bodies import callback_uri_problem, media_rate
from voicebridge.sim.fake_acs.bodies import error as _error
from voicebridge.sim.fake_acs.media import FakeCall, now_utc
from voicebridge.sim.fake_acs.outbound import OutboundCalls
from voicebridge.sim.fake_acs.playfile import (
    SUBCODE_NOT_DOWNLOADED,
    PlayFileError,
    fetch_pcm,
    file_uris,
)

log = logging.getLogger(__name__)

SIGNED_HEADERS = "x-ms-date;host;x-ms-content-sha256"  # what the SDK's HMAC policy signs (§2.3)
_AUTH_RE = re.compile(r"^HMAC-SHA256 SignedHeaders=(?P<headers>[^&]+)&Signature=(?P<sig>\S+)$")
_ANSWER_PATH = "/calling/callConnections:answer"
_CALL_PATH_RE = re.compile(r"^/calling/callConnections/(?P<cid>[^/:]+)(?::(?P<action>[A-Za-z]+))?$")
# A request older or newer than this is refused, as HMAC services do against replay.
# The exact ACS window is not documented; 15 min is the usual Azure figure [inference].
_MAX_CLOCK_SKEW = timedelta(minutes=15)


def _content_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def verify_hmac(
    *,
    access_key: str,
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> str | None:
    """Check an ACS HMAC-SHA256 request signature (protocols.md §2.3).

    ``path_with_query`` must be the raw request target exactly as sent and
    ``headers`` must be case-insensitive (aiohttp's are). Returns ``None`` when the
    request is authentic, else a short reason (never the key or the expected
    signature). Checks, in order: the Authorization scheme and signed-header list,
    ``x-ms-date`` is present and within 15 minutes, ``x-ms-content-sha256`` is the
    SHA-256 of ``body``, and the signature over
    ``METHOD\\npath_with_query\\nx-ms-date;Host;content_hash``.
    """
    auth = headers.get("Authorization", "")
    match = _AUTH_RE.match(auth)
    if match is None:
        return "missing or malformed HMAC-SHA256 Authorization header"
    if match["headers"].lower() != SIGNED_HEADERS:
        return f"unexpected SignedHeaders {match['headers']!r}"
    date = headers.get("x-ms-date")
    host = headers.get("Host")
    claimed_hash = headers.get("x-ms-content-sha256")
    if not date or not host or claimed_hash is None:
        return "x-ms-date, Host and x-ms-content-sha256 are required"
    try:
        sent_at = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return "x-ms-date is not an RFC 1123 date"
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    if abs((now or now_utc()) - sent_at) > _MAX_CLOCK_SKEW:
        return "x-ms-date is outside the allowed clock skew"
    if not hmac.compare_digest(claimed_hash, _content_hash(body)):
        return "x-ms-content-sha256 does not match the body"
    try:
        secret = base64.b64decode(access_key, validate=True)
    except binascii.Error:
        return "server access key is not base64"
    to_sign = f"{method.upper()}\n{path_with_query}\n{date};{host};{claimed_hash}"
    expected = base64.b64encode(
        hmac.new(secret, to_sign.encode("utf-8"), hashlib.sha256).digest()
    ).decode("ascii")
    if not hmac.compare_digest(match["sig"], expected):
        return "signature mismatch"
    return None


def _play_seconds(body: Mapping[str, Any]) -> float | None:
    """How long (call time) a ``:play`` request plays; ``None`` loops until cancelled.

    There is no TTS here, so length is estimated from the text (about 60 ms a
    character, at least half a second); any other source counts as 2 s (a play with a file
    source is timed by the file itself: :meth:`CallAutomation._run_file_play`).
    """
    options = body.get("playOptions")
    if isinstance(options, dict) and options.get("loop"):
        return None
    total = 0.0
    for source in body.get("playSources") or []:
        if not isinstance(source, dict):
            continue
        kind = str(source.get("kind", "")).lower()
        if kind == "text":
            text = str((source.get("text") or {}).get("text", ""))
            total += max(0.5, 0.06 * len(text))
        elif kind == "ssml":
            ssml = str((source.get("ssml") or {}).get("ssmlText", ""))
            total += max(0.5, 0.06 * len(re.sub(r"<[^>]*>", "", ssml)))
        else:
            total += 2.0
    return max(total, 0.5)


class CallAutomation(OutboundCalls):
    """The REST endpoints (see the module docstring)."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "json": parsed,
            "raw_body": body,
            "hmac_ok": None,  # None: a public endpoint that needs no signature
            "status": None,
            "call_connection_id": None,
            "time": time.monotonic(),
        }
        self.requests.append(record)
        if request.path == _ANSWER_PATH:
            self.answer_requests += 1
        try:
            response = await self._route(request, body, parsed, record)
        except Exception as exc:
            log.exception("fake ACS handler failed")
            self.internal_errors.append(f"handler {request.method} {request.path}: {exc!r}")
            response = _error(500, "fake ACS internal error")
        record["status"] = response.status
        request_id = request.headers.get("x-ms-client-request-id")
        if request_id and request.headers.get("x-ms-return-client-request-id") == "true":
            response.headers["x-ms-client-request-id"] = request_id
        return response

    def _public(self, method: str, path: str) -> web.Response | None:
        """The unsigned endpoints: the JWKS and the OpenID configuration (§5)."""
        if method == "GET" and path == "/calling/keys":
            return web.json_response(self.jwks())
        if method == "GET" and path == "/calling/.well-known/acsopenidconfiguration":
            return web.json_response(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url,
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
                }
            )
        return None

    async def _route(
        self, request: web.Request, body: bytes, parsed: Any, record: dict[str, Any]
    ) -> web.StreamResponse:
        path, method = request.path, request.method
        public = self._public(method, path)
        if public is not None:
            return public
        problem = verify_hmac(
            access_key=self.access_key,
            method=method,
            path_with_query=request.raw_path,  # exactly as sent, still percent-encoded
            headers=request.headers,
            body=body,
        )
        record["hmac_ok"] = problem is None
        if problem is not None:
            return _error(401, f"Denied by the HMAC authentication policy: {problem}.")
        if "api-version" not in request.query:
            return _error(400, "The api-version query parameter is required.")
        if path == _ANSWER_PATH:
            if method != "POST":
                return _error(405, "Method not allowed.")
            return await self._answer(request, parsed, record)
        if path == "/calling/callConnections":
            if method != "POST":
                return _error(405, "Method not allowed.")
            return await self._create_call(request, parsed, record)
        if path == "/calling/callConnections:reject":
            if method != "POST":
                return _error(405, "Method not allowed.")
            return self._reject(parsed)
        match = _CALL_PATH_RE.match(path)
        if match is None:
            return _error(404, f"Resource not found: {path}")
        cid, action = match["cid"], match["action"]
        record["call_connection_id"] = cid
        call = self.calls.get(cid)
        if call is None or call.ended.is_set():
            return _error(404, "Call connection not found.", code="8522")
        call._log("rest", {"method": method, "action": action or ""})
        if action is None:
            if method == "GET":
                return web.json_response(call._properties())
            if method == "DELETE":
                self._spawn(self._end(call, "bridge_hung_up"), f"hangup-{cid[:8]}")
                return web.Response(status=204)
            return _error(405, "Method not allowed.")
        if method != "POST":
            return _error(405, "Method not allowed.")
        return self._call_action(call, action, parsed if isinstance(parsed, dict) else {})

    def _call_action(
        self, call: FakeCall, action: str, body_obj: dict[str, Any]
    ) -> web.StreamResponse:
        """``POST /calling/callConnections/{id}:{action}``."""
        cid = call.call_connection_id or ""
        if action == "terminate":
            self._spawn(self._end(call, "bridge_hung_up"), f"terminate-{cid[:8]}")
            return web.Response(status=204)
        if call.state == "ringing":  # an outbound call not answered yet
            return _error(400, "Action not supported: the call is not established.", "8501")
        if action == "transferToParticipant":
            return self._transfer(call, body_obj)
        if action == "play":
            return self._play(call, body_obj)
        if action == "cancelAllMediaOperations":
            if call._play_task is not None and not call._play_task.done():
                call._play_task.cancel()
                self._spawn(
                    self._post_event(
                        call,
                        "PlayCanceled",
                        operation_context=call._play_context,
                        uri=call._play_callback_uri,
                    ),
                    f"playcancel-{cid[:8]}",
                )
            return web.Response(status=202)
        if action == "startMediaStreaming":
            if call.media_options is None:
                return _error(400, "Media streaming was not configured when answering.")
            if call._ws is None and not call._ending:
                self._spawn(self._start_media(call, body_obj), f"media-{cid[:8]}")
            return web.Response(status=202)
        if action == "stopMediaStreaming":
            if call.media_options is None:
                return _error(400, "Media streaming was not configured when answering.")
            self._spawn(self._stop_streaming(call, body_obj), f"mediastop-{cid[:8]}")
            return web.Response(status=202)
        return _error(501, f"The fake ACS does not implement :{action}.")

    def _reject(self, parsed: Any) -> web.StreamResponse:
        """``reject_call``: a ringing call ends without media (204, as the SDK expects).

        The caller hears a busy signal for reason ``busy``; ``end_reason`` records
        ``rejected_<reason>``.
        """
        if not isinstance(parsed, dict):
            return _error(400, "The request body must be a JSON object.")
        call = self._by_context.get(str(parsed.get("incomingCallContext")))
        if call is None:
            return _error(400, "incomingCallContext is invalid.")
        if call._answer_props is not None or call._ending:
            return _error(400, "The call is no longer ringing.")
        reason = str(parsed.get("callRejectReason") or "none").lower()
        call._log("rest", {"method": "POST", "action": "reject", "reason": reason})
        self._spawn(self._end(call, f"rejected_{reason}"), f"reject-{call.event_id[:8]}")
        return web.Response(status=204)

    async def _answer(
        self, request: web.Request, parsed: Any, record: dict[str, Any]
    ) -> web.StreamResponse:
        if not isinstance(parsed, dict):
            return _error(400, "The request body must be a JSON object.")
        call = self._by_context.get(str(parsed.get("incomingCallContext")))
        if call is None:
            return _error(400, "incomingCallContext is invalid.")
        call._answer_attempts += 1
        call._log("rest", {"method": "POST", "action": "answer"})
        repeat_id = request.headers.get("Repeatability-Request-ID")
        if call._answer_props is not None:
            # A retry of the same request (same Repeatability-Request-ID, §2.3) gets
            # the original result; a second, different answer is refused.
            if repeat_id and repeat_id == call._answer_repeat_id:
                record["call_connection_id"] = call.call_connection_id
                return web.json_response(call._answer_props)
            return _error(400, "The call has already been answered.")
        if call._ending:
            return _error(404, "The call is no longer ringing.")
        callback = parsed.get("callbackUri")
        problem = callback_uri_problem(callback)
        if problem is not None:
            return problem
        media = parsed.get("mediaStreamingOptions")
        rate = media_rate(media, self.acs_rate)
        if isinstance(rate, web.Response):
            return rate
        call.answer_request = parsed
        call.api_version = request.query.get("api-version", "")
        call.callback_uri = callback
        context = parsed.get("operationContext")
        call.operation_context = context if isinstance(context, str) else None
        call._negotiate_media(media, rate)
        call.call_connection_id = call._preset_connection_id or str(uuid.uuid4())
        call._answer_repeat_id = repeat_id
        call.state = "connected"
        self.calls[call.call_connection_id] = call
        record["call_connection_id"] = call.call_connection_id
        call._answer_props = call._properties()
        call.answered.set()
        call._log("answered", {"call_connection_id": call.call_connection_id, "rate": rate})
        if call._ring_task is not None:
            call._ring_task.cancel()
        # Answer fast (200 now); everything the service does next happens afterwards.
        self._spawn(self._after_answer(call), f"connect-{call.call_connection_id[:8]}")
        return web.json_response(call._answer_props)

    def _play(self, call: FakeCall, body: dict[str, Any]) -> web.StreamResponse:
        sources = body.get("playSources")
        if not isinstance(sources, list) or not sources:
            return _error(400, "playSources is required.")
        if call._play_task is not None and not call._play_task.done():
            call._play_task.cancel()
        context = body.get("operationContext")
        call._play_context = context if isinstance(context, str) else call.operation_context
        uri = body.get("operationCallbackUri")
        call._play_callback_uri = uri if isinstance(uri, str) else None
        name = f"play-{(call.call_connection_id or '')[:8]}"
        if file_uris(sources) is not None:
            options = body.get("playOptions")
            loop = isinstance(options, dict) and bool(options.get("loop"))
            call._log("play", {"files": file_uris(sources), "sources": len(sources)})
            call._play_task = self._spawn(
                self._run_file_play(
                    call, sources, loop, call._play_context, call._play_callback_uri
                ),
                name,
            )
            return web.Response(status=202)
        seconds = _play_seconds(body)
        call._log("play", {"seconds": seconds, "sources": len(sources)})
        call._play_task = self._spawn(
            self._run_play(call, seconds, call._play_context, call._play_callback_uri), name
        )
        return web.Response(status=202)

    async def _run_play(
        self, call: FakeCall, seconds: float | None, context: str | None, uri: str | None
    ) -> None:
        await self._post_event(call, "PlayStarted", operation_context=context, uri=uri)
        if seconds is None:  # looping: only cancellation ends it
            await asyncio.Event().wait()
        await asyncio.sleep(seconds / self.speed if seconds else 0)
        await self._post_event(call, "PlayCompleted", operation_context=context, uri=uri)

    async def _run_file_play(
        self,
        call: FakeCall,
        sources: list[Any],
        loop: bool,
        context: str | None,
        uri: str | None,
    ) -> None:
        """A play with file sources, in ACS's media plane: every file is fetched and checked
        first (any failure: ``PlayFailed``, nothing played); then ``PlayStarted``, each file
        mixed into what the caller hears from the current call time on, whether a media
        socket is open or not (text sources: silence for their estimated length), and
        ``PlayCompleted`` after the last one (``loop``: repeated until cancelled)."""
        items: list[tuple[str, bytes] | float] = []
        for source in sources:
            files = file_uris([source])
            if files is None:
                items.append(_play_seconds({"playSources": [source]}) or 0.0)
                continue
            try:
                items.append((files[0], await fetch_pcm(self._client(), files[0], call.acs_rate)))
            except PlayFileError as exc:
                await self._play_failed(call, files[0], exc, context, uri)
                return
        await self._post_event(call, "PlayStarted", operation_context=context, uri=uri)
        while True:
            for item in items:
                if isinstance(item, float):
                    await asyncio.sleep(item / self.speed)
                    continue
                clip = call._play_file(*item)
                try:
                    await asyncio.sleep(len(item[1]) / 2 / call.acs_rate / self.speed)
                except asyncio.CancelledError:
                    call._cut_file(clip)  # cancelled or hung up: the rest is not heard
                    raise
            if not loop:
                break
        await self._post_event(call, "PlayCompleted", operation_context=context, uri=uri)

    async def _play_failed(
        self,
        call: FakeCall,
        file_uri: str,
        exc: PlayFileError,
        context: str | None,
        uri: str | None,
    ) -> None:
        if exc.subcode == SUBCODE_NOT_DOWNLOADED:
            message = f"Action failed, file could not be downloaded: {exc}"
        else:
            message = f"Action failed, file format is invalid: {exc}"
        call.play_failures.append({"uri": file_uri, "message": message})
        call._log("play_failed", {"uri": file_uri, "message": message})
        await self._post_event(
            call,
            "PlayFailed",
            operation_context=context,
            uri=uri,
            result={"code": 400, "subCode": exc.subcode, "message": message},
        )
