"""``transferToParticipant``: the bridge hands the caller to another party (§2, §3).

``POST /calling/callConnections/{id}:transferToParticipant`` with the SDK's
``TransferToParticipantRequest`` JSON (``targetParticipant`` required; ``sourceCallerIdNumber``,
``operationContext``, ``operationCallbackUri``, ``transferee``, ``customCallingContext``
optional) is answered ``202`` with a ``TransferCallResponse`` (``{"operationContext": ...}``),
what SDK 1.6's ``transfer_call_to_participant`` expects. :data:`TRANSFER_RESULT_S` of call time
later (``acs-transfer-slow=T``: ``T``) one callback says how it went:

* ``CallTransferAccepted`` (result 200/0; ``transferTarget`` and ``transferee`` identifiers as
  in the documented event data), then the bridge's leg ends as live ACS ends it: the media
  clock stops, ``CallDisconnected`` is posted (result 200/7015) and the media socket is closed
  with 1000; the call ends as ``transferred`` — also when the bridge hangs up (or the caller)
  once the transfer was accepted.
* ``CallTransferFailed`` (:data:`FAILED_NO_ANSWER` with the fault ``acs-transfer-fail``, which
  fails every transfer; :data:`FAILED_NOT_FOUND` for a phone-number target ending in
  :data:`FAILING_TARGET_SUFFIX`): the call goes on, media keeps streaming both ways.

Requests are refused like ACS would: no usable ``targetParticipant`` → 400 (8523, invalid
argument); a phone-number target without ``sourceCallerIdNumber`` → 400 (8523: the docs say
transfers to phone numbers need the source caller id; that it is refused at once, not failed
later, is an inference); a second transfer while one is pending → 409 (8607, transfer operation
conflict). While a transfer is pending the caller does not hang up by itself; after a failed
one it stays at least ``hangup_after_audio_s`` longer, for the bridge's apology.

**Sources.** Documented: the REST path and body fields (SDK ``_generated`` models and
operations), the event names and their data fields (Call Automation SDK reference:
``CallTransferAccepted`` has ``transferTarget``/``transferee``), the subcodes 8523, 8607 and the
PSTN end codes 480/560480 ("no answer from the called user") and 404/560404 ("phone number not
found") (ACS "Troubleshooting call end response codes": Call Automation and PSTN tables).
Inferred: that ``CallTransferFailed.resultInformation`` carries those PSTN pairs (the SDK
describes the field as "the resulting SIP code/sub-code"), the messages' wording, 200/7015 on
the ``CallDisconnected`` (Microsoft Graph's documented "transfer completed" end reason), the
delay, and that ``callConnectionState`` stays ``connected`` while the transfer is pending (live
ACS may say ``transferring``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from voicebridge.sim.fake_acs.bodies import error, identifier_of, phone_number_of
from voicebridge.sim.fake_acs.flow import CallFlow
from voicebridge.sim.fake_acs.media import FakeCall, phone

#: Call seconds between the transfer request and its outcome callback.
TRANSFER_RESULT_S = 1.0
#: A phone-number target ending in this fails (:data:`FAILED_NOT_FOUND`).
FAILING_TARGET_SUFFIX = "0000"
#: ``CallTransferFailed.resultInformation`` when nobody answers (``acs-transfer-fail``).
FAILED_NO_ANSWER = {
    "code": 480,
    "subCode": 560480,
    "message": "Transfer failed: no answer from the called user.",
}
#: ``CallTransferFailed.resultInformation`` for a target number that does not exist.
FAILED_NOT_FOUND = {
    "code": 404,
    "subCode": 560404,
    "message": "Transfer failed: phone number not found.",
}


class CallTransfers(CallFlow):
    """``transferToParticipant`` and its outcome (see the module docstring)."""

    def _transfer(self, call: FakeCall, body: dict[str, Any]) -> web.StreamResponse:
        """``POST ...:transferToParticipant``: 202 and the outcome in the background."""
        target_model = body.get("targetParticipant")
        target = identifier_of(target_model)
        if target is None:
            return error(
                400,
                "targetParticipant is required: a phone number or communication user.",
                code="8523",
            )
        source = body.get("sourceCallerIdNumber")
        source_number: str | None = None
        if source is not None:
            if not isinstance(source, dict) or not isinstance(source.get("value"), str):
                return error(400, "sourceCallerIdNumber.value must be a phone number.", "8523")
            source_number = str(source["value"])
        is_phone = phone_number_of(target_model) is not None
        if is_phone and not source_number:
            return error(
                400,
                "sourceCallerIdNumber is required to transfer to a phone number.",
                code="8523",
            )
        if call._transfer_pending:
            return error(409, "A transfer is already in progress on this call.", code="8607")
        context = body.get("operationContext")
        context = context if isinstance(context, str) else None
        uri = body.get("operationCallbackUri")
        record: dict[str, Any] = {
            "target": target,
            "source_caller_id": source_number,
            "at_s": call.now(),
            "result": "pending",
        }
        call.transfers.append(record)
        call._transfer_pending = True
        call._log("transfer", {"target": target})
        target_json = phone(target) if is_phone else target_model
        self._spawn(
            self._transfer_outcome(
                call, record, target_json, context, uri if isinstance(uri, str) else None
            ),
            f"transfer-{(call.call_connection_id or '')[:8]}",
        )
        return web.json_response({"operationContext": context} if context else {}, status=202)

    def _transfer_failure(self, call: FakeCall, target: str) -> dict[str, Any] | None:
        """The ``resultInformation`` of a transfer that fails, None if it is accepted."""
        if "acs-transfer-fail" in call.faults:
            call._fired("acs-transfer-fail", target=target)
            return dict(FAILED_NO_ANSWER)
        if target.startswith("+") and target.endswith(FAILING_TARGET_SUFFIX):
            return dict(FAILED_NOT_FOUND)
        return None

    async def _transfer_outcome(
        self,
        call: FakeCall,
        record: dict[str, Any],
        target_json: Any,
        context: str | None,
        uri: str | None,
    ) -> None:
        """After the delay: ``CallTransferFailed`` (the call goes on) or
        ``CallTransferAccepted`` and the end of the bridge's leg (``transferred``)."""
        slow = call.faults.get("acs-transfer-slow")
        delay_s = slow if isinstance(slow, float) else TRANSFER_RESULT_S
        if isinstance(slow, float):
            call._fired("acs-transfer-slow", seconds=slow)
        await asyncio.sleep(delay_s / self.speed)
        if call._ending:
            record["result"] = "abandoned"
            call._transfer_pending = False
            return
        failure = self._transfer_failure(call, str(record["target"]))
        call._transfer_pending = False
        if failure is not None:
            record["result"] = "failed"
            call._quiet_floor_tick = max(call._quiet_floor_tick, call.next_tick)
            call._log("transfer_failed", {"code": failure["code"], "subCode": failure["subCode"]})
            await self._post_event(
                call, "CallTransferFailed", operation_context=context, uri=uri, result=failure
            )
            return
        record["result"] = "accepted"
        call._transfer_accepted = True
        call._log("transfer_accepted", {})
        extra = {"transferTarget": target_json, "transferee": phone(call.caller)}
        await self._post_event(
            call, "CallTransferAccepted", extra, operation_context=context, uri=uri
        )
        await self._end(call, "transferred")
