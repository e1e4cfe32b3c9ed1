"""``createCall``: the bridge places a call, the fake's callee rings, answers and talks (§2-§4).

``POST /calling/callConnections`` with the SDK's ``CreateCallRequest`` JSON (``targets`` and
``callbackUri`` required; ``sourceCallerIdNumber``, ``sourceDisplayName``, ``source``,
``operationContext``, ``mediaStreamingOptions``, ``callIntelligenceOptions``, ... optional) is
answered ``201`` with ``CallConnectionProperties`` (state ``connecting``, a new
``callConnectionId``), what SDK 1.6's ``create_call`` expects. Then the callee's phone rings:

* by default it answers after :data:`OUTBOUND_RING_S` of call time (``expect_outbound(...,
  ring_s=)``): ``CallConnected`` and ``ParticipantsUpdated`` are posted to ``callbackUri``
  and, when the options say ``startMediaStreaming``, the fake dials ``transportUrl`` — the
  same media flow as an answered inbound call, the callee playing the part of the caller
  (its audio, key presses, hang-up ``hangup_after_audio_s`` after its audio: ``callee_hung_up``);
* ``acs-callee-busy``: :data:`BUSY_S` later ``CreateCallFailed`` with :data:`BUSY` (``busy``);
* ``acs-callee-no-answer``: it rings :data:`NO_ANSWER_S`, then ``CreateCallFailed`` with
  :data:`NO_ANSWER` (``no_answer``);
* ``acs-create-fail``: ``createCall`` itself is refused with HTTP 403 (:data:`CREATE_REFUSED`);
  nothing rings; the attempt is recorded as a call that ended ``failed``.

A hang-up by the bridge while it rings cancels the call (``CallDisconnected``,
``bridge_hung_up``); other actions on a ringing call get 400 (8501, call not established).

**The callee.** ``FakeAcs.callee_audio`` (PCM16LE mono at ``acs_rate``; default silence) is
what any callee says; :meth:`OutboundCalls.expect_outbound` gives one number its own audio,
faults, key presses and ring time, for every call to it. Outbound calls are recorded like
inbound ones, in ``fake.placed`` and (with their id) ``fake.calls``, with ``direction
"outbound"``, ``target`` and ``source_caller_id``; :attr:`OutboundCalls.outbound_calls` lists
them and :meth:`OutboundCalls.wait_outbound_call` waits for one.

**Validation** (400 unless said): the body must be an object; ``targets`` a non-empty list
(8523); one target only and a phone number (else 501: the fake does not do group calls or
calls to ACS users); ``callbackUri`` an absolute http(s) URL; ``sourceCallerIdNumber`` is
required to call a phone number (8523); ``mediaStreamingOptions`` as for the answer. A retry
with the same ``Repeatability-Request-ID`` gets the first result and dials nothing new.

**Sources.** Documented: the path and JSON (SDK ``_generated`` models and operations, 201),
``CreateCallFailed`` (Call Automation SDK reference: "the call was not created"), the PSTN end
codes 480/560480 ("no answer from the called user") and 486/560486 ("the called number was
busy"), subcodes 7504/8523, and that calls to phone numbers need ``SourceCallerId`` (ACS
"Troubleshooting call end response codes"). Inferred: that ``CreateCallFailed`` carries those
PSTN pairs and that nothing (no ``CallDisconnected``) follows it, the messages, the ring times,
which HTTP error a refused createCall gets, and the 400s' exact form.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from voicebridge.sim.fake_acs.bodies import (
    callback_uri_problem,
    error,
    identifier_of,
    media_rate,
    phone_number_of,
)
from voicebridge.sim.fake_acs.keypad import DtmfPlan, check_dtmf
from voicebridge.sim.fake_acs.media import FakeCall
from voicebridge.sim.fake_acs.transfer import CallTransfers
from voicebridge.sim.faults import FaultValue, check_faults

#: Call seconds a callee's phone rings before it answers (default).
OUTBOUND_RING_S = 2.0
#: Call seconds an unanswered call rings before ``CreateCallFailed`` (``acs-callee-no-answer``).
NO_ANSWER_S = 30.0
#: Call seconds before a busy callee's ``CreateCallFailed`` (``acs-callee-busy``).
BUSY_S = 0.5
#: ``CreateCallFailed.resultInformation``: nobody answered.
NO_ANSWER = {
    "code": 480,
    "subCode": 560480,
    "message": "Call failed: no answer from the called user.",
}
#: ``CreateCallFailed.resultInformation``: the callee was busy.
BUSY = {"code": 486, "subCode": 560486, "message": "Call failed: the called number was busy."}
#: ``(HTTP status, error code, message)`` of a createCall refused by ``acs-create-fail``.
CREATE_REFUSED = (
    403,
    "7504",
    "Insufficient application permissions: the call could not be created (fake ACS).",
)


@dataclass
class Callee:
    """What one number does when called (:meth:`OutboundCalls.expect_outbound`)."""

    number: str
    pcm: bytes | None = None  # None: FakeAcs.callee_audio
    faults: dict[str, FaultValue] = field(default_factory=dict)
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    ring_s: float = OUTBOUND_RING_S


class OutboundCalls(CallTransfers):
    """``createCall`` and the callee (see the module docstring)."""

    @property
    def callee_audio(self) -> bytes:
        """What a callee without :meth:`expect_outbound` audio says: PCM16LE mono at
        ``acs_rate`` from its first media frame on (default: nothing, silence)."""
        return self._callee_audio

    @callee_audio.setter
    def callee_audio(self, pcm: bytes) -> None:
        if len(pcm) % 2:
            raise ValueError("callee_audio must be PCM16LE: an even number of bytes")
        self._callee_audio = bytes(pcm)

    def expect_outbound(
        self,
        number: str,
        pcm: bytes | None = None,
        *,
        faults: Mapping[str, FaultValue] | None = None,
        dtmf: DtmfPlan | None = None,
        ring_s: float = OUTBOUND_RING_S,
    ) -> None:
        """Say what the callee ``number`` (E.164) does, for every later call to it: ``pcm``
        its audio (None: :attr:`callee_audio`), ``faults`` (``acs-*``, on top of the
        fake's: e.g. ``acs-callee-busy``), ``dtmf`` its key presses (as ``place_call``),
        ``ring_s`` call seconds before it answers. ``ValueError`` for bad values."""
        if not number.startswith("+") or not number[1:].isdigit():
            raise ValueError("number must be E.164: '+' and digits")
        if pcm is not None and len(pcm) % 2:
            raise ValueError("pcm must be PCM16LE: an even number of bytes")
        if not (math.isfinite(ring_s) and ring_s >= 0):
            raise ValueError("ring_s must be finite and >= 0")
        checked = check_faults({**self.faults, **(faults or {})}, "acs")  # the pairs too
        self._callees[number] = Callee(
            number=number,
            pcm=None if pcm is None else bytes(pcm),
            faults={name: checked[name] for name in faults or {}},
            dtmf=check_dtmf(dtmf),
            ring_s=float(ring_s),
        )

    @property
    def outbound_calls(self) -> list[FakeCall]:
        """Every ``createCall`` attempt, in order (refused ones included)."""
        return [call for call in self.placed if call.direction == "outbound"]

    async def wait_outbound_call(self, n: int = 1, timeout: float = 10.0) -> FakeCall:  # noqa: ASYNC109
        """Wait up to ``timeout`` wall seconds for the ``n``-th outbound call (1-based) and
        return it; ``TimeoutError`` if it does not come."""
        async with asyncio.timeout(timeout):
            while len(self.outbound_calls) < n:
                self._outbound_added.clear()
                await self._outbound_added.wait()
        return self.outbound_calls[n - 1]

    async def _create_call(
        self, request: web.Request, parsed: Any, record: dict[str, Any]
    ) -> web.StreamResponse:
        """``POST /calling/callConnections``: 201 and the ring in the background."""
        checked = _check_create(parsed, self.acs_rate)
        if isinstance(checked, web.Response):
            return checked
        number, source, media, rate = checked
        repeat_id = request.headers.get("Repeatability-Request-ID")
        if repeat_id and repeat_id in self._create_repeats:
            first = self._create_repeats[repeat_id]
            record["call_connection_id"] = first.call_connection_id
            return web.json_response(first._answer_props, status=201)
        callee = self._callees.get(number) or Callee(number=number)
        call = FakeCall(
            self,
            caller=number,
            recipient=source,
            caller_pcm=self._callee_audio if callee.pcm is None else callee.pcm,
            schema="eventgrid",
            fail_answer=False,
            faults=callee.faults,
            dtmf=callee.dtmf,
            direction="outbound",
        )
        call.target, call.source_caller_id, call.create_request = number, source, parsed
        call.api_version = request.query.get("api-version", "")
        self.placed.append(call)
        self._outbound_added.set()
        if "acs-create-fail" in call.faults:
            return self._refuse_create(call)
        call.callback_uri = str(parsed["callbackUri"])
        context = parsed.get("operationContext")
        call.operation_context = context if isinstance(context, str) else None
        call._negotiate_media(media, rate)
        call.call_connection_id = str(uuid.uuid4())
        self.calls[call.call_connection_id] = call
        record["call_connection_id"] = call.call_connection_id
        call._answer_props = call._properties()
        if repeat_id:
            self._create_repeats[repeat_id] = call
        call._log("create_call", {"call_connection_id": call.call_connection_id})
        call._ring_task = self._spawn(
            self._ring_callee(call, callee.ring_s), f"ring-{call.call_connection_id[:8]}"
        )
        return web.json_response(call._answer_props, status=201)

    def _refuse_create(self, call: FakeCall) -> web.Response:
        """``acs-create-fail``: the attempt ends ``failed`` at once; the SDK gets the error."""
        call._fired("acs-create-fail")
        call._ending = True
        call.end_reason = "failed"
        call.state = "disconnected"
        call._log("ended", {"reason": "failed"})
        call.ended.set()
        status, code, message = CREATE_REFUSED
        return error(status, message, code=code)

    async def _ring_callee(self, call: FakeCall, ring_s: float) -> None:
        """Ring; then the callee is busy, does not answer, or answers (the inbound flow)."""
        if "acs-callee-busy" in call.faults:
            await asyncio.sleep(BUSY_S / self.speed)
            call._fired("acs-callee-busy")
            await self._create_failed(call, "busy", BUSY)
            return
        if "acs-callee-no-answer" in call.faults:
            await asyncio.sleep(NO_ANSWER_S / self.speed)
            call._fired("acs-callee-no-answer")
            await self._create_failed(call, "no_answer", NO_ANSWER)
            return
        await asyncio.sleep(ring_s / self.speed)
        if call._ending:
            return
        call._ring_task = None  # answered: a hang-up no longer cancels this task
        call.state = "connected"
        call._answer_props = call._properties()
        call.answered.set()
        call._log("answered", {"call_connection_id": call.call_connection_id, "by": "callee"})
        # Everything after the answer is the inbound flow's: CallConnected, media, the end.
        self._spawn(self._after_answer(call), f"connect-{(call.call_connection_id or '')[:8]}")

    async def _create_failed(self, call: FakeCall, reason: str, result: dict[str, Any]) -> None:
        """Post ``CreateCallFailed`` with ``result``; the call ends as ``reason``."""
        if call._ending:
            return
        call._ending = True
        call.end_reason = reason
        call._log("hangup", {"by": "callee", "reason": reason})
        await self._post_event(call, "CreateCallFailed", result=dict(result))
        call.state = "disconnected"
        call._log("ended", {"reason": reason})
        call.ended.set()


def _check_create(parsed: Any, default_rate: int) -> tuple[str, str, Any, int] | web.Response:
    """``(target number, source number, mediaStreamingOptions, rate)`` of a createCall body,
    or the error reply (see the module docstring)."""
    if not isinstance(parsed, dict):
        return error(400, "The request body must be a JSON object.")
    targets = parsed.get("targets")
    if not isinstance(targets, list) or not targets:
        return error(400, "targets is required: at least one participant to call.", "8523")
    if len(targets) > 1:
        return error(501, "The fake ACS places calls to one target only.")
    number = phone_number_of(targets[0])
    if number is None:
        if identifier_of(targets[0]) is None:
            return error(400, "targets[0] is not a communication identifier.", "8523")
        return error(501, "The fake ACS places calls to phone numbers only.")
    problem = callback_uri_problem(parsed.get("callbackUri"))
    if problem is not None:
        return problem
    source = parsed.get("sourceCallerIdNumber")
    if not isinstance(source, dict) or not isinstance(source.get("value"), str):
        return error(400, "sourceCallerIdNumber is required to call a phone number.", "8523")
    media = parsed.get("mediaStreamingOptions")
    rate = media_rate(media, default_rate)
    if isinstance(rate, web.Response):
        return rate
    return number, str(source["value"]), media, rate
