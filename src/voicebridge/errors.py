"""The one exception tree of voicebridge.

Three families, so callers can decide what to do without string matching
(the shape follows httpx ``_exceptions.py`` and websockets ``exceptions.py``):

* :class:`RemoteProtocolError` — a peer (ACS or Voice Live) sent something we
  cannot use. The call goes on; the message is logged and counted.
* :class:`LocalProtocolError` — *we* tried to do something the protocol forbids
  (the outbound guard or the turn table refused it). Nothing was sent.
* :class:`UpstreamUnavailable` — a peer cannot be reached or stopped answering.

:class:`ConfigError` is raised at startup only. The mapping from these errors to
WebSocket close codes lives in :data:`CLOSE_CODES`, and nowhere else.
"""

from __future__ import annotations


class VoiceBridgeError(Exception):
    """Base of every error voicebridge raises on purpose."""


class RemoteProtocolError(VoiceBridgeError):
    """A peer sent a message we cannot use (bad JSON, wrong types, bad audio)."""


class AcsCodecError(RemoteProtocolError):
    """An ACS media-stream message could not be decoded.

    Raised by :func:`voicebridge.core.acs.parse` for text that is not JSON, not an
    object, has a missing or mistyped field, invalid base64, or PCM with an odd
    byte count. The message says which, and never includes audio.
    """


class WebhookError(RemoteProtocolError):
    """An Event Grid delivery or a Call Automation callback body is unusable."""


class VoiceLiveEventError(RemoteProtocolError):
    """A Voice Live server event is missing a field the bridge needs."""


class LocalProtocolError(VoiceBridgeError):
    """We tried to send or do something the protocol forbids; nothing was sent."""


class IllegalTransition(LocalProtocolError):
    """The turn table has no transition for (state, event); the state is unchanged."""


class GuardRejected(LocalProtocolError):
    """The outbound guard refused a message to Voice Live.

    ``reason`` is a short stable token used as a counter label
    (e.g. ``"before_session_update"``, ``"response_active"``).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class UpstreamUnavailable(VoiceBridgeError):
    """Voice Live or ACS could not be reached, timed out, or closed on us."""


class ConfigError(VoiceBridgeError):
    """A setting is missing or invalid. The message names the variable."""


#: WebSocket close codes for errors that end a media socket (RFC 6455 §7.4.1).
CLOSE_CODES: dict[type[VoiceBridgeError], int] = {
    RemoteProtocolError: 1007,  # invalid payload data
    LocalProtocolError: 1011,  # internal error: we broke the protocol
    UpstreamUnavailable: 1013,  # try again later
}


def close_code(exc: BaseException) -> int:
    """The close code for ``exc``: the nearest mapped ancestor, else 1011."""
    for cls in type(exc).__mro__:
        if cls in CLOSE_CODES:
            return CLOSE_CODES[cls]
    return 1011
