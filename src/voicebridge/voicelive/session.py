"""Opening a Voice Live connection with the real ``azure-ai-voicelive`` SDK.

SDK facts this module works around (protocols.md §6):

* ``connect()`` ignores ``agent_config=`` in 1.3.1: agent parameters go as flat kwargs.
* The handshake timeout is not honoured: ``__aenter__`` is wrapped in ``wait_for``.
* The token is fetched once per connect; a sync credential would block the loop, so
  Entra ID uses ``azure.identity.aio.DefaultAzureCredential``.
* Compression stays off (it costs CPU on every 20 ms frame for incompressible audio).
* ``send()`` serialises every event with ``json.dumps`` (and two ``isinstance``
  checks, one against ``typing.Mapping``): 5.9 us for a 20 ms append whose wire text
  the core can build in 0.15 us. The core hands out wire-ready text, so every message
  goes as text through the SDK connection's own aiohttp WebSocket: one send path,
  :attr:`OpenSession.send_text`. If an SDK version stops exposing that socket, the
  text is parsed back and goes through ``send()``, which writes the same text, only
  slower (a unit test says so loudly).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from azure.ai.voicelive.aio import ConnectionClosed, VoiceLiveConnection, connect
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.core.credentials import AccessToken, AzureKeyCredential

from voicebridge.config import Settings
from voicebridge.core.voicelive import build_session_config
from voicebridge.errors import UpstreamUnavailable
from voicebridge.voicelive import tools

log = logging.getLogger(__name__)


class StaticTokenCredential:
    """An async token credential that returns one pre-fetched Entra token.

    For local development (``VOICELIVE_BEARER_TOKEN``, e.g. from
    ``az account get-access-token --resource https://ai.azure.com``) and for the
    offline simulator, whose emulator accepts any bearer token.
    """

    def __init__(self, token: str, lifetime_s: int = 3600) -> None:
        self._token = token
        self._expires = int(time.time()) + lifetime_s

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, self._expires)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def make_credential(settings: Settings) -> Any:
    """The credential for Voice Live: API key (model mode only), a static token, or
    ``DefaultAzureCredential`` (managed identity in Azure, Azure CLI locally)."""
    if settings.voicelive_api_key is not None:
        return AzureKeyCredential(settings.voicelive_api_key.get_secret_value())
    if settings.voicelive_bearer_token is not None:
        return StaticTokenCredential(settings.voicelive_bearer_token.get_secret_value())
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


#: Session fields a Foundry agent may store with its own configuration, and the
#: settings that set each. In agent mode the bridge sends one only when the operator set
#: it: Microsoft's agent sample sends these "if not stored with agent configuration on
#: the service side", and fields that conflict with the stored ones end the session
#: (``max_config_attempts_exceeded``, protocol audit M2).
AGENT_OWNED: dict[str, tuple[str, ...]] = {
    "voice": ("voice_name",),
    "turn_detection": ("vad_type", "vad_silence_ms"),
    "noise_suppression": ("noise_suppression",),
    "echo_cancellation": ("echo_cancellation",),
    "transcription": ("transcription_model", "transcription_language"),
}


def session_config(settings: Settings) -> dict[str, Any]:
    """The ``session`` object of the first ``session.update`` for these settings.

    Model mode sends the whole configuration. Agent mode sends the audio formats, and
    of the fields in :data:`AGENT_OWNED` only those the operator configured; never
    ``instructions`` (not supported with an agent, voice-live-how-to)."""

    def wanted(field: str) -> bool:
        return settings.mode == "model" or any(
            settings.explicitly_set(name) for name in AGENT_OWNED[field]
        )

    config = build_session_config(
        input_hz=settings.voicelive_audio_rate,
        output_hz=settings.voicelive_audio_rate,
        voice=settings.voice_name if wanted("voice") else None,
        instructions=None if settings.mode == "agent" else settings.instructions,
        vad_type=settings.vad_type if wanted("turn_detection") else None,
        silence_duration_ms=settings.vad_silence_ms,
        noise_suppression=settings.noise_suppression if wanted("noise_suppression") else None,
        echo_cancellation=settings.echo_cancellation if wanted("echo_cancellation") else None,
        transcription_model=settings.transcription if wanted("transcription") else None,
        transcription_language=settings.transcription_language,
        interim_response=settings.interim_response,
    )
    if settings.mode == "model" and settings.tools:
        config["tools"] = tools.declarations(settings.tools, settings.transfer_target_map)
        config["tool_choice"] = "auto"
    return config


def connect_kwargs(settings: Settings, *, conversation_id: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``azure.ai.voicelive.aio.connect`` (without credential)."""
    kwargs: dict[str, Any] = {
        "endpoint": settings.voicelive_endpoint,
        "api_version": settings.voicelive_api_version,
        "connection_options": {"compression": False, "max_msg_size": 16 * 1024 * 1024},
    }
    if settings.mode == "agent":
        kwargs["agent_name"] = settings.agent_name
        kwargs["project_name"] = settings.project_name
        for key in ("agent_version", "foundry_resource_override"):
            value = getattr(settings, key)
            if value:
                kwargs[key] = value
        if settings.agent_authentication_identity_client_id:
            kwargs["authentication_identity_client_id"] = (
                settings.agent_authentication_identity_client_id
            )
        conv = conversation_id or settings.conversation_id
        if conv:
            kwargs["conversation_id"] = conv
        # Never ``model`` with agent parameters: the agent names its own model (the
        # SDK: model "may be omitted ... in an Agent scenario"; no source describes both).
    else:
        kwargs["model"] = settings.voicelive_model
    return kwargs


async def _abandon(handshake: Any, task: asyncio.Future[Any]) -> None:
    """Cancel an unfinished SDK handshake without leaking its aiohttp session.

    SDK 1.3.1 creates a ``ClientSession`` inside ``__aenter__`` and closes it only on
    ``aiohttp.ClientError``; a cancellation leaves it open (sockets held until garbage
    collection, plus an "Unclosed client session" error). The session is a local of
    the suspended coroutine, so it is taken from its frame before cancelling.
    """
    frame = getattr(handshake, "cr_frame", None)
    session = frame.f_locals.get("session") if frame is not None else None
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    if session is not None and hasattr(session, "close") and not session.closed:
        await session.close()


#: What a send to Voice Live raises when the socket is going: the SDK's own errors,
#: and what aiohttp raises on the pre-serialised path (the SDK maps the same ones).
SEND_ERRORS: tuple[type[BaseException], ...] = (
    VoiceLiveConnectionError,
    ConnectionClosed,
    aiohttp.ClientError,
    RuntimeError,
)


def text_sender(connection: Any) -> Callable[[str], Awaitable[None]] | None:
    """``send_str`` of the aiohttp WebSocket under an SDK connection, or None."""
    ws = getattr(connection, "_connection", None)
    if isinstance(ws, aiohttp.ClientWebSocketResponse):
        return ws.send_str
    return None


def sdk_sender(connection: Any) -> Callable[[str], Awaitable[None]]:
    """The fallback when :func:`text_sender` finds no socket: the SDK's ``send()``,
    given the message parsed back (it serialises it again, to the same text)."""

    async def send(text: str) -> None:
        await connection.send(orjson.loads(text))

    return send


@dataclass
class OpenSession:
    """A connected Voice Live session; :meth:`close` ends it (idempotent)."""

    connection: VoiceLiveConnection
    _manager: Any
    connect_ms: float
    _closed: bool = False

    @functools.cached_property
    def send_text(self) -> Callable[[str], Awaitable[None]]:
        """Sends one message as its wire text (what ``CallBridge.voicelive_to_send``
        returns): the only way the relay writes to Voice Live."""
        return text_sender(self.connection) or sdk_sender(self.connection)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._manager.__aexit__(None, None, None), 5.0)
        except Exception as exc:  # closing a dead socket must never fail a call
            log.debug("voicelive close: %s", type(exc).__name__)


