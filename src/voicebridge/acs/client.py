"""Call Automation with the real ``azure-communication-callautomation`` SDK (protocols.md §2).

* ``from_connection_string`` always rewrites the endpoint to https; for a plain-http
  loopback endpoint (the offline fake ACS) the client is built from the endpoint and
  an ``AzureKeyCredential`` instead, which keeps the same HMAC signing.
* ``ACS_ENDPOINT`` without a connection string uses managed identity
  (``DefaultAzureCredential``, async).
* Hang-up is idempotent and tolerates 4xx: the call may already be gone.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from azure.communication.callautomation import (
    AudioFormat,
    MediaStreamingAudioChannelType,
    MediaStreamingContentType,
    MediaStreamingOptions,
    StreamingTransportType,
)
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import AzureError, HttpResponseError

from voicebridge.config import Settings
from voicebridge.errors import ConfigError

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")

#: Transport timeouts for every REST call (seconds); azure-core retries on top.
REST_TIMEOUTS: dict[str, Any] = {"connection_timeout": 5, "read_timeout": 10}


def parse_connection_string(conn_str: str) -> tuple[str, str]:
    """``(endpoint URL, access key)`` from ``endpoint=...;accesskey=...``."""
    parts: dict[str, str] = {}
    for element in conn_str.split(";"):
        key, _, value = element.partition("=")
        if key.strip():
            parts[key.strip().lower()] = value.strip()
    endpoint, access_key = parts.get("endpoint"), parts.get("accesskey")
    if not endpoint or not access_key:
        raise ConfigError("ACS_CONNECTION_STRING: expected endpoint=https://...;accesskey=...")
    return endpoint.rstrip("/"), access_key


def make_client(settings: Settings, credential: Any = None) -> CallAutomationClient:
    """The async Call Automation client for these settings."""
    if settings.acs_connection_string is not None:
        endpoint, key = parse_connection_string(settings.acs_connection_string.get_secret_value())
        parsed = urlparse(endpoint)
        if parsed.scheme == "http" and parsed.hostname in _LOOPBACK:
            return CallAutomationClient(endpoint, AzureKeyCredential(key), **REST_TIMEOUTS)
        return CallAutomationClient.from_connection_string(
            f"endpoint={endpoint}/;accesskey={key}", **REST_TIMEOUTS
        )
    if not settings.acs_endpoint:
        raise ConfigError("ACS_CONNECTION_STRING: set it, or ACS_ENDPOINT for managed identity")
    if credential is None:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return CallAutomationClient(settings.acs_endpoint, credential, **REST_TIMEOUTS)


def media_streaming_options(transport_url: str, acs_rate: int) -> MediaStreamingOptions:
    """Bidirectional mixed PCM audio from the moment the call connects (§2.2)."""
    return MediaStreamingOptions(
        transport_url=transport_url,
        transport_type=StreamingTransportType.WEBSOCKET,
        content_type=MediaStreamingContentType.AUDIO,
        audio_channel_type=MediaStreamingAudioChannelType.MIXED,
        start_media_streaming=True,
        enable_bidirectional=True,
        audio_format=AudioFormat.PCM24_K_MONO if acs_rate == 24000 else AudioFormat.PCM16_K_MONO,
        enable_dtmf_tones=True,
    )


async def answer(
    client: CallAutomationClient,
    *,
    incoming_call_context: str,
    callback_url: str,
    transport_url: str,
    acs_rate: int,
) -> str:
    """Answer with media streaming; return the call connection id."""
    props = await client.answer_call(
        incoming_call_context=incoming_call_context,
        callback_url=callback_url,
        operation_context="incomingCall",
        media_streaming=media_streaming_options(transport_url, acs_rate),
    )
    return str(props.call_connection_id)


async def create_call(
    client: CallAutomationClient,
    *,
    target: str,
    caller_id: str,
    callback_url: str,
    transport_url: str,
    acs_rate: int,
    operation_context: str = "outboundCall",
) -> tuple[str, str]:
    """Place a call to the phone number ``target`` from ``caller_id`` (an ACS number:
    required to call a phone, "Troubleshooting call end response codes"), streaming
    media as an answered call does; return ``(call connection id, correlation id)``.
    ACS answers at once; ``CallConnected`` or ``CreateCallFailed`` follows on the
    callback URL. Raises ``HttpResponseError`` when ACS refuses the request."""
    from azure.communication.callautomation import PhoneNumberIdentifier

    props = await client.create_call(
        identifier(target),
        callback_url,
        source_caller_id_number=PhoneNumberIdentifier(caller_id.removeprefix("4:")),
        operation_context=operation_context,
        media_streaming=media_streaming_options(transport_url, acs_rate),
    )
    return str(props.call_connection_id or ""), str(getattr(props, "correlation_id", "") or "")


async def hang_up(client: CallAutomationClient, call_connection_id: str) -> bool:
    """End the call for everyone. True if ACS accepted it; False if it was already
    gone or ACS failed (logged, never raised: hang-up is cleanup)."""
    try:
        await client.get_call_connection(call_connection_id).hang_up(is_for_everyone=True)
    except HttpResponseError as exc:
        log.info("hang_up %s: HTTP %s (call already gone?)", call_connection_id, exc.status_code)
        return False
    except AzureError as exc:
        log.warning("hang_up %s failed: %s", call_connection_id, type(exc).__name__)
        return False
    return True


async def _properties(client: CallAutomationClient, call_connection_id: str) -> Any:
    """The call's properties, or ``gone`` (ACS no longer knows it, or it is disconnected)
    / ``unknown`` (ACS could not be asked)."""
    try:
        props = await client.get_call_connection(call_connection_id).get_call_properties()
    except HttpResponseError as exc:
        if exc.status_code == 404:
            return "gone"
        log.warning("call properties %s: HTTP %s", call_connection_id, exc.status_code)
        return "unknown"
    except AzureError as exc:
        log.warning("call properties %s failed: %s", call_connection_id, type(exc).__name__)
        return "unknown"
    raw = getattr(props, "call_connection_state", None)
    state = str(getattr(raw, "value", raw) or "").lower()
    return "gone" if state in ("", "disconnected") else props


async def call_state(client: CallAutomationClient, call_connection_id: str) -> str:
    """The call's state as Call Automation reports it: ``connected`` (or another
    ``CallConnectionState`` value in lower case), ``gone`` when ACS no longer knows
    the call (404) or it is disconnected, ``unknown`` when ACS could not be asked."""
    props = await _properties(client, call_connection_id)
    if isinstance(props, str):
        return props
    raw = props.call_connection_state
    return str(getattr(raw, "value", raw)).lower()


async def media_streaming_state(client: CallAutomationClient, call_connection_id: str) -> str:
    """The call and its media as Call Automation reports them: ``gone`` (ACS no longer
    knows the call, or it is disconnected), ``unknown`` (ACS could not be asked),
    ``media_active`` (connected, media streaming active) or ``media_inactive``."""
    props = await _properties(client, call_connection_id)
    if isinstance(props, str):
        return props
    media = getattr(props, "media_streaming_subscription", None)
    state = getattr(media, "state", None)
    state = str(getattr(state, "value", state) or "").lower()
    return "media_active" if state == "active" else "media_inactive"


async def play_file(client: CallAutomationClient, call_connection_id: str, url: str) -> bool:
    """Play the WAV at ``url`` to everyone on the call (Call Automation fetches it)."""
    from azure.communication.callautomation import FileSource

    try:
        await client.get_call_connection(call_connection_id).play_media_to_all(
            FileSource(url=url), operation_context="voicebridge-prompt"
        )
    except AzureError as exc:
        log.warning("play %s failed: %s", call_connection_id, type(exc).__name__)
        return False
    return True


def identifier(raw_id: str) -> Any:
    """A Communication identifier for an E.164 number (``+1...`` or ``4:+1...``) or an
    ACS user id (``8:acs:...``)."""
    from azure.communication.callautomation import (
        CommunicationUserIdentifier,
        PhoneNumberIdentifier,
    )

    raw = raw_id.strip()
    if raw.startswith("4:"):
        raw = raw[2:]
    if raw.startswith("+"):
        return PhoneNumberIdentifier(raw)
    return CommunicationUserIdentifier(raw)


async def transfer(
    client: CallAutomationClient, call_connection_id: str, target: str, *, caller_id: str
) -> None:
    """Transfer the call to ``target``; the caller id shown is ``caller_id`` when it is
    a phone number (the ACS number that was called). Raises on a refusal: the
    outcome arrives later as ``CallTransferAccepted`` / ``CallTransferFailed``."""
    source = identifier(caller_id) if caller_id.removeprefix("4:").startswith("+") else None
    await client.get_call_connection(call_connection_id).transfer_call_to_participant(
        identifier(target),
        operation_context="voicebridge-transfer",
        source_caller_id_number=source,
    )
