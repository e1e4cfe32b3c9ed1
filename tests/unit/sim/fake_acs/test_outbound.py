"""createCall through the real SDK: the callee answers and talks, is busy, does not answer;
createCall refused; validation, repeatability, a hang-up while it rings."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
from azure.communication.callautomation import PhoneNumberIdentifier
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from tests.unit.sim.fake_acs.bridgelet import FRAME, Bridgelet, tone_frame, until
from voicebridge.core import acs
from voicebridge.sim.fake_acs import NO_ANSWER_S, OUTBOUND_RING_S, FakeAcs

CALLEE = "+15557654321"
ACS_NUMBER = "+18005550100"


async def raw_create(bridge: Bridgelet, body: dict[str, Any]) -> Any:
    """POST a createCall body as is (HMAC-signed by the SDK's pipeline)."""
    request = HttpRequest("POST", "/calling/callConnections?api-version=2026-03-12", json=body)
    return await bridge.client._client.send_request(request)


async def test_callee_answers_talks_and_hangs_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": 0.1})
    speech = tone_frame(700) * 10
    fake.expect_outbound(CALLEE, speech, dtmf=[(0.04, "9")])
    props = await bridge.create_call(CALLEE, ACS_NUMBER)
    call = await fake.wait_outbound_call()
    assert props.call_connection_id == call.call_connection_id
    assert props.call_connection_state == "connecting"
    assert props.targets[0].raw_id == f"4:{CALLEE}"
    assert props.source_caller_id_number.raw_id == f"4:{ACS_NUMBER}"
    create = next(r for r in fake.requests if r["path"] == "/calling/callConnections")
    assert create["hmac_ok"] is True and create["status"] == 201
    assert create["json"]["targets"][0]["phoneNumber"] == {"value": CALLEE}
    assert create["json"]["mediaStreamingOptions"]["startMediaStreaming"] is True
    assert fake.calls[props.call_connection_id] is call

    await call.wait_ended(5)
    assert call.end_reason == "callee_hung_up"
    assert (call.direction, call.target, call.source_caller_id) == ("outbound", CALLEE, ACS_NUMBER)
    await until(lambda: bridge.ws_close_code is not None)
    types = bridge.callback_types()
    assert types[0] == "CallConnected"  # the other two race, as with live ACS
    assert set(types[1:3]) == {"ParticipantsUpdated", "MediaStreamingStarted"}
    assert bridge.callback("CallConnected")["operationContext"] == "outbound"
    assert bridge.callback_types()[-1] == "CallDisconnected"
    # The media flow of an inbound call, the callee playing the caller.
    assert bridge.media_headers["x-ms-call-connection-id"] == call.call_connection_id
    audio = bridge.audio_frames()
    assert b"".join(f.pcm for f in audio[:10]) == speech
    assert {f.participant_raw_id for f in audio} == {f"4:{CALLEE}"}
    assert [acs.parse(m).data for m in bridge.media_messages if '"DtmfData"' in m] == ["9"]
    assert call.caller_samples_sent == 10 * FRAME and call.dtmf_sent == 1
    ringing = [t for t, what, _ in call.timeline if what in ("create_call", "answered")]
    assert ringing[1] - ringing[0] >= OUTBOUND_RING_S - 0.02
    summary = call.summary()
    assert summary["direction"] == "outbound" and summary["end_reason"] == "callee_hung_up"
    assert summary["target"] == CALLEE and summary["source_caller_id"] == ACS_NUMBER


async def test_default_callee_audio_and_bridge_hang_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    fake.callee_audio = tone_frame(300) * 5
    props = await bridge.create_call(CALLEE)
    call = await fake.wait_outbound_call()
    await until(lambda: len(bridge.audio_frames()) >= 5)
    assert bridge.audio_frames()[0].pcm == tone_frame(300)
    got = await bridge.client.get_call_connection(props.call_connection_id).get_call_properties()
    assert got.call_connection_state == "connected" and got.answered_by is None
    await bridge.client.get_call_connection(props.call_connection_id).hang_up(True)
    await call.wait_ended(5)
    assert call.end_reason == "bridge_hung_up"
    with pytest.raises(ValueError, match="even"):
        fake.callee_audio = b"\0"


async def test_busy_callee(harness: Any) -> None:
    fake, bridge = await harness()
    fake.expect_outbound(CALLEE, faults={"acs-callee-busy": None})
    await bridge.create_call(CALLEE)
    call = await fake.wait_outbound_call()
    await call.wait_ended(5)
    assert call.end_reason == "busy"
    await until(lambda: "CreateCallFailed" in bridge.callback_types())
    failed = bridge.callback("CreateCallFailed")
    assert (failed["resultInformation"]["code"], failed["resultInformation"]["subCode"]) == (
        486,
        560486,
    )
    assert failed["operationContext"] == "outbound"
    assert failed["callConnectionId"] == call.call_connection_id
    assert bridge.callback_types() == ["CreateCallFailed"] and bridge.ws is None
    assert [name for _, name in call.faults_fired] == ["acs-callee-busy"]
    # Other numbers are not busy.
    await bridge.create_call("+15550009999")
    other = await fake.wait_outbound_call(2)
    await until(lambda: other.media_connected.is_set())
    await other.hang_up()
    assert other.end_reason == "callee_hung_up"


async def test_callee_does_not_answer(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"faults": {"acs-callee-no-answer": None}})
    await bridge.create_call(CALLEE)
    call = await fake.wait_outbound_call()
    await call.wait_ended(10)
    assert call.end_reason == "no_answer"
    await until(lambda: "CreateCallFailed" in bridge.callback_types())
    result = bridge.callback("CreateCallFailed")["resultInformation"]
    assert (result["code"], result["subCode"]) == (480, 560480)
    rang = [t for t, what, _ in call.timeline if what in ("create_call", "ended")]
    assert rang[1] - rang[0] >= NO_ANSWER_S - 0.02
    assert call.media_dials == []