async def handshake(
    settings: Settings,
    credential: Any,
    *,
    request_id: str,
    conversation_id: str | None = None,
    timeout_s: float,
) -> tuple[Any, asyncio.Future[Any] | None, float]:
    """Start the SDK's WebSocket handshake and wait for it up to ``timeout_s``.

    Returns ``(manager, task, started)``: the connect manager (whose ``__aexit__``
    closes the connection), the finished handshake task (``task.result()`` is the
    connection or raises the SDK's error) or None when it timed out (then it was
    abandoned cleanly), and ``time.perf_counter()`` at its start."""
    manager = connect(
        credential=credential,
        headers={"x-ms-client-request-id": request_id},
        **connect_kwargs(settings, conversation_id=conversation_id),
    )
    started = time.perf_counter()
    opening = manager.__aenter__()
    task = asyncio.ensure_future(opening)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    finally:
        if not task.done():  # timed out, or our caller was cancelled
            await _abandon(opening, task)
    return manager, (task if done else None), started


async def open_session(
    settings: Settings,
    credential: Any,
    *,
    call_id: str,
    conversation_id: str | None = None,
    timeout_s: float | None = None,
) -> OpenSession:
    """Connect within ``timeout_s`` (default ``VOICELIVE_CONNECT_TIMEOUT_S``) or raise
    ``UpstreamUnavailable``."""
    timeout = settings.voicelive_connect_timeout_s if timeout_s is None else timeout_s
    manager, task, started = await handshake(
        settings, credential, request_id=call_id, conversation_id=conversation_id, timeout_s=timeout
    )
    if task is None:
        raise UpstreamUnavailable(
            f"Voice Live did not complete the handshake within "
            f"{timeout:g} s ({settings.voicelive_host})"
        )
    try:
        conn = task.result()
    except Exception as exc:
        status = getattr(exc.__cause__, "status", None)
        detail = f"HTTP {status}" if status else type(exc).__name__
        raise UpstreamUnavailable(
            f"Voice Live connection to {settings.voicelive_host} failed: {detail}"
        ) from None
    return OpenSession(conn, manager, (time.perf_counter() - started) * 1000.0)
