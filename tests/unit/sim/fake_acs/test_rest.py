"""The Call Automation REST API through the real SDK: HMAC, answer, 404s, hang-up, play."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from azure.communication.callautomation import (
    TextSource,
)
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from tests.unit.sim.fake_acs.bridgelet import (
    connected_call,
    tone_frame,
    until,
)
from voicebridge.sim.fake_acs import verify_hmac


async def test_answer_call_with_good_hmac(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: bridge.props is not None)
    assert bridge.answer_error is None
    props = bridge.props
    assert props.call_connection_id == call.call_connection_id
    assert props.call_connection_state == "connected"
    assert props.callback_url == f"http://{bridge.base}/api/callbacks/key123"
    assert props.server_call_id == call.server_call_id
    assert props.media_streaming_subscription.subscribed_content_types == ["audio"]
    assert fake.calls[call.call_connection_id] is call
    answer = next(r for r in fake.requests if r["path"] == "/calling/callConnections:answer")
    assert answer["hmac_ok"] is True and answer["status"] == 200
    assert answer["query"]["api-version"] == "2026-03-12"
    assert "Repeatability-Request-ID" in answer["headers"]
    assert call.answer_request is not None
    media = call.answer_request["mediaStreamingOptions"]
    assert media["audioFormat"] == "pcm16KMono" and media["enableBidirectional"] is True
    await until(lambda: "MediaStreamingStarted" in bridge.callback_types())
    assert bridge.callback_types()[:3] == [
        "CallConnected",
        "ParticipantsUpdated",
        "MediaStreamingStarted",
    ]
    _, connected = bridge.callbacks[0]
    assert connected["data"]["callConnectionId"] == call.call_connection_id
    assert connected["data"]["operationContext"] == "incomingCall"
    assert connected["specversion"] == "1.0"
    got = await bridge.client.get_call_connection(call.call_connection_id).get_call_properties()
    assert got.media_streaming_subscription.state == "active"
    await call.hang_up()


async def test_wrong_key_is_refused_with_401(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    wrong = base64.b64encode(b"not the key" * 4).decode()
    async with CallAutomationClient(
        fake.endpoint, AzureKeyCredential(wrong), retry_total=0
    ) as client:
        with pytest.raises(HttpResponseError) as err:
            await client.answer_call(
                incoming_call_context=call.incoming_call_context,
                callback_url=f"http://{bridge.base}/api/callbacks/x",
            )
    assert err.value.status_code == 401
    assert err.value.error is not None and err.value.error.code == "401"
    assert fake.requests[-1]["hmac_ok"] is False
    assert not call.answered.is_set()


async def test_endpoint_with_trailing_slash_signs_the_wrong_host(harness: Any) -> None:
    # SDK 1.6.0 quirk: CallAutomationClient(endpoint, key) hands the endpoint string
    # to its HMAC policy unstripped, so "http://h:p/" signs host "h:p/" and fails
    # (from_connection_string strips the slash; building the client by hand must too).
    fake, _ = await harness(answer=False)
    async with CallAutomationClient(
        fake.endpoint + "/", AzureKeyCredential(fake.access_key), retry_total=0
    ) as client:
        with pytest.raises(HttpResponseError) as err:
            await client.get_call_connection("any").get_call_properties()
    assert err.value.status_code == 401 and fake.requests[-1]["hmac_ok"] is False


async def test_unknown_call_is_404(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    with pytest.raises(HttpResponseError) as err:
        await bridge.client.get_call_connection("no-such-call").get_call_properties()
    assert err.value.status_code == 404
    assert fake.requests[-1]["hmac_ok"] is True


def test_verify_hmac_rejects_tampering() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    body = b'{"a":1}'
    date = format_datetime(datetime.now(UTC), usegmt=True)
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    path = "/calling/callConnections:answer?api-version=2026-03-12"
    to_sign = f"POST\n{path}\n{date};127.0.0.1:9;{digest}"
    sig = base64.b64encode(
        hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    headers = {
        "Authorization": "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
        f"&Signature={sig}",
        "x-ms-date": date,
        "Host": "127.0.0.1:9",
        "x-ms-content-sha256": digest,
    }
    ok = {"access_key": key, "method": "POST", "path_with_query": path, "headers": headers}
    assert verify_hmac(**ok, body=body) is None
    assert verify_hmac(**ok, body=b'{"a":2}') == "x-ms-content-sha256 does not match the body"
    assert verify_hmac(**{**ok, "method": "PUT"}, body=body) == "signature mismatch"
    assert verify_hmac(**{**ok, "path_with_query": path + "x"}, body=body) == "signature mismatch"
    moved = {**headers, "Host": "127.0.0.1:10"}
    assert verify_hmac(**{**ok, "headers": moved}, body=body) == "signature mismatch"
    stale = {**headers, "x-ms-date": "Mon, 01 Jan 2024 00:00:00 GMT"}
    assert "clock skew" in (verify_hmac(**{**ok, "headers": stale}, body=body) or "")
    assert "Authorization" in (verify_hmac(**{**ok, "headers": {}}, body=body) or "")


@pytest.mark.parametrize("for_everyone", [False, True], ids=["delete", "terminate"])
async def test_bridge_hang_up(harness: Any, for_everyone: bool) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge, tone_frame(100) * 5)
    assert call.call_connection_id is not None
    conn = bridge.client.get_call_connection(call.call_connection_id)
    await conn.hang_up(is_for_everyone=for_everyone)
    await call.wait_ended(5)
    assert call.end_reason == "bridge_hung_up"
    rest = next(
        r for r in fake.requests if r["method"] == "DELETE" or r["path"].endswith(":terminate")
    )
    assert rest["status"] == 204
    if for_everyone:
        assert rest["method"] == "POST" and rest["path"].endswith(":terminate")
    else:
        assert rest["method"] == "DELETE"
    await until(
        lambda: bridge.ws_close_code is not None and "CallDisconnected" in bridge.events[-1]
    )
    assert bridge.ws_close_code == 1000
    # Bridge hang-up: the socket closes first, then CallDisconnected.
    names = [name if kind == "callback" else kind for kind, name in bridge.events]
    assert names.index("ws_closed") < names.index("CallDisconnected")
    assert call.callbacks_posted[-1][1:] == ("CallDisconnected", 200)
    with pytest.raises(HttpResponseError) as err:
        await conn.get_call_properties()
    assert err.value.status_code == 404


async def test_play_media_to_all_and_cancel(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    assert call.call_connection_id is not None
    conn = bridge.client.get_call_connection(call.call_connection_id)
    # play_media_to_all is deprecated in 1.6.0 (it warns); play_media(play_to="all")
    # sends the same :play request.
    with pytest.warns(DeprecationWarning, match="play_media"):
        await conn.play_media_to_all(
            TextSource(text="Sorry, one moment.", voice_name="en-US-JennyNeural"),
            operation_context="fallback",
        )
    await until(lambda: "PlayCompleted" in bridge.callback_types())
    types = bridge.callback_types()
    assert types.index("PlayStarted") < types.index("PlayCompleted")
    _, done = bridge.callbacks[types.index("PlayCompleted")]
    assert done["data"]["operationContext"] == "fallback"
    play = next(r for r in fake.requests if r["path"].endswith(":play"))
    assert play["status"] == 202 and play["json"]["playSources"][0]["kind"] == "text"

    await conn.play_media(TextSource(text="hold music", voice_name="en-US-JennyNeural"), loop=True)
    await until(lambda: bridge.callback_types().count("PlayStarted") == 2)
    await conn.cancel_all_media_operations()
    await until(lambda: "PlayCanceled" in bridge.callback_types())
    await call.hang_up()