async def test_create_call_refused(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"faults": {"acs-create-fail": None}})
    with pytest.raises(HttpResponseError) as err:
        await bridge.create_call(CALLEE)
    assert err.value.status_code == 403 and err.value.error is not None
    assert err.value.error.code == "7504"
    [call] = fake.outbound_calls
    assert call.end_reason == "failed" and call.call_connection_id is None
    assert call.callbacks_posted == [] and fake.calls == {}


async def test_create_call_bodies_are_validated(harness: Any) -> None:
    fake, bridge = await harness()
    callback = bridge.callback_url
    target = {"rawId": f"4:{CALLEE}", "phoneNumber": {"value": CALLEE}}
    source = {"value": ACS_NUMBER}
    cases = [
        ({"callbackUri": callback, "sourceCallerIdNumber": source}, 400, "targets"),
        ({"targets": [], "callbackUri": callback}, 400, "targets"),
        ({"targets": [target], "sourceCallerIdNumber": source}, 400, "callbackUri"),
        ({"targets": [target], "callbackUri": "ftp://x/"}, 400, "callbackUri"),
        ({"targets": [target], "callbackUri": callback}, 400, "sourceCallerIdNumber"),
        ({"targets": [target, target], "callbackUri": callback}, 501, "one target"),
        (
            {
                "targets": [target],
                "callbackUri": callback,
                "sourceCallerIdNumber": source,
                "mediaStreamingOptions": {"transportUrl": "http://x/"},
            },
            400,
            "transportUrl",
        ),
    ]
    for body, status, word in cases:
        response = await raw_create(bridge, body)
        assert response.status_code == status, body
        assert word in response.json()["error"]["message"], body
    assert fake.outbound_calls == [] and fake.calls == {}
    # The SDK's own request for a non-phone target: the fake calls phone numbers only.
    user = {"rawId": "8:acs:x", "communicationUser": {"id": "8:acs:x"}}
    response = await raw_create(bridge, {"targets": [user], "callbackUri": callback})
    assert response.status_code == 501


async def test_a_retried_create_call_dials_once(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    headers = {"Repeatability-Request-ID": "6c1e2b4a-0000-4000-8000-000000000001"}
    first = await bridge.create_call(CALLEE, headers=headers)
    again = await bridge.create_call(CALLEE, headers=headers)
    assert again.call_connection_id == first.call_connection_id
    assert len(fake.outbound_calls) == 1
    call = fake.outbound_calls[0]
    await until(lambda: call.media_connected.is_set())
    await call.hang_up()


async def test_hang_up_while_ringing_cancels_the_call(harness: Any) -> None:
    fake, bridge = await harness()
    fake.expect_outbound(CALLEE, ring_s=600.0)
    props = await bridge.create_call(CALLEE)
    call = await fake.wait_outbound_call()
    conn = bridge.client.get_call_connection(props.call_connection_id)
    with pytest.raises(HttpResponseError) as err:
        await conn.start_media_streaming()
    assert err.value.status_code == 400 and err.value.error is not None
    assert err.value.error.code == "8501"
    got = await conn.get_call_properties()
    assert got.call_connection_state == "connecting"
    await conn.hang_up(True)
    await call.wait_ended(5)
    assert call.end_reason == "bridge_hung_up" and call.media_dials == []
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    assert bridge.callback_types() == ["CallDisconnected"]


def test_expect_outbound_checks_its_arguments() -> None:
    fake = FakeAcs()
    with pytest.raises(ValueError, match=r"E\.164"):
        fake.expect_outbound("5551234")
    with pytest.raises(ValueError, match="even"):
        fake.expect_outbound(CALLEE, b"\0")
    with pytest.raises(ValueError, match="cannot be combined"):
        fake.expect_outbound(CALLEE, faults={"acs-callee-busy": None, "acs-create-fail": None})
    with pytest.raises(ValueError, match="unknown fault"):
        fake.expect_outbound(CALLEE, faults={"acs-nope": None})
    with pytest.raises(ValueError, match="ring_s"):
        fake.expect_outbound(CALLEE, ring_s=-1)


async def test_create_call_needs_the_hmac_signature(harness: Any) -> None:
    fake, bridge = await harness()
    wrong = AzureKeyCredential(base64.b64encode(b"not the key" * 4).decode())
    async with CallAutomationClient(fake.endpoint, wrong, retry_total=0) as client:
        with pytest.raises(HttpResponseError) as err:
            await client.create_call(
                PhoneNumberIdentifier(CALLEE),
                bridge.callback_url,
                source_caller_id_number=PhoneNumberIdentifier(ACS_NUMBER),
            )
    assert err.value.status_code == 401 and fake.requests[-1]["hmac_ok"] is False
    assert fake.outbound_calls == []
