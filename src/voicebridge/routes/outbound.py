"""``POST /api/calls`` and ``GET /api/calls/{id}``: the agent places a call (docs/outbound.md).

Mounted only when ``OUTBOUND_API_KEYS`` or ``OUTBOUND_ENTRA_*`` is configured (404
otherwise). Every request is authenticated first (:class:`~voicebridge.outbound.OutboundAuth`:
401 / 403), then, for a new call, checked in this order — nothing is dialled for a
refusal, and every answer is counted in ``voicebridge_outbound_requests_total{result}``:

1. the body (JSON, at most a few times ``OUTBOUND_CONTEXT_MAX_BYTES``): 415 / 413 / 400,
   and the request itself (:func:`~voicebridge.outbound.parse_request`): 422;
2. ``Idempotency-Key``: a key seen within 24 h answers with that call (the same request
   only: another one with the key is 422), and dials nothing;
3. the profile's calling hours: 409 with the window and the local time;
4. the concurrency limits (``OUTBOUND_MAX_CONCURRENT``, the profile's ``max_concurrent``,
   ``MAX_CONCURRENT_CALLS``) and the rate (``OUTBOUND_RATE_PER_MIN``): 429 + Retry-After.
   With ``REDIS_URL`` they count every node's calls (one slot and one rate token per call
   in Redis, given back when it ends or is refused later); while Redis cannot be asked,
   each node's own.

Then the call is registered, ``createCall`` starts in the background (from the profile's
number, bidirectional media, signed callback and media URLs, as ``answer``) and the answer
is ``202 {"id", "status": "dialling", "profile"}`` at once. The callee's leg then runs as
an inbound call does: callbacks, media socket, relay — with the profile's settings.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from voicebridge import logs
from voicebridge.acs import client as acs_client
from voicebridge.app import AppContext
from voicebridge.calls import Call, CallOutcome
from voicebridge.deps import CtxDep
from voicebridge.outbound import (
    BUSY_RETRY_AFTER_S,
    OutboundEntry,
    OutboundRequest,
    Refusal,
    call_settings,
    idempotency_key,
    parse_request,
    retry_after,
)
from voicebridge.routes.calls import _admit, _read_body

log = logging.getLogger(__name__)

router = APIRouter(tags=["outbound"])

#: Record states (voicebridge.cluster) as a call's status.
_RECORD_STATES = {"answering": "dialling", "live": "connected", "ended": "ended"}


def _refused(ctx: AppContext, refusal: Refusal) -> JSONResponse:
    ctx.stats.outbound[refusal.result] += 1
    headers = {}
    if refusal.retry_after is not None:
        headers["Retry-After"] = retry_after(refusal.retry_after)
    return JSONResponse({"error": refusal.reason}, status_code=refusal.status, headers=headers)


@router.post("/api/calls")
async def place_call(request: Request, ctx: CtxDep) -> Response:
    """Place one outbound call (see the module docstring)."""
    s = ctx.settings
    try:
        who = await ctx.outbound.auth.check(request.headers.get("authorization"))
        key = idempotency_key(request.headers.get("idempotency-key"))
        body = await _read_body(request, max(16 * 1024, 4 * s.outbound_context_max_bytes))
        if isinstance(body, JSONResponse):
            ctx.stats.outbound["malformed"] += 1
            return body
        req = parse_request(
            body,
            ctx.profiles,
            max_context_bytes=s.outbound_context_max_bytes,
            max_context_keys=s.outbound_context_max_keys,
        )
        if key is not None:
            known = await _recall(ctx, key)
            if known is not None:
                return _duplicate(ctx, key, known, req)
        _check_hours(ctx, req)
        await _check_capacity(ctx, req)
        ids = ctx.registry.signer.new_call()
        shared = await _take_shared_limits(ctx, req, ids[0])
        if not shared and (wait := ctx.outbound.bucket.wait_s()) > 0:
            raise Refusal(429, "rate limited: OUTBOUND_RATE_PER_MIN", "rate_limited", wait)
        try:
            if not await _admit(ctx, ids[0]):
                raise Refusal(
                    429, "busy: MAX_CONCURRENT_CALLS reached", "busy", float(BUSY_RETRY_AFTER_S)
                )
            if key is not None:  # last: a key never names a call that was refused
                winner = await _remember(ctx, key, ids[0], req.fingerprint())
                if winner[0] != ids[0]:  # the same key raced in at the same time
                    await _release_shared(ctx, shared, ids[0])
                    return _duplicate(ctx, key, winner, req)
        except Refusal:
            await _release_shared(ctx, shared, ids[0])
            raise
    except Refusal as refusal:
        log.warning("outbound call refused (%d): %s", refusal.status, refusal.reason)
        return _refused(ctx, refusal)
    if not shared:
        ctx.outbound.bucket.take()
    call = _start_dial(ctx, req, ids)
    ctx.stats.outbound["accepted"] += 1
    with logs.call_context(call):
        log.info("outbound call %s requested by %s: profile %s", call.id, who, req.profile.name)
    return JSONResponse(
        {"id": call.id, "status": "dialling", "profile": call.profile},
        status_code=202,
        headers={"Location": f"/api/calls/{call.id}"},
    )


@router.get("/api/calls/{call_id}")
async def call_status(call_id: str, request: Request, ctx: CtxDep) -> Response:
    """An outbound call's ``status`` (``dialling``, ``connected``, ``ended``) and, once
    ended, its ``outcome`` (and ACS's ``failure`` reason when it could not be placed)."""
    try:
        await ctx.outbound.auth.check(request.headers.get("authorization"))
    except Refusal as refusal:
        return _refused(ctx, refusal)
    status = await _status(ctx, call_id[:64])
    if status is None:
        return JSONResponse({"error": "no such outbound call"}, status_code=404)
    return JSONResponse(status)


# ---------------------------------------------------------------- checks


def _check_hours(ctx: AppContext, req: OutboundRequest) -> None:
    hours = req.profile.outbound.calling_hours
    if hours is None:
        return
    now = datetime.fromtimestamp(ctx.outbound.wall_now(), UTC)
    if not hours.open_at(now):
        raise Refusal(
            409,
            f"outside the calling hours of profile {req.profile.name}: {hours.describe()} "
            f"(it is {hours.local(now)} there)",
            "outside_hours",
        )


async def _check_capacity(ctx: AppContext, req: OutboundRequest) -> None:
    if ctx.cluster is not None:
        await _refresh_handed_off(ctx)
    book, limit = ctx.outbound.book, ctx.settings.outbound_max_concurrent
    if book.live() >= limit:
        raise Refusal(
            429,
            f"busy: {limit} outbound calls in progress (OUTBOUND_MAX_CONCURRENT)",
            "busy",
            float(BUSY_RETRY_AFTER_S),
        )
    most = req.profile.outbound.max_concurrent
    if most is not None and book.live(req.profile.name) >= most:
        raise Refusal(
            429,
            f"busy: {most} outbound calls of profile {req.profile.name} in progress "
            "(its outbound max_concurrent)",
            "busy",
            float(BUSY_RETRY_AFTER_S),
        )


async def _take_shared_limits(ctx: AppContext, req: OutboundRequest, cid: str) -> bool:
    """Many nodes: the outbound limits count every node's calls (Redis), and this call
    takes its slot and rate token there. False when there is no cluster or Redis could
    not be asked: then this node's own limits (above, and its token bucket) decide."""
    if ctx.cluster is None:
        return False
    most = req.profile.outbound.max_concurrent
    shared = await ctx.cluster.outbound_admit(cid, req.profile.name, most)
    if shared is None:
        return False
    verdict, wait = shared
    limit = ctx.settings.outbound_max_concurrent
    if verdict == "busy":
        raise Refusal(
            429,
            f"busy: {limit} outbound calls in progress on all nodes (OUTBOUND_MAX_CONCURRENT)",
            "busy",
            float(BUSY_RETRY_AFTER_S),
        )
    if verdict == "busy_profile":
        raise Refusal(
            429,
            f"busy: {most} outbound calls of profile {req.profile.name} in progress on all "
            "nodes (its outbound max_concurrent)",
            "busy",
            float(BUSY_RETRY_AFTER_S),
        )
    if verdict == "rate":
        raise Refusal(429, "rate limited: OUTBOUND_RATE_PER_MIN", "rate_limited", wait)
    return True


async def _release_shared(ctx: AppContext, shared: bool, cid: str) -> None:
    if shared and ctx.cluster is not None:
        await ctx.cluster.outbound_release(cid)


# ---------------------------------------------------------------- idempotency


async def _recall(ctx: AppContext, key: str) -> tuple[str, str] | None:
    if ctx.cluster is not None:
        value = await ctx.cluster.recall(key)
        if value is not None:
            call_id, _, fingerprint = value.partition("|")
            return call_id, fingerprint
    return ctx.outbound.idempotency.get(key)


async def _remember(ctx: AppContext, key: str, call_id: str, fingerprint: str) -> tuple[str, str]:
    """Bind ``key`` to ``call_id`` unless another call has it (Redis ``SET NX`` when there
    is a cluster, and in memory): the first binding stands."""
    if ctx.cluster is not None:
        value = await ctx.cluster.remember(key, f"{call_id}|{fingerprint}")
        if value is not None:
            first_id, _, first_fingerprint = value.partition("|")
            ctx.outbound.idempotency.put(key, first_id, first_fingerprint)
            return first_id, first_fingerprint
    return ctx.outbound.idempotency.put(key, call_id, fingerprint)


def _duplicate(
    ctx: AppContext, key: str, known: tuple[str, str], req: OutboundRequest
) -> JSONResponse:
    call_id, fingerprint = known
    if fingerprint and fingerprint != req.fingerprint():
        raise Refusal(
            422, "Idempotency-Key: already used for a different request", "idempotency_conflict"
        )
    ctx.stats.outbound["duplicate"] += 1
    log.info("outbound call request repeated (Idempotency-Key): call %s, nothing dialled", call_id)
    entry = ctx.outbound.book.get(call_id)
    status = entry.public()["status"] if entry is not None else "dialling"
    return JSONResponse(
        {"id": call_id, "status": status, "profile": req.profile.name},
        status_code=202,
        headers={"Location": f"/api/calls/{call_id}", "Idempotent-Replayed": "true"},
    )


# ---------------------------------------------------------------- dialling


def _start_dial(ctx: AppContext, req: OutboundRequest, ids: tuple[str, str, str]) -> Call:
    profile = req.profile
    assert profile.caller_id is not None  # parse_request refuses a profile without one
    call = ctx.registry.new_call(correlation_id="", server_call_id="", caller=req.to, ids=ids)
    call.direction = "outbound"
    call.callee = profile.caller_id
    call.profile = profile.name
    call.context = req.context
    call.settings = call_settings(profile, req.context)
    ctx.outbound.book.add(call, ctx.outbound.wall_now())
    call.log.write(
        "outbound_call",
        profile=call.profile,
        first_speaker=profile.outbound.first_speaker,
        context_keys=sorted(req.context),
    )
    call.span = ctx.telemetry.start(
        "call",
        None,
        **{"voicebridge.profile": call.profile, "voicebridge.direction": "outbound"},
    )
    with logs.call_context(call):
        ctx.spawn(_dial(ctx, call), name=f"dial-{call.id}")
    return call


async def _dial(ctx: AppContext, call: Call) -> None:
    """``createCall``; the call goes on with its callbacks (CallConnected, then the media
    socket; or CreateCallFailed)."""
    s = ctx.settings
    if ctx.cluster is not None:  # the record first: callbacks and media may land anywhere
        await ctx.cluster.answering(call, traceparent=ctx.telemetry.traceparent(call.span))
    with ctx.telemetry.use("create_call", call.span) as span:
        try:
            assert ctx.acs is not None  # built by AppContext.start, before any request
            ccid, correlation = await acs_client.create_call(
                ctx.acs,
                target=call.caller,
                caller_id=call.callee,
                callback_url=f"{s.public_base_url}/api/callbacks/{call.callback_token}",
                transport_url=f"{s.media_base_url}/ws/media/{call.media_token}",
                acs_rate=s.acs_audio_rate,
            )
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            lines = str(getattr(exc, "message", "") or "").splitlines()  # the SDK repeats it
            detail = " ".join((lines[0] if lines else "").split())[:200]
            call.failure = (
                f"createCall refused: HTTP {status or '?'}: {detail or type(exc).__name__}"
            )
            log.error("outbound call %s not placed: %s", call.id, call.failure)
            span.fail(call.failure)
            ctx.registry.end(call, CallOutcome.FAILED)
            return
        span.set_attribute("voicebridge.call_connection_id", ccid)
    call.call_connection_id = call.call_connection_id or ccid or None
    call.correlation_id = call.correlation_id or correlation
    log.info("outbound call %s dialling (connection %s)", call.id, call.call_connection_id)
    call.log.write("dialling", call_connection_id=call.call_connection_id)
    if ctx.cluster is not None and call.call_connection_id:
        await ctx.cluster.update(call.id, ccid=call.call_connection_id, corr=call.correlation_id)
        if call.media_task is None and not call.ended.is_set():
            ctx.registry.hand_off(call)  # whichever node gets the media socket runs it


# ---------------------------------------------------------------- status


async def _status(ctx: AppContext, call_id: str) -> dict[str, Any] | None:
    entry = ctx.outbound.book.get(call_id)
    if ctx.cluster is not None and (entry is None or _handed_off(ctx, entry)):
        record = await ctx.cluster.record(call_id)
        if record is not None and record.get("dir") == "outbound":
            status = _from_record(call_id, record)
            if entry is not None and status["status"] == "ended":
                entry.state, entry.call = "ended", None
                entry.outcome, entry.failure = status["outcome"], status["failure"]
            return status
    return entry.public() if entry is not None else None


def _handed_off(ctx: AppContext, entry: OutboundEntry) -> bool:
    """A live call this node dialled but another (or no) node runs now."""
    return entry.live and (entry.call is None or ctx.registry.get(entry.id) is None)


def _from_record(call_id: str, record: dict[str, str]) -> dict[str, Any]:
    state = _RECORD_STATES.get(record.get("state", ""), "dialling")
    return {
        "id": call_id,
        "status": state,
        "profile": record.get("profile") or "default",
        "outcome": record.get("outcome") or None if state == "ended" else None,
        "failure": record.get("failure") or None,
    }


async def _refresh_handed_off(ctx: AppContext) -> None:
    """Many nodes: the live calls this node dialled and handed off are checked in their
    records, so the concurrency limits count only calls still going."""
    for entry in list(ctx.outbound.book.entries.values()):
        if _handed_off(ctx, entry):
            await _status(ctx, entry.id)
