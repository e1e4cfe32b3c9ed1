"""Request-body checks and error replies shared by the fake's REST layers (:mod:`.rest`,
:mod:`.transfer`, :mod:`.outbound`): the ACS error body, ``mediaStreamingOptions`` and
``callbackUri`` validation, and reading ``CommunicationIdentifierModel`` JSON.

Field names are the SDK's (``_generated/models/_models.py`` of
``azure-communication-callautomation`` 1.6: ``CommunicationIdentifierModel`` has ``rawId``,
``kind``, ``phoneNumber.value``, ``communicationUser.id``). The error messages are the fake's
own wording: ACS's exact texts are not documented [inference].
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

#: ``mediaStreamingOptions.audioFormat`` values and their rates (§2.2), matched
#: case-insensitively.
AUDIO_FORMATS = {"pcm16kmono": 16000, "pcm24kmono": 24000}


def error(status: int, message: str, code: str | None = None) -> web.Response:
    """The ACS error body the SDK turns into ``HttpResponseError`` (§2.3)."""
    body = {"error": {"code": code or str(status), "message": message}}
    return web.json_response(body, status=status)


def callback_uri_problem(value: Any) -> web.Response | None:
    """A 400 unless ``value`` is an absolute http(s) URL (live ACS wants https; plain http
    is allowed on loopback here)."""
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        return error(400, "callbackUri must be an absolute http(s) URL.")
    return None


def media_rate(media: Any, default_rate: int) -> int | web.Response:
    """The media rate ``mediaStreamingOptions`` asks for (``default_rate`` without an
    ``audioFormat``, or without options at all: ``None``), or a 400 naming what is wrong."""
    if media is None:
        return default_rate
    if not isinstance(media, dict):
        return error(400, "mediaStreamingOptions must be an object.")
    url = media.get("transportUrl")
    # Live ACS insists on wss:// (§4); plain ws:// is allowed on loopback here.
    if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
        return error(400, "mediaStreamingOptions.transportUrl must be a ws(s):// URL.")
    if str(media.get("transportType", "")).lower() != "websocket":
        return error(400, "mediaStreamingOptions.transportType must be websocket.")
    if str(media.get("contentType", "")).lower() != "audio":
        return error(400, "mediaStreamingOptions.contentType must be audio.")
    if str(media.get("audioChannelType", "")).lower() not in ("mixed", "unmixed"):
        return error(400, "mediaStreamingOptions.audioChannelType must be mixed/unmixed.")
    fmt = media.get("audioFormat")
    if fmt is None:
        return default_rate
    if str(fmt).lower() not in AUDIO_FORMATS:
        return error(400, f"Unsupported audioFormat {fmt!r}.")
    return AUDIO_FORMATS[str(fmt).lower()]


def phone_number_of(model: Any) -> str | None:
    """The E.164 number of a phone-number ``CommunicationIdentifierModel`` (its
    ``phoneNumber.value``, else a ``4:+...`` raw id), None for anything else."""
    if not isinstance(model, dict):
        return None
    number = model.get("phoneNumber")
    if isinstance(number, dict) and isinstance(number.get("value"), str) and number["value"]:
        return str(number["value"])
    raw = model.get("rawId")
    if isinstance(raw, str) and raw.startswith("4:") and len(raw) > 2:
        return raw[2:]
    return None


def identifier_of(model: Any) -> str | None:
    """What a ``CommunicationIdentifierModel`` names: the E.164 number of a phone number, the
    id of a communication user (``8:acs:...``), else its raw id; None when it names nothing."""
    number = phone_number_of(model)
    if number is not None or not isinstance(model, dict):
        return number
    user = model.get("communicationUser")
    if isinstance(user, dict) and isinstance(user.get("id"), str) and user["id"]:
        return str(user["id"])
    raw = model.get("rawId")
    return raw if isinstance(raw, str) and raw else None
