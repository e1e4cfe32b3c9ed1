"""The fake ACS's opt-in speed-ups, for the load generator (``FakeAcs(fast=True)``).

At 100 calls the fake sends 5000 caller frames a second and reads as many from the bridge.
By default it writes each with :func:`voicebridge.core.acs.audio_data_message`, sends it
with ``ws.send`` and reads the bridge's with ``acs.parse_outbound``: a plain reference
implementation. With ``fast=True`` these shortcuts take over, each byte for byte what the
plain path does (tests/unit/sim/fake_acs/test_fastpath.py):

* :class:`FrameText`: caller frames concatenated from templates cut out of
  ``acs.audio_data_message``'s own output, timestamps formatted once per second;
* :func:`send_text`: a frame written below websockets' per-message wrapping, through
  ``ws.protocol`` and ``ws.transport`` (internals: one library upgrade can break this,
  which is why it is opt-in and tested against a real server);
* :func:`outbound_audio`: the bridge's audio read without a JSON parser when it has the
  bridge's spelling;
* :class:`FastPath` remembers plain callback/media tokens for the second they were signed
  in (RS256 signatures are deterministic: signing again gives the same bytes).
"""

from __future__ import annotations

import time
from typing import Any

import pybase64
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from voicebridge.core import acs


def _cut(text: str, *marks: str) -> tuple[str, ...]:
    """``text`` cut at ``marks``, which must each occur once, in that order."""
    parts: list[str] = []
    for mark in marks:
        head, found, text = text.partition(mark)
        if not found or mark in text:
            raise ValueError(f"template without exactly one {mark!r} in order")
        parts.append(head)
    return (*parts, text)


# Placeholders spliced into the wire texts of core.acs: base64 and timestamps never need
# JSON escaping, so pasting them into a template cut from the real encoder is exact.
_STAMP, _DATA = "@@timestamp@@", "@@data@@"
# What the bridge sends for audio (acs.audio_data): read without a JSON parser.
_OUT_AUDIO_HEAD, _OUT_AUDIO_TAIL = _cut(acs.audio_data(_DATA), _DATA)
_MILLIS = [f"{ms:03d}Z" for ms in range(1000)]  # the end of an iso_ms timestamp


def outbound_audio(text: str) -> acs.OutboundAudio | None:
    """``text`` as :func:`acs.parse_outbound` reads it when it is exactly the bridge's
    :func:`acs.audio_data` spelling around valid base64 of whole PCM16 samples; None for
    anything else (which then takes the general parser, errors included)."""
    if not (text.startswith(_OUT_AUDIO_HEAD) and text.endswith(_OUT_AUDIO_TAIL)):
        return None
    data = text[len(_OUT_AUDIO_HEAD) : len(text) - len(_OUT_AUDIO_TAIL)]
    if '"' in data or "\\" in data:
        return None
    try:
        pcm = pybase64.b64decode(data, validate=True)  # what acs.parse_outbound uses
    except ValueError:  # binascii.Error, or not ASCII
        return None
    return None if len(pcm) % 2 else acs.OutboundAudio(data=data, pcm=pcm)


class FrameText:
    """Caller ``AudioData`` messages of one participant, byte for byte what
    :func:`acs.audio_data_message` writes, built by concatenation (50 times a second
    per call) from templates cut out of that function's own output; timestamps are
    formatted as :func:`.media.iso_ms` does, the date and time of day once per second."""

    def __init__(self, participant_raw_id: str) -> None:
        def template(b64: str | None, silent: bool) -> tuple[str, ...]:
            text = acs.audio_data_message(
                b64, silent=silent, timestamp=_STAMP, participant_raw_id=participant_raw_id
            )
            return _cut(text, _STAMP, _DATA) if b64 else _cut(text, _STAMP)

        self._audio = template(_DATA, False)
        self._silent = template(_DATA, True)
        self._no_data = template(None, True)
        self._second = -1
        self._second_text = ""

    def stamp(self, epoch_us: int) -> str:
        """:func:`.media.iso_ms` of the moment ``epoch_us`` microseconds after the epoch."""
        second, micro = divmod(epoch_us, 1_000_000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return self._second_text + _MILLIS[micro // 1000]

    def message(self, stamp: str, b64: str | None, silent: bool) -> str:
        """``acs.audio_data_message(b64, silent=silent, timestamp=stamp, ...)``."""
        if b64 is None:
            head, tail = self._no_data
            return head + stamp + tail
        head, mid, tail = self._silent if silent else self._audio
        return head + stamp + mid + b64 + tail


async def send_text(ws: ClientConnection, text: str) -> None:
    """``await ws.send(text)`` for the caller's frames, 50 a second per call, without
    the asyncio layer's per-message wrapping (an async context manager and a drain: 7 of
    the 10 us ``send`` takes). When the connection is open and nothing is waiting in
    its write buffer, ``send`` writes the frame its sans-I/O protocol makes and returns
    without waiting; so does this. Otherwise ``send`` itself, which waits (for the buffer
    to drain) or raises ``ConnectionClosed`` as it should."""
    if ws.state is State.OPEN and not ws.transport.get_write_buffer_size():
        ws.protocol.send_text(text.encode())
        for data in ws.protocol.data_to_send():
            ws.transport.write(data)
    else:
        await ws.send(text)


class FastPath:
    """The state of one fake's shortcuts: the plain tokens of the current second."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[Any, ...], str] = {}

    def token(self, key: tuple[Any, ...]) -> str | None:
        """The token signed for ``key`` (its first item: the second it was signed in)."""
        return self._tokens.get(key)

    def remember_token(self, key: tuple[Any, ...], token: str) -> None:
        """Keep ``token`` for ``key``; tokens of other seconds are forgotten."""
        if any(second != key[0] for second, *_ in self._tokens):
            self._tokens.clear()  # only this second's tokens can be reused
        self._tokens[key] = token
