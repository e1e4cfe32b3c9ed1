"""transferToParticipant through the real SDK: 202, CallTransferAccepted and the end of the
leg, CallTransferFailed (fault, failing number) with the call going on, the slow fault,
validation."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
from azure.communication.callautomation import (
    CommunicationUserIdentifier,
    PhoneNumberIdentifier,
)
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from tests.unit.sim.fake_acs.bridgelet import Bridgelet, connected_call, tone_frame, until
from voicebridge.acs import client as acs_client
from voicebridge.core import acs
from voicebridge.sim.fake_acs import FakeAcs, FakeCall
from voicebridge.sim.fake_acs.transfer import TRANSFER_RESULT_S

AGENT = "+15550001111"
ACS_NUMBER = "+18005550100"


async def transfer(bridge: Bridgelet, call: FakeCall, target: Any = None, **kwargs: Any) -> Any:
    assert call.call_connection_id is not None
    kwargs.setdefault("source_caller_id_number", PhoneNumberIdentifier(ACS_NUMBER))
    return await bridge.client.get_call_connection(
        call.call_connection_id
    ).transfer_call_to_participant(
        target if target is not None else PhoneNumberIdentifier(AGENT),
        operation_context="voicebridge-transfer",
        **kwargs,
    )


def posted_at(call: FakeCall, kind: str) -> float:
    return next(t for t, name, _ in call.callbacks_posted if name == kind)


async def test_transfer_accepted_ends_the_leg(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge, tone_frame(100) * 10)
    result = await transfer(bridge, call)
    assert result.operation_context == "voicebridge-transfer"
    request = next(r for r in fake.requests if r["path"].endswith(":transferToParticipant"))
    assert request["hmac_ok"] is True and request["status"] == 202
    assert request["json"]["targetParticipant"]["phoneNumber"] == {"value": AGENT}
    assert request["json"]["sourceCallerIdNumber"] == {"value": ACS_NUMBER}

    await call.wait_ended(5)
    assert call.end_reason == "transferred"
    await until(
        lambda: bridge.ws_close_code is not None and "CallDisconnected" in str(bridge.events)
    )
    accepted = bridge.callback("CallTransferAccepted")
    assert accepted["operationContext"] == "voicebridge-transfer"
    assert accepted["resultInformation"]["code"] == 200
    assert accepted["transferTarget"]["phoneNumber"] == {"value": AGENT}
    assert accepted["transferee"]["rawId"] == "4:+15551230001"
    assert bridge.callback("CallDisconnected")["resultInformation"]["subCode"] == 7015
    # As live ACS ends the bridge's leg: CallDisconnected, then the socket closes (1000).
    names = [name if kind == "callback" else kind for kind, name in bridge.events]
    assert names.index("CallTransferAccepted") < names.index("CallDisconnected")
    assert names.index("CallDisconnected") < names.index("ws_closed")
    assert bridge.ws_close_code == 1000

    [record] = call.transfers
    assert record["target"] == AGENT and record["source_caller_id"] == ACS_NUMBER
    assert record["result"] == "accepted"
    assert posted_at(call, "CallTransferAccepted") - record["at_s"] >= TRANSFER_RESULT_S - 0.02
    assert call.summary()["transfers"] == [record]
    # A hang-up after the acceptance changes nothing: the leg is gone.
    with pytest.raises(HttpResponseError) as err:
        await bridge.client.get_call_connection(call.call_connection_id or "").hang_up(True)
    assert err.value.status_code == 404


async def test_transfer_fault_fails_and_the_call_goes_on(harness: Any) -> None:
    fake, bridge = await harness(
        fake_kwargs={"hangup_after_audio_s": math.inf, "faults": {"acs-transfer-fail": None}}
    )
    call = await connected_call(fake, bridge)
    await transfer(bridge, call)
    await until(lambda: "CallTransferFailed" in bridge.callback_types())
    failed = bridge.callback("CallTransferFailed")
    assert failed["operationContext"] == "voicebridge-transfer"
    assert failed["resultInformation"]["code"] == 480
    assert failed["resultInformation"]["subCode"] == 560480
    assert [name for _, name in call.faults_fired] == ["acs-transfer-fail"]
    assert call.transfers[0]["result"] == "failed"
    # The call goes on: media keeps flowing both ways, nothing else is posted.
    frames = len(bridge.audio_frames())
    await until(lambda: len(bridge.audio_frames()) > frames + 10)
    await bridge.send(acs.audio_data(base64.b64encode(tone_frame(5)).decode()))
    await until(lambda: call.received_frames == 1)
    assert not call.ended.is_set() and call.streaming
    assert "CallDisconnected" not in bridge.callback_types()
    await call.hang_up()
    assert call.end_reason == "caller_hung_up"


async def test_a_number_ending_0000_fails_as_not_found(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await transfer(bridge, call, PhoneNumberIdentifier("+15557770000"))
    await until(lambda: "CallTransferFailed" in bridge.callback_types())
    result = bridge.callback("CallTransferFailed")["resultInformation"]
    assert (result["code"], result["subCode"]) == (404, 560404)
    assert call.faults_fired == [] and not call.ended.is_set()
    # A second transfer, to another number, is accepted.
    await transfer(bridge, call)
    await call.wait_ended(5)
    assert [t["result"] for t in call.transfers] == ["failed", "accepted"]


async def test_slow_transfer_outcome_and_the_caller_waits(harness: Any) -> None:
    # The caller's audio ends 20 s in and it would hang up 0.1 s later, long before the
    # transfer's outcome (25 s after the request): while a transfer is pending it stays on.
    fake, bridge = await harness(
        fake_kwargs={"hangup_after_audio_s": 0.1, "faults": {"acs-transfer-slow": 25.0}}
    )
    call = await connected_call(fake, bridge, tone_frame(100) * 1000)
    await transfer(bridge, call)
    await call.wait_ended(10)
    assert call.end_reason == "transferred"
    assert posted_at(call, "CallTransferAccepted") - call.transfers[0]["at_s"] >= 25.0 - 0.02
    assert "acs-transfer-slow" in [name for _, name in call.faults_fired]
    assert call.caller_samples_sent == 1000 * 320  # all of it: the caller kept listening


async def test_caller_hangs_up_a_while_after_a_failed_transfer(harness: Any) -> None:
    # The caller's audio ends (20 s) before the transfer fails (25 s after the request): it
    # stays hangup_after_audio_s after the failure, for the bridge to say something.
    faults = {"acs-transfer-fail": None, "acs-transfer-slow": 25.0}
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": 0.5, "faults": faults})
    call = await connected_call(fake, bridge, tone_frame(100) * 1000)
    await transfer(bridge, call)
    await call.wait_ended(10)
    assert call.end_reason == "caller_hung_up"
    failed_at = posted_at(call, "CallTransferFailed")
    hangup = next(t for t, what, _ in call.timeline if what == "caller_hangs_up")
    assert hangup >= failed_at + 0.5 - 0.04


async def test_transfer_requests_are_validated(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    with pytest.raises(HttpResponseError) as err:
        await transfer(bridge, call, source_caller_id_number=None)
    assert err.value.status_code == 400
    assert "sourceCallerIdNumber" in str(err.value.message)
    # A communication user needs no caller id; a second transfer while one is pending: 409.
    user = CommunicationUserIdentifier("8:acs:agent-desk")
    await transfer(bridge, call, user, source_caller_id_number=None)
    with pytest.raises(HttpResponseError) as err:
        await transfer(bridge, call)
    assert err.value.status_code == 409 and err.value.error is not None
    assert err.value.error.code == "8607"
    await call.wait_ended(5)
    assert call.transfers == [
        {
            "target": "8:acs:agent-desk",
            "source_caller_id": None,
            "at_s": call.transfers[0]["at_s"],
            "result": "accepted",
        }
    ]
    assert bridge.callback("CallTransferAccepted")["transferTarget"]["rawId"] == "8:acs:agent-desk"


async def test_transfer_with_no_target_is_400(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    path = f"/calling/callConnections/{call.call_connection_id}:transferToParticipant"
    request = HttpRequest("POST", f"{path}?api-version=2026-03-12", json={"operationContext": "x"})
    response = await bridge.client._client.send_request(request)
    assert response.status_code == 400
    assert "targetParticipant" in response.json()["error"]["message"]
    assert call.transfers == []
    await call.hang_up()


def test_fake_call_summary_without_transfers() -> None:
    fake = FakeAcs()
    call = FakeCall(
        fake,
        caller="+15551230001",
        recipient=ACS_NUMBER,
        caller_pcm=b"",
        schema="eventgrid",
        fail_answer=False,
    )
    summary = call.summary()
    assert summary["transfers"] == [] and summary["direction"] == "inbound"
    assert summary["target"] is None and summary["dtmf_sent"] == 0


async def test_the_products_transfer_call_is_accepted(harness: Any) -> None:
    """voicebridge.acs.client.transfer (what the relay calls) against the fake."""
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    assert call.call_connection_id is not None
    await acs_client.transfer(
        bridge.client, call.call_connection_id, AGENT, caller_id=f"4:{ACS_NUMBER}"
    )
    await call.wait_ended(5)
    assert call.end_reason == "transferred"
    assert call.transfers[0]["source_caller_id"] == ACS_NUMBER
    assert bridge.callback("CallTransferAccepted")["operationContext"] == "voicebridge-transfer"
