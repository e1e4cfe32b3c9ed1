"""A tiny in-test bridge for the fake ACS's tests.

``Bridgelet`` stands in for the bridge: an aiohttp server with the Event Grid
webhook, the callback endpoint and the media WebSocket, answering with the real
``azure.communication.callautomation.aio.CallAutomationClient``. The media clock
runs fast (``speed``) so whole calls take a fraction of a second.

Like a node of a bridge cluster it can name itself (``node``: the ``x-voicebridge-node``
header on every response, the media handshake included; change it mid-test to play another
node), reply ``{"answering": n}`` to Event Grid, be killed mid-stream (:meth:`abort_media`:
the TCP connection of the media socket is reset, no close frame) and serve files to play.
It can also place calls (:meth:`Bridgelet.create_call`, the SDK's ``create_call``) with the
same callback and media endpoints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from azure.communication.callautomation import (
    AudioFormat,
    MediaStreamingAudioChannelType,
    MediaStreamingContentType,
    MediaStreamingOptions,
    PhoneNumberIdentifier,
    StreamingTransportType,
)
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from voicebridge.core import acs
from voicebridge.sim.fake_acs import NODE_HEADER, FakeAcs, FakeCall

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
        node: str | None = None,
        answering: list[int] | None = None,
        dtmf_tones: bool = True,
        refuse: list[int] | None = None,
    ) -> None:
        self.answer = answer
        self.inline_answer = inline_answer  # answer before replying to Event Grid
        self.audio_format = audio_format
        self.start_media = start_media
        self.media_status = media_status  # reject the media upgrade with this status
        self.node = node  # sent as x-voicebridge-node on every response when set
        self.answering = answering  # per IncomingCall delivery (the last repeats); None: none
        self.dtmf_tones = dtmf_tones  # mediaStreamingOptions.enableDtmfTones
        self.refuse = refuse or []  # statuses of the first IncomingCall deliveries (no answer)
        self.files: dict[str, bytes] = {}  # served at /files/{name}
        self.file_requests: list[str] = []
        self.media_request: web.Request | None = None
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
        app.on_response_prepare.append(self._name_node)
        app.router.add_get("/files/{name}", self._file)
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

    def file_url(self, name: str) -> str:
        return f"http://{self.base}/files/{name}"

    async def _name_node(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.node is not None:
            response.headers[NODE_HEADER] = self.node

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.file_requests.append(name)
        if name not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[name], content_type="audio/wav")

    def abort_media(self) -> None:
        """Die like a killed process: reset the media socket's TCP connection."""
        assert self.media_request is not None and self.media_request.transport is not None
        self.media_request.transport.abort()

    def callback_types(self) -> list[str]:
        return [ev["type"].removeprefix("Microsoft.Communication.") for _, ev in self.callbacks]

    async def _incoming(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.incoming.append((dict(request.headers), body))
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            return web.json_response({"validationResponse": body[0]["data"]["validationCode"]})
        event = body[0] if isinstance(body, list) else body
        deliveries = sum(1 for h, _ in self.incoming if h["aeg-event-type"] == "Notification")
        if deliveries <= len(self.refuse):
            return web.Response(status=self.refuse[deliveries - 1])
        if self.answer and self.inline_answer:
            await self.answer_call(event["data"]["incomingCallContext"])
        elif self.answer:
            task = asyncio.create_task(self.answer_call(event["data"]["incomingCallContext"]))
            self._tasks.add(task)
        if self.answering is not None:
            deliveries = sum(1 for h, _ in self.incoming if h["aeg-event-type"] == "Notification")
            value = self.answering[min(deliveries, len(self.answering)) - 1]
            return web.json_response({"answering": value})
        return web.Response(status=200)

    async def _options(self, request: web.Request) -> web.Response:
        origin = request.headers.get("WebHook-Request-Origin", "")
        return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin})

    @property
    def callback_url(self) -> str:
        return f"http://{self.base}/api/callbacks/key123"

    def media_options(self) -> MediaStreamingOptions:
        return MediaStreamingOptions(
            transport_url=f"ws://{self.base}/ws/media/key123",
            transport_type=StreamingTransportType.WEBSOCKET,
            content_type=MediaStreamingContentType.AUDIO,
            audio_channel_type=MediaStreamingAudioChannelType.MIXED,
            start_media_streaming=self.start_media,
            enable_bidirectional=True,
            audio_format=self.audio_format,
            enable_dtmf_tones=self.dtmf_tones,
        )

    async def answer_call(self, context: str) -> None:
        try:
            self.props = await self.client.answer_call(
                incoming_call_context=context,
                callback_url=self.callback_url,
                operation_context="incomingCall",
                media_streaming=self.media_options(),
            )
        except HttpResponseError as exc:
            self.answer_error = exc

    async def create_call(
        self, target: str, source: str = "+18005550100", *, media: bool = True, **kwargs: Any
    ) -> Any:
        """Place a call with the SDK's ``create_call`` (raises ``HttpResponseError``)."""
        return await self.client.create_call(
            PhoneNumberIdentifier(target),
            self.callback_url,
            source_caller_id_number=PhoneNumberIdentifier(source),
            operation_context="outbound",
            media_streaming=self.media_options() if media else None,
            **kwargs,
        )

    def callback(self, kind: str) -> dict[str, Any]:
        """The data of the first callback of type ``kind`` (without the prefix)."""
        full = "Microsoft.Communication." + kind
        return next(event["data"] for _, event in self.callbacks if event["type"] == full)

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert isinstance(body, list)
        for event in body:
            self.callbacks.append((dict(request.headers), event))
            self.events.append(("callback", event["type"].rsplit(".", 1)[-1]))
        return web.Response(status=200)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        self.media_headers = dict(request.headers)
        self.media_request = request
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


async def connected_call(
    fake: FakeAcs, bridge: Bridgelet, pcm: bytes = b"", **kwargs: Any
) -> FakeCall:
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=pcm, **kwargs)
    await asyncio.wait_for(call.media_connected.wait(), 5)
    return call
