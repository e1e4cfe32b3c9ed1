"""The fake ACS, driven by the real Call Automation SDK and a tiny in-test bridge.

``Bridgelet`` stands in for the bridge: an aiohttp server with the Event Grid
webhook, the callback endpoint and the media WebSocket, answering with the real
``azure.communication.callautomation.aio.CallAutomationClient``. The media clock
runs fast (``speed``) so whole calls take a fraction of a second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import numpy as np
import pytest
from aiohttp import WSMsgType, web
from azure.communication.callautomation import (
    AudioFormat,
    MediaStreamingAudioChannelType,
    MediaStreamingContentType,
    MediaStreamingOptions,
    StreamingTransportType,
    TextSource,
)
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.messaging import CloudEvent
from cryptography.hazmat.primitives.asymmetric import rsa

from voicebridge.core import acs
from voicebridge.sim import fake_acs
from voicebridge.sim.fake_acs import FRAME_S, FakeAcs, FakeCall, verify_hmac

SPEED = 20.0
RATE = 16000
FRAME = RATE // 50


async def until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``within_s`` seconds.

    Polling (not an Event) because the conditions are on plain counters the fake
    updates from its own tasks.
    """
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def tone_frame(value: int, samples: int = FRAME) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


class Bridgelet:
    """A minimal bridge: webhook + callbacks + media socket, answering via the SDK."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        answer: bool = True,
        audio_format: str = AudioFormat.PCM16_K_MONO,
        start_media: bool = True,
        media_status: int | None = None,
        inline_answer: bool = False,
    ) -> None:
        self.answer = answer
        self.inline_answer = inline_answer  # answer before replying to Event Grid
        self.audio_format = audio_format
        self.start_media = start_media
        self.media_status = media_status  # reject the media upgrade with this status
        self.client = CallAutomationClient(endpoint, AzureKeyCredential(access_key), retry_total=0)
        self.incoming: list[tuple[dict[str, str], Any]] = []
        self.callbacks: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.events: list[tuple[str, Any]] = []  # callbacks and socket events, in arrival order
        self.media_headers: dict[str, str] = {}
        self.media_messages: list[str] = []
        self.media_times: list[float] = []  # monotonic arrival time of each message
        self.ws: web.WebSocketResponse | None = None
        self.ws_close_code: int | None = None
        self.props: Any = None
        self.answer_error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/incoming-call", self._incoming)
        app.router.add_route("OPTIONS", "/api/incoming-call", self._options)
        app.router.add_post("/api/callbacks/{key}", self._callback)
        app.router.add_get("/ws/media/{key}", self._media)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def webhook(self) -> str:
        return f"http://{self.base}/api/incoming-call"

    def callback_types(self) -> list[str]:
        return [ev["type"].removeprefix("Microsoft.Communication.") for _, ev in self.callbacks]

    async def _incoming(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.incoming.append((dict(request.headers), body))
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            return web.json_response({"validationResponse": body[0]["data"]["validationCode"]})
        event = body[0] if isinstance(body, list) else body
        if self.answer and self.inline_answer:
            await self.answer_call(event["data"]["incomingCallContext"])
        elif self.answer:
            task = asyncio.create_task(self.answer_call(event["data"]["incomingCallContext"]))
            self._tasks.add(task)
        return web.Response(status=200)

    async def _options(self, request: web.Request) -> web.Response:
        origin = request.headers.get("WebHook-Request-Origin", "")
        return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin})

    async def answer_call(self, context: str) -> None:
        media = MediaStreamingOptions(
            transport_url=f"ws://{self.base}/ws/media/key123",
            transport_type=StreamingTransportType.WEBSOCKET,
            content_type=MediaStreamingContentType.AUDIO,
            audio_channel_type=MediaStreamingAudioChannelType.MIXED,
            start_media_streaming=self.start_media,
            enable_bidirectional=True,
            audio_format=self.audio_format,
            enable_dtmf_tones=True,
        )
        try:
            self.props = await self.client.answer_call(
                incoming_call_context=context,
                callback_url=f"http://{self.base}/api/callbacks/key123",
                operation_context="incomingCall",
                media_streaming=media,
            )
        except HttpResponseError as exc:
            self.answer_error = exc

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert isinstance(body, list)
        for event in body:
            self.callbacks.append((dict(request.headers), event))
            self.events.append(("callback", event["type"].rsplit(".", 1)[-1]))
        return web.Response(status=200)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        self.media_headers = dict(request.headers)
        if self.media_status is not None:
            return web.Response(status=self.media_status)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        self.events.append(("ws_open", None))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.media_messages.append(msg.data)
                self.media_times.append(time.monotonic())
        self.ws_close_code = ws.close_code
        self.events.append(("ws_closed", ws.close_code))
        return ws

    async def send(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    def audio_frames(self) -> list[acs.AudioData]:
        parsed = [acs.parse(m) for m in self.media_messages]
        return [p for p in parsed if isinstance(p, acs.AudioData)]


@pytest.fixture
def make_fake() -> Any:
    fakes: list[FakeAcs] = []

    async def factory(**kwargs: Any) -> FakeAcs:
        kwargs.setdefault("speed", SPEED)
        kwargs.setdefault("hangup_after_audio_s", 0.1)
        fake = FakeAcs(**kwargs)
        await fake.start()
        fakes.append(fake)
        return fake

    return factory, fakes


@pytest.fixture
async def harness(make_fake: Any) -> AsyncIterator[Any]:
    """``await new(fake_kwargs, **bridgelet_kwargs)`` -> (fake, bridgelet); stopped after."""
    factory, fakes = make_fake
    bridgelets: list[Bridgelet] = []

    async def new(
        fake_kwargs: dict[str, Any] | None = None, **bridge_kwargs: Any
    ) -> tuple[FakeAcs, Bridgelet]:
        fake = await factory(**(fake_kwargs or {}))
        bridge = Bridgelet(endpoint=fake.endpoint, access_key=fake.access_key, **bridge_kwargs)
        await bridge.start()
        bridgelets.append(bridge)
        return fake, bridge

    yield new
    for fake in fakes:
        await fake.stop()
    for bridge in bridgelets:
        await bridge.stop()
    for fake in fakes:
        assert fake.internal_errors == []


async def connected_call(
    fake: FakeAcs, bridge: Bridgelet, pcm: bytes = b"", **kwargs: Any
) -> FakeCall:
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm, **kwargs)
    await asyncio.wait_for(call.media_connected.wait(), 5)
    return call


# --------------------------------------------------------------------------- Event Grid


async def test_incoming_call_eventgrid_shape_and_redelivery(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    assert call.incoming_call_status == 200
    headers, body = bridge.incoming[0]
    assert headers["aeg-event-type"] == "Notification"
    assert headers["aeg-delivery-count"] == "0"
    assert headers["aeg-subscription-name"]
    assert headers["Content-Type"].startswith("application/json")
    assert isinstance(body, list) and len(body) == 1
    event = body[0]
    assert event["eventType"] == "Microsoft.Communication.IncomingCall"
    assert event["subject"] == "/caller/4:+15551230001/recipient/4:+18005550100"
    assert event["dataVersion"] == "1.0" and event["metadataVersion"] == "1"
    data = event["data"]
    assert data["from"] == {
        "kind": "phoneNumber",
        "rawId": "4:+15551230001",
        "phoneNumber": {"value": "+15551230001"},
    }
    assert data["to"]["rawId"] == "4:+18005550100"
    assert data["incomingCallContext"] == call.incoming_call_context
    assert data["serverCallId"] == call.server_call_id
    assert data["correlationId"] == call.correlation_id

    other = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    assert other.incoming_call_context != call.incoming_call_context

    assert await fake.redeliver_incoming_call(call, bridge.webhook) == 200
    again_headers, again = bridge.incoming[-1]
    assert again_headers["aeg-delivery-count"] == "1"
    assert again[0]["id"] == event["id"]


async def test_incoming_call_cloudevents_shape(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"", schema="cloudevents")
    headers, body = bridge.incoming[0]
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    parsed = CloudEvent.from_dict(body)
    assert parsed.type == "Microsoft.Communication.IncomingCall"
    assert parsed.data["incomingCallContext"] == call.incoming_call_context


async def test_validate_subscription_both_schemas(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    result = await fake.validate_subscription(bridge.webhook)
    assert result["ok"] and result["body"] == {"validationResponse": result["validation_code"]}
    headers, body = bridge.incoming[0]
    assert headers["aeg-event-type"] == "SubscriptionValidation"
    assert body[0]["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert (await fake.validate_subscription(bridge.webhook, schema="cloudevents"))["ok"]


# --------------------------------------------------------------------------- REST + HMAC


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


# --------------------------------------------------------------------------- JWT


async def test_jwks_verifies_the_tokens_it_signs(harness: Any) -> None:
    fake, bridge = await harness()
    call = await connected_call(fake, bridge)
    await until(lambda: len(bridge.callbacks) >= 1)
    media_token = bridge.media_headers["Authorization"].removeprefix("Bearer ")
    callback_token = bridge.callbacks[0][0]["Authorization"].removeprefix("Bearer ")
    # PyJWKClient fetches with blocking urllib: keep it off the loop serving the JWKS.
    client = jwt.PyJWKClient(fake.jwks_url)

    def verify(token: str) -> dict[str, Any]:
        key = client.get_signing_key_from_jwt(token)
        return jwt.decode(
            token, key.key, algorithms=["RS256"], issuer=fake_acs.ISSUER, audience=fake.resource_id
        )

    media_claims = await asyncio.to_thread(verify, media_token)
    callback_claims = await asyncio.to_thread(verify, callback_token)
    assert media_claims["exp"] - media_claims["iat"] == 24 * 3600
    assert callback_claims["exp"] - callback_claims["iat"] == 5 * 60
    assert jwt.get_unverified_header(media_token)["kid"] == fake.jwks()["keys"][0]["kid"]

    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        await asyncio.to_thread(verify, fake.sign_jwt(key=foreign))
    with pytest.raises(jwt.MissingRequiredClaimError):
        await asyncio.to_thread(verify, fake.sign_jwt(aud=None))
    with pytest.raises(jwt.ExpiredSignatureError):
        await asyncio.to_thread(verify, fake.sign_jwt(exp=1))

    async with aiohttp.ClientSession() as session, session.get(fake.openid_config_url) as resp:
        config = await resp.json()
    assert config["issuer"] == fake_acs.ISSUER and config["jwks_uri"] == fake.jwks_url
    await call.hang_up()


# --------------------------------------------------------------------------- media


async def test_media_stream_headers_metadata_frames_and_caller_hang_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": 0.1}, inline_answer=True)
    frames = [tone_frame(500), tone_frame(0), tone_frame(0), tone_frame(-7), tone_frame(0)]
    frames += [tone_frame(0), tone_frame(3)]
    pcm = b"".join(frames) + tone_frame(9, 100)  # a short last frame
    samples = len(pcm) // 2
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm)
    await call.wait_ended(5)
    assert call.end_reason == "caller_hung_up"
    await until(lambda: bridge.ws_close_code is not None)
    assert bridge.ws_close_code == 1000

    assert bridge.media_headers["x-ms-call-connection-id"] == call.call_connection_id
    assert bridge.media_headers["x-ms-call-correlation-id"] == call.correlation_id
    assert bridge.media_headers["Authorization"].startswith("Bearer ")

    first = acs.parse(bridge.media_messages[0])
    assert isinstance(first, acs.AudioMetadata)
    assert (first.sample_rate, first.channels, first.length, first.encoding) == (
        16000,
        1,
        640,
        "PCM",
    )
    audio = bridge.audio_frames()
    assert len(audio) == len(bridge.media_messages) - 1 == call.frames_sent
    n_caller = math.ceil(samples / FRAME)
    # Hang-up 0.1 s after the caller audio ended: exactly 5 trailing silent frames.
    assert len(audio) == n_caller + 5
    assert call.caller_samples_sent == samples
    rebuilt = b"".join(f.pcm if f.pcm else bytes(2 * FRAME) for f in audio[:n_caller])
    assert rebuilt == pcm.ljust(n_caller * 2 * FRAME, b"\0")
    expected_silent = [not any(f) for f in frames] + [False]
    assert [f.silent for f in audio[:n_caller]] == expected_silent
    assert all(f.silent for f in audio[n_caller:])
    silent = [f for f in audio if f.silent]
    assert any(f.data == "" for f in silent) and any(f.data for f in silent)  # both forms
    assert all(len(f.pcm) == 2 * FRAME for f in audio if f.pcm)
    assert {f.participant_raw_id for f in audio} == {"4:+15551230001"}
    stamps = [f.timestamp for f in audio]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    names = [name if kind == "callback" else kind for kind, name in bridge.events]
    # Caller hang-up: CallDisconnected first, then the socket closes.
    assert names.index("CallDisconnected") < names.index("ws_closed")
    assert [kind for _, kind, _ in call.callbacks_posted][-1] == "CallDisconnected"
    hangup = [detail for _, what, detail in call.timeline if what == "caller_hangs_up"]
    assert hangup == [{"tick": n_caller + 5}]


async def test_frames_follow_the_media_clock(harness: Any) -> None:
    speed = 10.0
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": 0.0, "speed": speed})
    call = await connected_call(fake, bridge, tone_frame(1000) * 50)  # 1 s of call time
    await call.wait_ended(5)
    assert call.frames_sent == 50
    assert [d for _, w, d in call.timeline if w == "caller_hangs_up"] == [{"tick": 50}]
    # Paced, not dumped: 49 frame intervals take about 49 * 20 ms / speed. Bounds are
    # loose because arrival times include this test loop's own scheduling delays.
    arrivals = bridge.media_times[1:]  # skip AudioMetadata
    nominal = 49 * FRAME_S / speed
    assert 0.7 * nominal <= arrivals[-1] - arrivals[0] < nominal + 0.5


async def test_playback_queue_order_and_stop_audio(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: bridge.ws is not None)
    for value in range(1, 11):
        await bridge.send(acs.audio_data(base64.b64encode(tone_frame(value)).decode()))
    await until(lambda: call.samples_heard == 10 * FRAME)
    heard = call.heard
    assert len(heard) % FRAME == 0
    start = int(np.flatnonzero(heard)[0])
    assert start % FRAME == 0
    # One frame per tick, in the order sent (a loaded test loop may leave gaps).
    frames = heard[start:].reshape(-1, FRAME)
    played = frames[frames.any(axis=1)]
    assert [int(v) for v in played[:, 0]] == list(range(1, 11))
    assert (played == played[:, :1]).all()
    assert call.first_audio_heard_s[0] == pytest.approx(start / RATE)

    # One message of ten frames plays contiguously, frame by frame.
    block = b"".join(tone_frame(v) for v in range(11, 21))
    await bridge.send(acs.audio_data(base64.b64encode(block).decode()))
    await until(lambda: call.samples_heard == 20 * FRAME)
    frames = call.heard.reshape(-1, FRAME)
    first = int(np.flatnonzero(frames[:, 0] == 11)[0])
    assert [int(v) for v in frames[first : first + 10, 0]] == list(range(11, 21))

    for _ in range(500):  # 10 s of audio, far more than plays before StopAudio arrives
        await bridge.send(acs.audio_data(base64.b64encode(tone_frame(42)).decode()))
    await bridge.send(acs.stop_audio())
    await until(lambda: len(call.stop_audio) == 1)
    _, flushed = call.stop_audio[0]
    assert flushed > 0 and call.queued_samples == 0
    assert call.received_frames == 511
    # Conservation: every sample received was either played or flushed.
    assert call.samples_heard + flushed == call.received_samples == 520 * FRAME

    await bridge.send("{not json")
    await bridge.send(json.dumps({"Kind": "Bogus"}))
    await bridge.send(acs.audio_data(base64.b64encode(tone_frame(7)).decode()))
    bursts = len(call.first_audio_heard_s)
    await until(lambda: len(call.first_audio_heard_s) == bursts + 1 and len(call.errors) == 2)
    assert "bad outbound message" in call.errors[0] and "Bogus" in call.errors[1]
    await call.hang_up()
    assert call.end_reason == "caller_hung_up"
    assert len(call.heard) % FRAME == 0


async def test_24k_answer_resamples_caller_audio(harness: Any) -> None:
    fake, bridge = await harness(
        fake_kwargs={"hangup_after_audio_s": 0.0}, audio_format=AudioFormat.PCM24_K_MONO
    )
    t = np.arange(RATE // 5) / RATE  # 200 ms at 16 kHz
    pcm = (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm)
    await call.wait_ended(5)
    assert call.acs_rate == 24000
    meta = acs.parse(bridge.media_messages[0])
    assert isinstance(meta, acs.AudioMetadata) and meta.sample_rate == 24000
    assert call.caller_samples_sent == 24000 // 5
    assert all(len(f.pcm) == 960 for f in bridge.audio_frames() if f.pcm)


# --------------------------------------------------------------------------- failures


async def test_caller_hangs_up_while_ringing(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    await call.hang_up()
    assert call.end_reason == "caller_hung_up" and call.callbacks_posted == []
    await bridge.answer_call(call.incoming_call_context)
    assert isinstance(bridge.answer_error, HttpResponseError)
    assert bridge.answer_error.status_code == 404


async def test_fail_answer_posts_answer_failed(harness: Any) -> None:
    fake, bridge = await harness()
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"", fail_answer=True)
    await call.wait_ended(5)
    assert call.end_reason == "answer_failed"
    assert bridge.callback_types() == ["AnswerFailed"]
    assert not call.media_connected.is_set()


async def test_media_rejected_posts_media_streaming_failed(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_acs, "MEDIA_FAILURE_GRACE_S", 0.05)
    fake, bridge = await harness(media_status=401)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    await call.wait_ended(5)
    assert call.end_reason == "media_failed"
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    failed = next(ev for _, ev in bridge.callbacks if ev["type"].endswith("MediaStreamingFailed"))
    assert failed["data"]["resultInformation"]["subCode"] == 8581
    update = failed["data"]["mediaStreamingUpdate"]
    assert update["mediaStreamingStatusDetails"] == "authenticationFailure"


async def test_bridge_closing_media_then_hanging_up_is_a_clean_hang_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: bridge.ws is not None)
    assert bridge.ws is not None and call.call_connection_id is not None
    await bridge.ws.close()
    await until(lambda: any(w == "media_closed_by_bridge" for _, w, _ in call.timeline))
    await bridge.client.get_call_connection(call.call_connection_id).hang_up(True)
    await call.wait_ended(5)
    assert call.end_reason == "bridge_hung_up"
    assert call.media_close_code == 1000
    assert "MediaStreamingFailed" not in bridge.callback_types()


async def test_bridge_closing_media_and_staying_on_is_a_media_failure(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_acs, "MEDIA_FAILURE_GRACE_S", 0.05)
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: bridge.ws is not None)
    assert bridge.ws is not None
    await bridge.ws.close(code=1011)
    await call.wait_ended(5)
    assert call.end_reason == "media_failed" and call.media_close_code == 1011
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    assert bridge.callback_types()[-2:] == ["MediaStreamingFailed", "CallDisconnected"]


async def test_dtmf_reaches_the_media_socket(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await call.send_dtmf("5")
    await until(lambda: any('"DtmfData"' in m for m in bridge.media_messages))
    tone = next(acs.parse(m) for m in bridge.media_messages if '"DtmfData"' in m)
    assert isinstance(tone, acs.DtmfData) and tone.data == "5"
    assert tone.participant_raw_id == "4:+15551230001"
    await call.hang_up()


async def test_stop_during_a_live_call_cleans_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge, tone_frame(5) * 500)
    await bridge.send(acs.audio_data(base64.b64encode(tone_frame(1) * 50).decode()))
    await until(lambda: call.samples_heard > 0)
    await fake.stop()
    assert call.ended.is_set() and call.end_reason == "fake_stopped"
    await until(lambda: bridge.ws_close_code is not None)
    assert bridge.ws_close_code == 1001
    await fake.stop()  # idempotent


# --------------------------------------------------------------------------- CLI


async def test_cli_places_one_call_and_writes_heard_wav(harness: Any, tmp_path: Path) -> None:
    import argparse
    import wave

    wav_path = tmp_path / "caller.wav"
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(tone_frame(300) * 10)
    with socket.socket() as sock:  # a free port for the CLI's fake, known to the bridge
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = base64.b64encode(b"cli-key" * 8).decode()
    bridge = Bridgelet(endpoint=f"http://127.0.0.1:{port}", access_key=key)
    await bridge.start()
    try:
        parser = argparse.ArgumentParser()
        fake_acs.configure(parser)
        args = parser.parse_args(
            [
                "--webhook",
                bridge.webhook,
                "--caller-audio",
                str(wav_path),
                "--port",
                str(port),
                "--speed",
                "20",
                "--access-key",
                key,
                "--hangup-after",
                "0.1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        assert await asyncio.to_thread(fake_acs.run, args) == 0
    finally:
        await bridge.stop()
    with wave.open(str(tmp_path / "out" / "heard.wav"), "rb") as heard:
        assert heard.getframerate() == RATE and heard.getnframes() == 15 * FRAME
