"""A fake Azure Communication Services that speaks the real wire protocols.

The bridge under test talks to it with its *unpatched* Call Automation SDK client
(``CallAutomationClient("http://127.0.0.1:PORT", AzureKeyCredential(key))``) and
receives from it exactly what live ACS would send (protocols.md §1-§5):

* an Event Grid ``Microsoft.Communication.IncomingCall`` delivery to the webhook
  (:meth:`FakeAcs.place_call`), or the subscription-validation handshake
  (:meth:`FakeAcs.validate_subscription`);
* the Call Automation REST API (answer, get, hang up, terminate, play, start/stop
  media streaming, cancel media operations), every request HMAC-checked (§2.3);
* CloudEvents callbacks to ``callbackUri`` with a Bearer JWT (§3, §5);
* the media WebSocket, dialled *out* to ``transportUrl`` with a Bearer JWT and the
  ``x-ms-call-*`` headers: ``AudioMetadata`` then 20 ms ``AudioData`` frames on an
  absolute clock; outbound ``AudioData``/``StopAudio`` drive a play-queue model of
  what the caller hears (§4);
* a JWKS and OpenID configuration so the bridge verifies those tokens as it would
  against ``acscallautomation.communication.azure.com``.

**Call time.** Every time this module reports is *call time*: seconds on the media
clock, which runs ``speed`` times faster than the wall clock, with 0 at the first
media frame (events before it are negative). Until media has started, times are
relative to the moment the call was placed and are rebased once it starts.
Media tick ``n`` happens at call time ``0.02 * n``: caller frame ``n`` (caller
audio ``[0.02n, 0.02(n+1))``) is sent and one 20 ms frame of the play queue is
played into :attr:`FakeCall.heard` at that position.

Wire spellings of the media stream come from :mod:`voicebridge.core.acs` (its
mirror functions); REST, callback and Event Grid shapes live here.

**Faults** (``FakeAcs(faults=...)``, names from :mod:`voicebridge.sim.faults`; none by default,
and without one nothing here changes). ``T`` is call time. Each fault that takes effect is
recorded in :attr:`FakeCall.faults_fired` as ``(call time s, name)`` and as a ``"fault"``
timeline entry.

* ``acs-drop=T``: at tick ``T/0.02`` (before sending it) the media socket is aborted (no close
  frame), streaming stops, the play queue is discarded (counted in
  :attr:`FakeCall.samples_flushed_by_drop`) and no callback is posted for the rest of the call.
  The call ends as ``media_dropped`` when the bridge hangs up, or :data:`MEDIA_DROP_END_S` of
  call time after the drop.
* ``acs-reconnect=T``: at tick ``T/0.02`` the media socket is aborted (the bridge sees 1006),
  the play queue discarded (as above); :data:`RECONNECT_GAP_S` of call time later a new
  WebSocket is opened to the same ``transportUrl`` with a fresh JWT and the same
  ``x-ms-call-*`` headers, ``AudioMetadata`` is sent again and streaming goes on at the current
  call time. Caller audio due during the gap is never sent: it is counted in
  :attr:`FakeCall.caller_samples_lost_in_gap` (and not in ``caller_samples_sent`` or
  ``frames_sent``); ``heard`` has silence there. No callback is posted for the reconnection; if
  the new socket cannot be opened, ``MediaStreamingFailed`` (``streamConnectionUnsuccessful``)
  follows as for a first socket. Each socket's ``media_connected`` timeline entry carries its
  number (``socket``: 1, 2, ...); :attr:`FakeCall.media_sockets` counts them.
* ``acs-hold=T``: from call time ``T`` for :data:`HOLD_S` call seconds no media frame is sent
  (the socket stays open, the call connected, playback goes on); the caller's audio resumes
  where it stopped (nothing is lost) — what the bridge would see if ACS pauses the stream
  while the caller is on hold (no source says it does not, protocol audit §3).
* ``acs-duplicate-callbacks``: every callback is POSTed twice, the same CloudEvent (same
  ``id``) with a fresh JWT; both are in ``callbacks_posted``.
* ``acs-reorder-callbacks``: ``ParticipantsUpdated`` is posted first, and ``CallConnected``
  only after ``MediaStreamingStarted`` (or ``MediaStreamingFailed``) has been posted, or
  :data:`REORDER_HOLD_S` wall seconds after the answer if media does not start by itself.
* ``acs-disconnect-first`` / ``acs-close-first`` (exclusive): when the *caller* hangs up,
  ``CallDisconnected`` is posted and the media socket is closed 1 s (call time) later, or the
  socket is closed and ``CallDisconnected`` posted 1 s later. Bridge hang-ups are unchanged.

**Per-call faults.** ``FakeAcs(faults=...)`` applies to every call. ``place_call(faults=...)``
adds faults to that call only (on top of the fake-wide ones; :attr:`FakeCall.faults` is the
merged set, validated like the fake's, contradictory pairs included), so a load test can fault
some calls and leave the rest alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
import uuid
import wave
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import numpy as np
import numpy.typing as npt
import pybase64
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from voicebridge.core import acs
from voicebridge.errors import AcsCodecError
from voicebridge.sim.faults import FAULTS, FaultValue, check_faults, parse_faults

__all__ = [
    "CALLBACK_TOKEN_LIFETIME_S",
    "ISSUER",
    "MEDIA_TOKEN_LIFETIME_S",
    "FakeAcs",
    "FakeCall",
    "configure",
    "run",
    "verify_hmac",
]

log = logging.getLogger(__name__)

#: ``iss`` of Call Automation tokens (protocols.md §5).
ISSUER = "https://acscallautomation.communication.azure.com"
#: Token lifetimes (protocols.md §5): 5 min for callbacks, 24 h for the media socket.
CALLBACK_TOKEN_LIFETIME_S = 5 * 60
MEDIA_TOKEN_LIFETIME_S = 24 * 3600

FRAME_S = 0.02  # ACS media frames are 20 ms (protocols.md §4)
FRAME_US = 20_000
EVENT_PREFIX = "Microsoft.Communication."
AUDIO_FORMATS = {"pcm16kmono": 16000, "pcm24kmono": 24000}  # §2.2, matched case-insensitively
SIGNED_HEADERS = "x-ms-date;host;x-ms-content-sha256"  # what the SDK's HMAC policy signs (§2.3)
_AUTH_RE = re.compile(r"^HMAC-SHA256 SignedHeaders=(?P<headers>[^&]+)&Signature=(?P<sig>\S+)$")
_CALL_PATH_RE = re.compile(r"^/calling/callConnections/(?P<cid>[^/:]+)(?::(?P<action>[A-Za-z]+))?$")
# A request older or newer than this is refused, as HMAC services do against replay.
# The exact ACS window is not documented; 15 min is the usual Azure figure [inference].
_MAX_CLOCK_SKEW = timedelta(minutes=15)
# An agent "utterance burst" restarts after this much silence (or after StopAudio), so
# a 20-40 ms underrun inside one response does not count as a new utterance.
BURST_GAP_S = 0.1
# Wall-clock seconds the bridge gets to hang up by itself after media failed or its
# media socket closed, before the fake ends the call as "media_failed".
MEDIA_FAILURE_GRACE_S = 2.0
# acs-drop: call seconds after the drop at which the fake gives up on the bridge hanging up.
MEDIA_DROP_END_S = 10.0
# acs-reconnect: call seconds between the aborted socket and the new one.
RECONNECT_GAP_S = 0.5
# acs-hold: call seconds during which no media frame is sent (the caller is on hold).
HOLD_S = 10.0
# acs-reorder-callbacks: wall seconds CallConnected waits for MediaStreamingStarted at most.
REORDER_HOLD_S = 2.0
# acs-disconnect-first / acs-close-first: call seconds between the two halves of a hang-up.
HANGUP_SPLIT_S = 1.0
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


# --------------------------------------------------------------------------- helpers


def _now_utc() -> datetime:
    return datetime.now(UTC)


def _iso7(moment: datetime) -> str:
    """Event Grid style time, 7 fractional digits: ``2022-08-25T19:27:24.2415391Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def _iso_ms(moment: datetime) -> str:
    """Media frame timestamp, milliseconds: ``2024-11-15T19:16:12.925Z`` (§4)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_us(moment: datetime) -> int:
    """``moment`` as whole microseconds since the Unix epoch."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


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


def _outbound_audio(text: str) -> acs.OutboundAudio | None:
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


_MILLIS = [f"{ms:03d}Z" for ms in range(1000)]  # the end of an _iso_ms timestamp


class _FrameText:
    """Caller ``AudioData`` messages of one participant, byte for byte what
    :func:`acs.audio_data_message` writes, built by concatenation (50 times a second
    per call) from templates cut out of that function's own output; timestamps are
    formatted as :func:`_iso_ms` does, the date and time of day once per second."""

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
        """:func:`_iso_ms` of the moment ``epoch_us`` microseconds after the epoch."""
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


async def _send_text(ws: ClientConnection, text: str) -> None:
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


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _phone(number: str) -> dict[str, Any]:
    """A phone-number ``CommunicationIdentifierModel`` (§1, §2.3)."""
    return {"kind": "phoneNumber", "rawId": f"4:{number}", "phoneNumber": {"value": number}}


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    """The ACS error body the SDK turns into ``HttpResponseError`` (§2.3)."""
    body = {"error": {"code": code or str(status), "message": message}}
    return web.json_response(body, status=status)


def _content_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def verify_hmac(
    *,
    access_key: str,
    method: str,
    path_with_query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> str | None:
    """Check an ACS HMAC-SHA256 request signature (protocols.md §2.3).

    ``path_with_query`` must be the raw request target exactly as sent and
    ``headers`` must be case-insensitive (aiohttp's are). Returns ``None`` when the
    request is authentic, else a short reason (never the key or the expected
    signature). Checks, in order: the Authorization scheme and signed-header list,
    ``x-ms-date`` is present and within 15 minutes, ``x-ms-content-sha256`` is the
    SHA-256 of ``body``, and the signature over
    ``METHOD\\npath_with_query\\nx-ms-date;Host;content_hash``.
    """
    auth = headers.get("Authorization", "")
    match = _AUTH_RE.match(auth)
    if match is None:
        return "missing or malformed HMAC-SHA256 Authorization header"
    if match["headers"].lower() != SIGNED_HEADERS:
        return f"unexpected SignedHeaders {match['headers']!r}"
    date = headers.get("x-ms-date")
    host = headers.get("Host")
    claimed_hash = headers.get("x-ms-content-sha256")
    if not date or not host or claimed_hash is None:
        return "x-ms-date, Host and x-ms-content-sha256 are required"
    try:
        sent_at = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return "x-ms-date is not an RFC 1123 date"
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    if abs((now or _now_utc()) - sent_at) > _MAX_CLOCK_SKEW:
        return "x-ms-date is outside the allowed clock skew"
    if not hmac.compare_digest(claimed_hash, _content_hash(body)):
        return "x-ms-content-sha256 does not match the body"
    try:
        secret = base64.b64decode(access_key, validate=True)
    except binascii.Error:
        return "server access key is not base64"
    to_sign = f"{method.upper()}\n{path_with_query}\n{date};{host};{claimed_hash}"
    expected = base64.b64encode(
        hmac.new(secret, to_sign.encode("utf-8"), hashlib.sha256).digest()
    ).decode("ascii")
    if not hmac.compare_digest(match["sig"], expected):
        return "signature mismatch"
    return None


def _play_seconds(body: Mapping[str, Any]) -> float | None:
    """How long (call time) a ``:play`` request plays; ``None`` loops until cancelled.

    There is no TTS here, so length is estimated from the text (about 60 ms a
    character, at least half a second); a file counts as 2 s.
    """
    options = body.get("playOptions")
    if isinstance(options, dict) and options.get("loop"):
        return None
    total = 0.0
    for source in body.get("playSources") or []:
        if not isinstance(source, dict):
            continue
        kind = str(source.get("kind", "")).lower()
        if kind == "text":
            text = str((source.get("text") or {}).get("text", ""))
            total += max(0.5, 0.06 * len(text))
        elif kind == "ssml":
            ssml = str((source.get("ssml") or {}).get("ssmlText", ""))
            total += max(0.5, 0.06 * len(re.sub(r"<[^>]*>", "", ssml)))
        else:
            total += 2.0
    return max(total, 0.5)


# --------------------------------------------------------------------------- one call


class FakeCall:
    """One simulated PSTN call as the caller's side of ACS sees it.

    Created by :meth:`FakeAcs.place_call`; read its attributes, never set them.
    ``end_reason`` is ``""`` until :attr:`ended` is set, then one of
    ``caller_hung_up``, ``bridge_hung_up``, ``answer_failed`` (the answer was
    refused or ``fail_answer`` simulated an ``AnswerFailed``), ``media_failed`` (the
    media socket could not be opened, even if the bridge then hung up; or the bridge
    closed it and did not hang up within :data:`MEDIA_FAILURE_GRACE_S`),
    ``not_answered`` (ring timeout), ``media_dropped`` (the ``acs-drop`` fault) or
    ``fake_stopped``. All times are call time (see the module docstring).

    Fault bookkeeping: :attr:`faults` (what applies to this call), :attr:`faults_fired`,
    ``media_sockets`` (media WebSockets opened),
    ``caller_samples_lost_in_gap`` (caller samples never sent because of ``acs-reconnect``) and
    ``samples_flushed_by_drop`` (bridge audio discarded from the play queue when a media socket
    was dropped by a fault). Audio conservation with faults:
    ``samples_heard + flushed by StopAudio + samples_flushed_by_drop + queued_samples
    == received_samples``.
    """

    def __init__(
        self,
        fake: FakeAcs,
        *,
        caller: str,
        recipient: str,
        caller_pcm: bytes,
        schema: str,
        fail_answer: bool,
        faults: Mapping[str, FaultValue] | None = None,
        call_connection_id: str | None = None,
    ) -> None:
        if len(caller_pcm) % 2:
            raise ValueError("caller_pcm must be PCM16LE: an even number of bytes")
        #: The faults of this call: the fake's, plus those given to ``place_call``.
        self.faults: dict[str, FaultValue] = check_faults({**fake.faults, **(faults or {})}, "acs")
        self._fake = fake
        self.caller = caller
        self.recipient = recipient
        self.caller_raw_id = f"4:{caller}"  # participantRawID of a PSTN caller (§4)
        self.schema = schema
        self.fail_answer = fail_answer
        self.event_id = str(uuid.uuid4())
        self.correlation_id = str(uuid.uuid4())
        self.server_call_id = _b64url(
            f"https://fake-acs.invalid/conv/{uuid.uuid4()}?i=10&e=638000000000000000".encode()
        )
        claims = {"cc": secrets.token_urlsafe(24), "shrToken": secrets.token_urlsafe(16)}
        # Opaque to the bridge (§1); shaped like the real unsigned-JWT blob and unique.
        self.incoming_call_context = (
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + _b64url(json.dumps(claims).encode()) + "."
        )
        self.incoming_call_event: dict[str, Any] = {}
        self.incoming_call_status: int | None = None  # what the webhook replied (0: no reply)
        self.delivery_count = 0

        self.call_connection_id: str | None = None
        self._preset_connection_id = call_connection_id
        self.answered = asyncio.Event()
        self.media_connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.state = "ringing"  # ringing -> connected -> disconnected
        self.answer_request: dict[str, Any] | None = None
        self.callback_uri: str | None = None
        self.operation_context: str | None = None
        self.media_options: dict[str, Any] | None = None
        self.bidirectional = False
        self.acs_rate = fake.acs_rate  # negotiated on answer (mediaStreamingOptions.audioFormat)
        self.api_version = ""
        self.media_subscription_id = str(uuid.uuid4())
        self.media_close_code: int | None = None
        self.media_sockets = 0
        self.caller_samples_lost_in_gap = 0
        self.samples_flushed_by_drop = 0

        self.caller_samples_sent = 0
        self.frames_sent = 0  # every AudioData sent, caller audio and trailing silence
        self.silent_frames_sent = 0
        self.received_frames = 0
        self.received_samples = 0
        self.samples_heard = 0
        self.underrun_frames = 0  # gaps and short frames inside an utterance burst
        self.errors: list[str] = []

        self._caller_src = caller_pcm  # at fake.acs_rate; converted on answer if needed
        self._caller = caller_pcm
        self._caller_pos = 0  # bytes of _caller already sent
        self._caller_end_tick: int | None = None
        self._frames = _FrameText(self.caller_raw_id)
        self._media_fault_names = [n for n in ("acs-drop", "acs-reconnect") if n in self.faults]
        self._silent_form = False  # alternates the two silent-frame forms ACS uses
        self._placed_at = time.monotonic()
        self._origin: float | None = None  # monotonic time of media tick 0
        self._wall_origin_us = _epoch_us(_now_utc())  # wall time of media tick 0
        self._next_tick = 0
        self._heard = bytearray()
        self._queue = bytearray()
        self._last_play_tick: int | None = None
        self._burst_broken = True
        self._first_heard_ticks: list[int] = []
        self._timeline: list[tuple[float, str, dict[str, Any]]] = []
        self._callbacks: list[tuple[float, str, int]] = []
        self._stops: list[tuple[float, int]] = []
        self._answer_repeat_id: str | None = None
        self._answer_props: dict[str, Any] | None = None
        self._answer_attempts = 0
        self._ending = False
        self._media_failed = False
        self._media_stopping = False
        self._ws: ClientConnection | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ring_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._play_task: asyncio.Task[None] | None = None
        self._play_context: str | None = None
        self._play_callback_uri: str | None = None
        self._cb_lock = asyncio.Lock()  # callbacks are delivered one at a time, in order
        self._faults_raw: list[tuple[float, str]] = []
        self._media_faults_done: set[str] = set()
        self._media_dropped = False  # acs-drop fired: no more callbacks, ends "media_dropped"
        self._media_started_posted = asyncio.Event()  # for acs-reorder-callbacks
        self._log("ringing", {"caller": caller, "recipient": recipient})

    # ---------------------------------------------------------------- time

    @property
    def frame_samples(self) -> int:
        """Samples per 20 ms frame at the negotiated rate (320 or 480)."""
        return self.acs_rate // 50

    @property
    def next_tick(self) -> int:
        """The media tick the clock sends next: ``frames_sent`` plus ticks skipped in a
        media gap (``acs-reconnect``), so tick ``next_tick`` is due at call time
        ``0.02 * next_tick``."""
        return self._next_tick

    @property
    def streaming(self) -> bool:
        """A media socket is open (False before media, in a fault's gap, after the end)."""
        return self._ws is not None and not self._ending

    def _call_time(self, raw: float) -> float:
        origin = self._origin if self._origin is not None else self._placed_at
        return round((raw - origin) * self._fake.speed, 6)

    def now(self) -> float:
        """The current call time in seconds."""
        return self._call_time(time.monotonic())

    def overdue_s(self, now: float) -> float | None:
        """How late the sender is with the next caller frame at ``now``
        (``time.monotonic()``), in wall seconds: ``now`` minus the moment tick
        :attr:`next_tick` is due (negative: not due yet). None while no frame can be due:
        no media socket open (before media, in a fault's gap) or the call ending."""
        if self._ws is None or self._ending or self._origin is None:
            return None
        return now - self._origin - self._next_tick * FRAME_S / self._fake.speed

    def _log(self, what: str, detail: dict[str, Any] | None = None) -> None:
        self._timeline.append((time.monotonic(), what, detail or {}))

    # ---------------------------------------------------------------- reports

    @property
    def timeline(self) -> list[tuple[float, str, dict[str, Any]]]:
        """Everything that happened, as ``(call time s, what, details)``, in time order."""
        ordered = sorted(self._timeline, key=lambda entry: entry[0])
        return [(self._call_time(raw), what, detail) for raw, what, detail in ordered]

    @property
    def callbacks_posted(self) -> list[tuple[float, str, int]]:
        """``(call time s, event type without the "Microsoft.Communication." prefix,
        HTTP status the bridge returned, 0 if it did not answer)`` per callback POST."""
        return [(self._call_time(raw), kind, status) for raw, kind, status in self._callbacks]

    @property
    def faults_fired(self) -> list[tuple[float, str]]:
        """``(call time s, fault name)`` per fault that took effect, in order."""
        return [(self._call_time(raw), name) for raw, name in self._faults_raw]

    def _fired(self, name: str, **detail: Any) -> None:
        now = time.monotonic()
        self._faults_raw.append((now, name))
        self._timeline.append((now, "fault", {"name": name, **detail}))

    def _media_fault_due(self, tick: int) -> str | None:
        """``acs-drop`` / ``acs-reconnect`` if one is due at ``tick`` (each fires once)."""
        for name in self._media_fault_names:
            at = self.faults.get(name)
            if (
                isinstance(at, float)
                and name not in self._media_faults_done
                and tick * FRAME_S >= at - 1e-9
            ):
                self._media_faults_done.add(name)
                return name
        return None

    def _discard_queue(self) -> int:
        """Drop the play queue at a media drop; returns the samples discarded."""
        flushed = len(self._queue) // 2
        self._queue.clear()
        self._burst_broken = True
        self.samples_flushed_by_drop += flushed
        return flushed

    def _skip_caller(self, ticks: int) -> None:
        """Caller audio due during ``ticks`` ticks of a media gap: lost, never sent."""
        if ticks <= 0:
            return
        frame_bytes = self.frame_samples * 2
        lost = self._caller[self._caller_pos : self._caller_pos + ticks * frame_bytes]
        if not lost:
            return
        self._caller_pos += len(lost)
        self.caller_samples_lost_in_gap += len(lost) // 2
        if self._caller_pos >= len(self._caller) and self._caller_end_tick is None:
            self._caller_end_tick = self._next_tick + math.ceil(len(lost) / frame_bytes)
            self._log("caller_audio_end", {"samples": self.caller_samples_sent, "in_gap": True})

    @property
    def stop_audio(self) -> list[tuple[float, int]]:
        """``(call time s, samples flushed from the play queue)`` per ``StopAudio``."""
        return [(self._call_time(raw), flushed) for raw, flushed in self._stops]

    @property
    def first_audio_heard_s(self) -> list[float]:
        """Call times at which bridge audio started playing after silence.

        One per utterance burst: playback that resumes after at least
        :data:`BURST_GAP_S` of nothing, or after a ``StopAudio``.
        """
        return [round(tick * FRAME_S, 6) for tick in self._first_heard_ticks]

    @property
    def heard(self) -> npt.NDArray[np.int16]:
        """What the caller heard: int16 PCM at :attr:`acs_rate`, index 0 = call time 0.

        One 20 ms frame per media tick so far, zeros where nothing played.
        """
        return np.frombuffer(bytes(self._heard), dtype="<i2").astype(np.int16)

    @property
    def queued_samples(self) -> int:
        """Bridge audio waiting in the play queue."""
        return len(self._queue) // 2

    # ---------------------------------------------------------------- caller actions

    async def hang_up(self) -> None:
        """The caller hangs up now; returns when the call has ended.

        Posts ``CallDisconnected`` (if the call was answered), then closes the media
        socket with 1000 (``acs-close-first`` reverses the order, ``acs-disconnect-first``
        puts 1 s between the two; after ``acs-drop`` nothing is posted and the call ends as
        ``media_dropped``). A no-op on a call that has already ended.
        """
        await self._fake._end(self, "caller_hung_up")

    async def wait_ended(self, timeout: float) -> None:  # noqa: ASYNC109 (the agreed API)
        """Wait up to ``timeout`` wall seconds for the end; raises ``TimeoutError``."""
        await asyncio.wait_for(self.ended.wait(), timeout)

    async def send_dtmf(self, tone: str) -> None:
        """The caller presses a key: a ``DtmfData`` message on the media socket (§4).

        Only when the answer set ``enableDtmfTones``, as live ACS does; raises
        ``RuntimeError`` otherwise or when no media socket is open.
        """
        if not (self.media_options or {}).get("enableDtmfTones"):
            raise RuntimeError("the answer did not set enableDtmfTones")
        if self._ws is None:
            raise RuntimeError("no media socket is open")
        stamp = _iso_ms(_now_utc())
        await self._ws.send(
            acs.dtmf_message(tone, timestamp=stamp, participant_raw_id=self.caller_raw_id)
        )
        self._log("dtmf", {"tone": tone})

    # ---------------------------------------------------------------- media model

    def _caller_frame(self, tick: int) -> str:
        """The ``AudioData`` message for media tick ``tick`` (advances the caller)."""
        frame_bytes = self.frame_samples * 2
        chunk = self._caller[self._caller_pos : self._caller_pos + frame_bytes]
        if chunk:
            self._caller_pos += len(chunk)
            self.caller_samples_sent += len(chunk) // 2
            if self._caller_pos >= len(self._caller):
                self._caller_end_tick = tick + 1
                self._log("caller_audio_end", {"samples": self.caller_samples_sent})
            chunk = chunk.ljust(frame_bytes, b"\0")
        elif self._caller_end_tick is None:  # no caller audio at all
            self._caller_end_tick = tick
        self.frames_sent += 1
        stamp = self._frames.stamp(self._wall_origin_us + tick * FRAME_US)
        if chunk and chunk.count(0) != len(chunk):
            b64: str | None = pybase64.b64encode(chunk).decode("ascii")
            silent = False
        else:
            # ACS sends digital silence both with no data and with zeros (§4).
            self.silent_frames_sent += 1
            self._silent_form = not self._silent_form
            b64 = None if self._silent_form else self._fake._zeros_b64(frame_bytes)
            silent = True
        return self._frames.message(stamp, b64, silent)

    def _play_tick(self, tick: int) -> None:
        """Play one 20 ms frame of the queue into ``heard`` at ``tick``'s position."""
        frame_bytes = self.frame_samples * 2
        start = tick * frame_bytes
        if len(self._heard) < start:  # media was paused: nothing was heard meanwhile
            self._heard.extend(bytes(start - len(self._heard)))
        chunk = bytes(self._queue[:frame_bytes])
        del self._queue[:frame_bytes]
        if not chunk:
            self._heard.extend(bytes(frame_bytes))
            return
        gap_ticks = math.inf if self._last_play_tick is None else tick - self._last_play_tick - 1
        if self._burst_broken or gap_ticks * FRAME_S >= BURST_GAP_S - 1e-9:
            self._first_heard_ticks.append(tick)
            self._log("play_start", {"tick": tick})
            self._burst_broken = False
        else:
            self.underrun_frames += int(gap_ticks)
        if len(chunk) < frame_bytes:
            self.underrun_frames += 1
        self._heard.extend(chunk.ljust(frame_bytes, b"\0"))
        self.samples_heard += len(chunk) // 2
        self._last_play_tick = tick

    def _held(self, tick: int) -> bool:
        """``acs-hold``: whether tick ``tick`` falls in the hold (no frame is sent)."""
        at = self.faults.get("acs-hold")
        if not isinstance(at, float) or not at <= tick * FRAME_S < at + HOLD_S:
            return False
        if "acs-hold" not in self._media_faults_done:
            self._media_faults_done.add("acs-hold")
            self._fired("acs-hold", seconds=HOLD_S)
        return True

    def _hangup_due(self, tick: int) -> bool:
        """Whether the caller hangs up at ``tick`` (before sending it)."""
        after = self._fake.hangup_after_audio_s
        if self._caller_end_tick is None or self._queue or not math.isfinite(after):
            return False
        quiet_from = self._caller_end_tick
        if self._last_play_tick is not None:
            quiet_from = max(quiet_from, self._last_play_tick + 1)
        return tick >= quiet_from + math.ceil(after / FRAME_S - 1e-9)

    def _on_outbound(self, message: str | bytes) -> None:
        """Handle one message the bridge sent on the media socket; never raises."""
        if isinstance(message, bytes):
            self.errors.append(f"binary frame of {len(message)} bytes (ACS expects JSON text)")
            return
        try:
            event = _outbound_audio(message) or acs.parse_outbound(message)
        except AcsCodecError as exc:
            self.errors.append(f"bad outbound message: {exc}")
            self._log("outbound_error", {"error": str(exc)})
            return
        if isinstance(event, acs.OutboundAudio):
            self.received_frames += 1
            self.received_samples += len(event.pcm) // 2
            if not self.bidirectional:
                self.errors.append("AudioData received but enableBidirectional was not set")
                return
            if not self._ending:
                self._queue.extend(event.pcm)
        elif isinstance(event, acs.OutboundStop):
            flushed = len(self._queue) // 2
            self._queue.clear()
            self._burst_broken = True
            self._stops.append((time.monotonic(), flushed))
            self._log("stop_audio", {"flushed_samples": flushed})
        else:
            self.errors.append(f"unknown outbound kind {event.kind!r}")
            self._log("outbound_error", {"kind": event.kind})

    def _properties(self) -> dict[str, Any]:
        """The ``CallConnectionProperties`` JSON for this call (§2.3)."""
        if self.media_options is None:
            media_state = "disabled"
        else:
            media_state = "active" if self._ws is not None else "inactive"
        return {
            "callConnectionId": self.call_connection_id,
            "serverCallId": self.server_call_id,
            "targets": [_phone(self.recipient)],
            "callConnectionState": "disconnected" if self._ending else "connected",
            "callbackUri": self.callback_uri,
            "sourceCallerIdNumber": {"value": self.caller},
            "sourceDisplayName": "",
            "source": _phone(self.caller),
            "correlationId": self.correlation_id,
            "answeredBy": {"id": f"8:acs:{self._fake.resource_id}_{self.event_id}"},
            "answeredFor": {"value": self.recipient},
            "mediaStreamingSubscription": {
                "id": self.media_subscription_id,
                "state": media_state,
                "subscribedContentTypes": ["audio"] if self.media_options is not None else [],
            },
        }


# --------------------------------------------------------------------------- the service


class FakeAcs:
    """Call Automation REST + Event Grid + callbacks + media WebSocket, on loopback.

    ``acs_rate`` is the rate of the caller audio given to :meth:`place_call` and
    the default media format; an answer asking for the other format gets the caller
    audio resampled (soxr) and ``heard`` at the answer's rate. ``speed`` scales the
    media clock only (frames, playback, hang-up and play timing); HTTP happens as
    fast as it happens. ``hangup_after_audio_s`` (call time; ``math.inf`` never) is
    how long the caller stays on once its audio has ended and nothing is left to
    play. ``ring_timeout_s`` (wall time) ends an unanswered call. ``faults`` maps ``acs-*``
    fault names to their argument (see the module docstring and :mod:`voicebridge.sim.faults`);
    it is validated here (``ValueError``) and applies to every call; :meth:`place_call` can add
    faults for one call.
    """

    def __init__(
        self,
        *,
        access_key: str | None = None,
        resource_id: str | None = None,
        acs_rate: int = 16000,
        speed: float = 1.0,
        hangup_after_audio_s: float = 1.0,
        ring_timeout_s: float = 30.0,
        faults: Mapping[str, FaultValue] | None = None,
    ) -> None:
        self.faults = check_faults(faults, "acs")
        if acs_rate not in (16000, 24000):
            raise ValueError("acs_rate must be 16000 (pcm16KMono) or 24000 (pcm24KMono)")
        if not speed > 0:
            raise ValueError("speed must be positive")
        if hangup_after_audio_s < 0:
            raise ValueError("hangup_after_audio_s must be >= 0")
        self.access_key = access_key or base64.b64encode(secrets.token_bytes(64)).decode()
        base64.b64decode(self.access_key, validate=True)  # the SDK decodes it too (§2.1)
        self.resource_id = resource_id or str(uuid.uuid4())
        self.acs_rate = acs_rate
        self.speed = float(speed)
        self.hangup_after_audio_s = float(hangup_after_audio_s)
        self.ring_timeout_s = float(ring_timeout_s)
        self.issuer = ISSUER
        self.requests: list[dict[str, Any]] = []
        self.calls: dict[str, FakeCall] = {}
        self.placed: list[FakeCall] = []
        self.internal_errors: list[str] = []  # bugs in the fake itself; tests assert empty
        self._by_context: dict[str, FakeCall] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(16)
        self._tokens: dict[tuple[Any, ...], str] = {}  # sign_jwt's, of the current second
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._endpoint: str | None = None
        self._zeros: dict[int, str] = {}
        self._topic = (
            f"/subscriptions/{uuid.uuid4()}/resourcegroups/voicebridge-sim/providers"
            "/microsoft.communication/communicationservices/fake-acs"
        )

    # ---------------------------------------------------------------- addresses

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``; only after :meth:`start`.

        Pass it to ``CallAutomationClient`` as is: with a trailing slash, SDK 1.6.0
        signs the host as ``127.0.0.1:PORT/`` and every request gets 401.
        """
        if self._endpoint is None:
            raise RuntimeError("FakeAcs.start() has not been called")
        return self._endpoint

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/calling/keys"

    @property
    def openid_config_url(self) -> str:
        return f"{self.endpoint}/calling/.well-known/acsopenidconfiguration"

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set served at :attr:`jwks_url`."""
        key = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        key.update({"kid": self._kid, "use": "sig", "alg": "RS256"})
        return {"keys": [key]}

    def sign_jwt(
        self,
        *,
        lifetime_s: float = CALLBACK_TOKEN_LIFETIME_S,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """An RS256 token as Call Automation signs it (protocols.md §5).

        Claims ``iss``, ``aud`` (= :attr:`resource_id`), ``iat``, ``nbf`` and ``exp``
        (now + ``lifetime_s``); header ``kid``. For abuse tests: ``**claims``
        override claims (``None`` removes one), ``kid`` changes the header kid,
        ``key`` signs with another RSA key, ``headers`` adds header fields.

        Tokens are whole-second and RS256 (PKCS #1 v1.5) signatures deterministic, so a
        plain token is signed once per second and lifetime and then reused: the same
        bytes signing again would give, for a few hundred microseconds less per callback.
        """
        now = int(time.time())
        plain = kid is None and key is None and not headers and not claims
        memo_key = (now, int(lifetime_s), self.issuer, self.resource_id, self._kid, self._key)
        if plain and memo_key in self._tokens:
            return self._tokens[memo_key]
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.resource_id,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime_s),
        }
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        header = {"kid": kid or self._kid, **(headers or {})}
        token = jwt.encode(payload, key or self._key, algorithm="RS256", headers=header)
        if plain:
            if any(second != now for second, *_ in self._tokens):
                self._tokens.clear()  # only this second's tokens can be reused
            self._tokens[memo_key] = token
        return token

    # ---------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on ``host:port`` (0 picks a free port) and open the HTTP client."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application(client_max_size=4 * 1024 * 1024)
        # One catch-all route: ACS paths carry ':action' suffixes that are easier to
        # match with our own regex than with aiohttp's resource syntax.
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        self._endpoint = f"http://{shown}:{bound_port}"
        self._session = aiohttp.ClientSession(timeout=_HTTP_TIMEOUT)

    async def stop(self) -> None:
        """Stop everything: tasks cancelled, sockets closed, server down. Idempotent.

        Calls still going end with ``fake_stopped`` and nothing is posted for them.
        """
        for call in self.placed:
            if not call.ended.is_set():
                call._ending = True
                call.end_reason = call.end_reason or "fake_stopped"
                call.state = "disconnected"
                call._log("ended", {"reason": call.end_reason})
                call.ended.set()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call in self.placed:
            ws, call._ws = call._ws, None
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(1001, "fake ACS stopped"), 2)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close_idle_connections(self) -> None:
        """Close the HTTP client's keep-alive connections (to webhooks and callback URLs)
        by replacing the client: later POSTs open new connections. Call it while no
        request is in flight (e.g. every call has ended); meant for leak checks of the
        server under test, whose sockets to this fake then close at once rather than
        when a keep-alive timer expires."""
        if self._session is not None:
            old, self._session = self._session, aiohttp.ClientSession(timeout=_HTTP_TIMEOUT)
            await old.close()

    async def __aenter__(self) -> FakeAcs:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, tracked so :meth:`stop` can cancel it.

        A failure is logged and kept in :attr:`internal_errors`: a bug in the fake
        must be loud, not a hung test.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("fake ACS task %s failed", task.get_name(), exc_info=exc)
            self.internal_errors.append(f"{task.get_name()}: {type(exc).__name__}: {exc}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("FakeAcs.start() has not been called")
        return self._session

    def _zeros_b64(self, frame_bytes: int) -> str:
        if frame_bytes not in self._zeros:
            self._zeros[frame_bytes] = base64.b64encode(bytes(frame_bytes)).decode("ascii")
        return self._zeros[frame_bytes]

    # ---------------------------------------------------------------- Event Grid

    async def place_call(
        self,
        *,
        webhook_url: str,
        caller_pcm: bytes,
        caller: str = "+15551230001",
        recipient: str = "+18005550100",
        schema: str = "eventgrid",
        fail_answer: bool = False,
        faults: Mapping[str, FaultValue] | None = None,
        call_connection_id: str | None = None,
    ) -> FakeCall:
        """Ring the bridge: POST an ``IncomingCall`` event to ``webhook_url`` (§1).

        ``caller_pcm`` is PCM16LE mono at :attr:`acs_rate`: what the caller says,
        from the first media frame on. ``schema`` is ``"eventgrid"`` (an array,
        ``application/json``) or ``"cloudevents"`` (one structured CloudEvent).
        With ``fail_answer`` the answer REST call succeeds but ``AnswerFailed`` is
        posted instead of ``CallConnected``. Returns once the webhook replied (its
        status is in :attr:`FakeCall.incoming_call_status`, 0 if it could not be
        reached); the call then lives on in the background.

        ``faults`` (``acs-*`` names, as for the fake) apply to this call only, on top of
        the fake-wide ones. ``call_connection_id`` is the id the answer will assign
        (default: a new UUID), so a test can know it before the bridge does — e.g. to
        fault the Voice Live session the bridge opens for this call, which carries it as
        ``x-ms-client-request-id``. ``ValueError`` for bad faults, an unknown schema, or
        an id another call of this fake already has or will get.
        """
        if schema not in ("eventgrid", "cloudevents"):
            raise ValueError("schema must be 'eventgrid' or 'cloudevents'")
        if call_connection_id is not None and (
            call_connection_id in self.calls
            or any(c._preset_connection_id == call_connection_id for c in self.placed)
        ):
            raise ValueError(f"call connection id {call_connection_id!r} is already in use")
        self._client()
        call = FakeCall(
            self,
            caller=caller,
            recipient=recipient,
            caller_pcm=caller_pcm,
            schema=schema,
            fail_answer=fail_answer,
            faults=faults,
            call_connection_id=call_connection_id,
        )
        self.placed.append(call)
        self._by_context[call.incoming_call_context] = call
        data = {
            "to": _phone(recipient),
            "from": _phone(caller),
            "serverCallId": call.server_call_id,
            "callerDisplayName": "",
            "incomingCallContext": call.incoming_call_context,
            "correlationId": call.correlation_id,
        }
        subject = f"/caller/4:{caller}/recipient/4:{recipient}"
        event_type = EVENT_PREFIX + "IncomingCall"
        if schema == "eventgrid":
            call.incoming_call_event = {
                "id": call.event_id,
                "topic": self._topic,
                "subject": subject,
                "data": data,
                "eventType": event_type,
                "dataVersion": "1.0",
                "metadataVersion": "1",
                "eventTime": _iso7(_now_utc()),
            }
        else:
            call.incoming_call_event = {
                "specversion": "1.0",
                "type": event_type,
                "source": self._topic,
                "id": call.event_id,
                "time": _iso7(_now_utc()),
                "subject": subject,
                "datacontenttype": "application/json",
                "data": data,
            }
        call._ring_task = self._spawn(self._ring_timeout(call), f"ring-{call.event_id[:8]}")
        await self._deliver_incoming(call, webhook_url)
        return call

    async def redeliver_incoming_call(self, call: FakeCall, webhook_url: str) -> int:
        """POST the same ``IncomingCall`` again, as an Event Grid retry does.

        Same event id, ``aeg-delivery-count`` one higher; the bridge should
        de-duplicate (§1). Returns the webhook's status (0: no reply).
        """
        return await self._deliver_incoming(call, webhook_url)

    async def _deliver_incoming(self, call: FakeCall, webhook_url: str) -> int:
        if call.schema == "eventgrid":
            body = json.dumps([call.incoming_call_event])
            content_type = "application/json; charset=utf-8"
        else:
            body = json.dumps(call.incoming_call_event)
            content_type = "application/cloudevents+json; charset=utf-8"
        headers = {
            "Content-Type": content_type,
            "aeg-event-type": "Notification",
            "aeg-subscription-name": "VOICEBRIDGE-INCOMING-CALL",
            "aeg-delivery-count": str(call.delivery_count),
            "aeg-data-version": "1.0",
            "aeg-metadata-version": "1",
        }
        call.delivery_count += 1
        call._log("incoming_call_post", {"delivery": call.delivery_count - 1})
        status = 0
        try:
            async with self._client().post(webhook_url, data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            call._log("incoming_call_failed", {"error": f"{type(exc).__name__}: {exc}"})
        call.incoming_call_status = status
        call._log("incoming_call_status", {"status": status})
        return status

    async def validate_subscription(
        self, webhook_url: str, *, schema: str = "eventgrid"
    ) -> dict[str, Any]:
        """Run Event Grid's endpoint-validation handshake against ``webhook_url`` (§1).

        ``eventgrid``: POST a ``SubscriptionValidationEvent``; the bridge must reply
        200 with ``{"validationResponse": code}``. ``cloudevents``: OPTIONS with
        ``WebHook-Request-Origin``; the bridge must reply 200 with
        ``WebHook-Allowed-Origin``. Returns ``{"status", "body", "headers", "ok"}``
        plus ``validation_code`` (eventgrid) — ``ok`` says whether the reply is one
        Event Grid would accept.
        """
        session = self._client()
        if schema == "cloudevents":
            origin = "eventgrid.azure.net"
            async with session.options(
                webhook_url, headers={"WebHook-Request-Origin": origin}
            ) as resp:
                text = await resp.text()
                allowed = resp.headers.get("WebHook-Allowed-Origin")
                return {
                    "status": resp.status,
                    "body": text,
                    "headers": dict(resp.headers),
                    "ok": resp.status == 200 and allowed in (origin, "*"),
                }
        code = str(uuid.uuid4())
        event = {
            "id": str(uuid.uuid4()),
            "topic": self._topic,
            "subject": "",
            "data": {
                "validationCode": code,
                "validationUrl": (
                    "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/"
                    f"voicebridge/validate?id={code}&t={_iso7(_now_utc())}"
                    "&apiVersion=2018-05-01-preview&token=fake"
                ),
            },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": _iso7(_now_utc()),
            "metadataVersion": "1",
            "dataVersion": "1",
        }
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "aeg-event-type": "SubscriptionValidation",
            "aeg-subscription-name": "VOICEBRIDGE-INCOMING-CALL",
            "aeg-delivery-count": "0",
            "aeg-data-version": "1",
            "aeg-metadata-version": "1",
        }
        async with session.post(webhook_url, data=json.dumps([event]), headers=headers) as resp:
            text = await resp.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except ValueError:
                parsed = None
            ok = (
                resp.status == 200
                and isinstance(parsed, dict)
                and parsed.get("validationResponse") == code
            )
            return {
                "status": resp.status,
                "body": parsed if parsed is not None else text,
                "headers": dict(resp.headers),
                "validation_code": code,
                "ok": ok,
            }

    async def _ring_timeout(self, call: FakeCall) -> None:
        await asyncio.sleep(self.ring_timeout_s)
        if not call.answered.is_set() and not call._ending:
            reason = "answer_failed" if call._answer_attempts else "not_answered"
            await self._end(call, reason)

    # ---------------------------------------------------------------- REST

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "json": parsed,
            "raw_body": body,
            "hmac_ok": None,  # None: a public endpoint that needs no signature
            "status": None,
            "call_connection_id": None,
            "time": time.monotonic(),
        }
        self.requests.append(record)
        try:
            response = await self._route(request, body, parsed, record)
        except Exception as exc:
            log.exception("fake ACS handler failed")
            self.internal_errors.append(f"handler {request.method} {request.path}: {exc!r}")
            response = _error(500, "fake ACS internal error")
        record["status"] = response.status
        request_id = request.headers.get("x-ms-client-request-id")
        if request_id and request.headers.get("x-ms-return-client-request-id") == "true":
            response.headers["x-ms-client-request-id"] = request_id
        return response

    async def _route(
        self, request: web.Request, body: bytes, parsed: Any, record: dict[str, Any]
    ) -> web.StreamResponse:
        path, method = request.path, request.method
        if method == "GET" and path == "/calling/keys":
            return web.json_response(self.jwks())
        if method == "GET" and path == "/calling/.well-known/acsopenidconfiguration":
            return web.json_response(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url,
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
                }
            )
        problem = verify_hmac(
            access_key=self.access_key,
            method=method,
            path_with_query=request.raw_path,  # exactly as sent, still percent-encoded
            headers=request.headers,
            body=body,
        )
        record["hmac_ok"] = problem is None
        if problem is not None:
            return _error(401, f"Denied by the HMAC authentication policy: {problem}.")
        if "api-version" not in request.query:
            return _error(400, "The api-version query parameter is required.")
        if path == "/calling/callConnections:answer":
            if method != "POST":
                return _error(405, "Method not allowed.")
            return await self._answer(request, parsed, record)
        if path == "/calling/callConnections:reject":
            if method != "POST":
                return _error(405, "Method not allowed.")
            return self._reject(parsed)
        match = _CALL_PATH_RE.match(path)
        if match is None:
            return _error(404, f"Resource not found: {path}")
        cid, action = match["cid"], match["action"]
        record["call_connection_id"] = cid
        call = self.calls.get(cid)
        if call is None or call.ended.is_set():
            return _error(404, "Call connection not found.", code="8522")
        call._log("rest", {"method": method, "action": action or ""})
        if action is None:
            if method == "GET":
                return web.json_response(call._properties())
            if method == "DELETE":
                self._spawn(self._end(call, "bridge_hung_up"), f"hangup-{cid[:8]}")
                return web.Response(status=204)
            return _error(405, "Method not allowed.")
        if method != "POST":
            return _error(405, "Method not allowed.")
        body_obj = parsed if isinstance(parsed, dict) else {}
        if action == "terminate":
            self._spawn(self._end(call, "bridge_hung_up"), f"terminate-{cid[:8]}")
            return web.Response(status=204)
        if action == "play":
            return self._play(call, body_obj)
        if action == "cancelAllMediaOperations":
            if call._play_task is not None and not call._play_task.done():
                call._play_task.cancel()
                self._spawn(
                    self._post_event(
                        call,
                        "PlayCanceled",
                        operation_context=call._play_context,
                        uri=call._play_callback_uri,
                    ),
                    f"playcancel-{cid[:8]}",
                )
            return web.Response(status=202)
        if action == "startMediaStreaming":
            if call.media_options is None:
                return _error(400, "Media streaming was not configured when answering.")
            if call._ws is None and not call._ending:
                self._spawn(self._start_media(call, body_obj), f"media-{cid[:8]}")
            return web.Response(status=202)
        if action == "stopMediaStreaming":
            if call.media_options is None:
                return _error(400, "Media streaming was not configured when answering.")
            self._spawn(self._stop_streaming(call, body_obj), f"mediastop-{cid[:8]}")
            return web.Response(status=202)
        return _error(501, f"The fake ACS does not implement :{action}.")

    def _reject(self, parsed: Any) -> web.StreamResponse:
        """``reject_call``: a ringing call ends without media (204, as the SDK expects).

        The caller hears a busy signal for reason ``busy``; ``end_reason`` records
        ``rejected_<reason>``.
        """
        if not isinstance(parsed, dict):
            return _error(400, "The request body must be a JSON object.")
        call = self._by_context.get(str(parsed.get("incomingCallContext")))
        if call is None:
            return _error(400, "incomingCallContext is invalid.")
        if call._answer_props is not None or call._ending:
            return _error(400, "The call is no longer ringing.")
        reason = str(parsed.get("callRejectReason") or "none").lower()
        call._log("rest", {"method": "POST", "action": "reject", "reason": reason})
        self._spawn(self._end(call, f"rejected_{reason}"), f"reject-{call.event_id[:8]}")
        return web.Response(status=204)

    async def _answer(
        self, request: web.Request, parsed: Any, record: dict[str, Any]
    ) -> web.StreamResponse:
        if not isinstance(parsed, dict):
            return _error(400, "The request body must be a JSON object.")
        call = self._by_context.get(str(parsed.get("incomingCallContext")))
        if call is None:
            return _error(400, "incomingCallContext is invalid.")
        call._answer_attempts += 1
        call._log("rest", {"method": "POST", "action": "answer"})
        repeat_id = request.headers.get("Repeatability-Request-ID")
        if call._answer_props is not None:
            # A retry of the same request (same Repeatability-Request-ID, §2.3) gets
            # the original result; a second, different answer is refused.
            if repeat_id and repeat_id == call._answer_repeat_id:
                record["call_connection_id"] = call.call_connection_id
                return web.json_response(call._answer_props)
            return _error(400, "The call has already been answered.")
        if call._ending:
            return _error(404, "The call is no longer ringing.")
        callback = parsed.get("callbackUri")
        if not isinstance(callback, str) or urlsplit(callback).scheme not in ("http", "https"):
            return _error(400, "callbackUri must be an absolute http(s) URL.")
        media = parsed.get("mediaStreamingOptions")
        rate = self.acs_rate
        if media is not None:
            if not isinstance(media, dict):
                return _error(400, "mediaStreamingOptions must be an object.")
            url = media.get("transportUrl")
            # Live ACS insists on wss:// (§4); plain ws:// is allowed on loopback here.
            if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
                return _error(400, "mediaStreamingOptions.transportUrl must be a ws(s):// URL.")
            if str(media.get("transportType", "")).lower() != "websocket":
                return _error(400, "mediaStreamingOptions.transportType must be websocket.")
            if str(media.get("contentType", "")).lower() != "audio":
                return _error(400, "mediaStreamingOptions.contentType must be audio.")
            if str(media.get("audioChannelType", "")).lower() not in ("mixed", "unmixed"):
                return _error(400, "mediaStreamingOptions.audioChannelType must be mixed/unmixed.")
            fmt = media.get("audioFormat")
            if fmt is not None:
                if str(fmt).lower() not in AUDIO_FORMATS:
                    return _error(400, f"Unsupported audioFormat {fmt!r}.")
                rate = AUDIO_FORMATS[str(fmt).lower()]
        call.answer_request = parsed
        call.api_version = request.query.get("api-version", "")
        call.callback_uri = callback
        context = parsed.get("operationContext")
        call.operation_context = context if isinstance(context, str) else None
        call.media_options = media
        call.bidirectional = bool(media and media.get("enableBidirectional"))
        if rate != call.acs_rate:
            call._caller = _resample_pcm(call._caller_src, call.acs_rate, rate)
            call.acs_rate = rate
        call.call_connection_id = call._preset_connection_id or str(uuid.uuid4())
        call._answer_repeat_id = repeat_id
        call.state = "connected"
        self.calls[call.call_connection_id] = call
        record["call_connection_id"] = call.call_connection_id
        call._answer_props = call._properties()
        call.answered.set()
        call._log("answered", {"call_connection_id": call.call_connection_id, "rate": rate})
        if call._ring_task is not None:
            call._ring_task.cancel()
        # Answer fast (200 now); everything the service does next happens afterwards.
        self._spawn(self._after_answer(call), f"connect-{call.call_connection_id[:8]}")
        return web.json_response(call._answer_props)

    def _play(self, call: FakeCall, body: dict[str, Any]) -> web.StreamResponse:
        sources = body.get("playSources")
        if not isinstance(sources, list) or not sources:
            return _error(400, "playSources is required.")
        if call._play_task is not None and not call._play_task.done():
            call._play_task.cancel()
        context = body.get("operationContext")
        call._play_context = context if isinstance(context, str) else call.operation_context
        uri = body.get("operationCallbackUri")
        call._play_callback_uri = uri if isinstance(uri, str) else None
        seconds = _play_seconds(body)
        call._log("play", {"seconds": seconds, "sources": len(sources)})
        call._play_task = self._spawn(
            self._run_play(call, seconds, call._play_context, call._play_callback_uri),
            f"play-{(call.call_connection_id or '')[:8]}",
        )
        return web.Response(status=202)

    async def _run_play(
        self, call: FakeCall, seconds: float | None, context: str | None, uri: str | None
    ) -> None:
        await self._post_event(call, "PlayStarted", operation_context=context, uri=uri)
        if seconds is None:  # looping: only cancellation ends it
            await asyncio.Event().wait()
        await asyncio.sleep(seconds / self.speed if seconds else 0)
        await self._post_event(call, "PlayCompleted", operation_context=context, uri=uri)

    # ---------------------------------------------------------------- callbacks

    def _cloud_event(
        self,
        call: FakeCall,
        kind: str,
        extra: Mapping[str, Any] | None,
        operation_context: str | None,
        result: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """One callback CloudEvent (§3)."""
        event_type = EVENT_PREFIX + kind
        source = f"calling/callConnections/{call.call_connection_id}"
        data: dict[str, Any] = {
            "callConnectionId": call.call_connection_id,
            "serverCallId": call.server_call_id,
            "correlationId": call.correlation_id,
            "operationContext": operation_context,
            "resultInformation": dict(
                result or {"code": 200, "subCode": 0, "message": "Action completed successfully."}
            ),
            "version": call.api_version,
            "publicEventType": event_type,
        }
        if operation_context is None:
            del data["operationContext"]
        data.update(extra or {})
        return {
            "id": str(uuid.uuid4()),
            "source": source,
            "type": event_type,
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "time": _now_utc().isoformat(),
            "subject": source,
            "data": data,
        }

    async def _post_event(
        self,
        call: FakeCall,
        kind: str,
        extra: Mapping[str, Any] | None = None,
        *,
        operation_context: str | None = None,
        uri: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> int:
        """POST one callback (a one-element CloudEvents array) with a fresh JWT.

        Serialised per call so events arrive in the order they happened. Returns the
        bridge's HTTP status, 0 when it could not be reached; never raises.
        """
        target = uri or call.callback_uri
        if target is None or call._media_dropped:
            return 0
        context = operation_context if operation_context is not None else call.operation_context
        event = self._cloud_event(call, kind, extra, context, result)
        async with call._cb_lock:
            status = await self._post_once(call, target, event, kind)
            if "acs-duplicate-callbacks" in call.faults:
                call._fired("acs-duplicate-callbacks", type=kind, id=event["id"])
                await self._post_once(call, target, event, kind, duplicate=True)
        if kind in ("MediaStreamingStarted", "MediaStreamingFailed"):
            call._media_started_posted.set()
        return status

    async def _post_once(
        self,
        call: FakeCall,
        target: str,
        event: dict[str, Any],
        kind: str,
        *,
        duplicate: bool = False,
    ) -> int:
        """One POST of ``event`` with a fresh JWT; recorded in the call's callbacks."""
        sent_at = time.monotonic()
        token = self.sign_jwt(lifetime_s=CALLBACK_TOKEN_LIFETIME_S)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        status = 0
        detail: dict[str, Any] = {"type": kind}
        if duplicate:
            detail["duplicate"] = True
        try:
            async with self._client().post(
                target, data=json.dumps([event]), headers=headers
            ) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The bridge may already have dropped the call; that is its right.
            detail["error"] = f"{type(exc).__name__}: {exc}"
        detail["status"] = status
        call._callbacks.append((sent_at, kind, status))
        call._timeline.append((sent_at, "callback", detail))
        return status

    # ---------------------------------------------------------------- call flow

    async def _after_answer(self, call: FakeCall) -> None:
        if call.fail_answer:
            await self._post_event(
                call,
                "AnswerFailed",
                result={"code": 500, "subCode": 0, "message": "Answer failed (simulated)."},
            )
            await self._end(call, "answer_failed")
            return
        self._spawn(self._post_connected(call), f"connected-{(call.call_connection_id or '')[:8]}")
        media = call.media_options
        if media is not None and media.get("startMediaStreaming"):
            # ACS may open the socket before CallConnected is processed (§4), so the
            # media connect runs concurrently with the CallConnected POST.
            await self._start_media(call, {})
        else:
            seconds = len(call._caller) / 2 / call.acs_rate + self.hangup_after_audio_s
            self._idle_hangup(call, seconds)

    async def _post_connected(self, call: FakeCall) -> None:
        reorder = "acs-reorder-callbacks" in call.faults
        if not reorder:
            await self._post_event(call, "CallConnected")
        participants = [
            {"identifier": _phone(call.caller), "isMuted": False, "isOnHold": False},
            {
                "identifier": {
                    "kind": "communicationUser",
                    "rawId": f"8:acs:{self.resource_id}_{call.event_id}",
                    "communicationUser": {"id": f"8:acs:{self.resource_id}_{call.event_id}"},
                },
                "isMuted": False,
                "isOnHold": False,
            },
        ]
        await self._post_event(
            call, "ParticipantsUpdated", {"sequenceNumber": 1, "participants": participants}
        )
        if reorder:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call._media_started_posted.wait(), REORDER_HOLD_S)
            call._fired("acs-reorder-callbacks")
            await self._post_event(call, "CallConnected")

    def _idle_hangup(self, call: FakeCall, call_seconds: float) -> None:
        """Without media, the caller hangs up after ``call_seconds`` of call time."""
        if call._idle_task is not None:
            call._idle_task.cancel()
        if math.isfinite(call_seconds):
            call._idle_task = self._spawn(
                self._idle_wait(call, call_seconds), f"idle-{(call.call_connection_id or '')[:8]}"
            )

    async def _idle_wait(self, call: FakeCall, call_seconds: float) -> None:
        await asyncio.sleep(call_seconds / self.speed)
        if call._ws is None and not call._ending:
            await self._end(call, "caller_hung_up")

    def _media_update(self, status: str, details: str) -> dict[str, Any]:
        return {
            "mediaStreamingUpdate": {
                "contentType": "Audio",
                "mediaStreamingStatus": status,
                "mediaStreamingStatusDetails": details,
            }
        }

    async def _start_media(
        self, call: FakeCall, body: Mapping[str, Any], *, reconnect: bool = False
    ) -> None:
        """Dial the bridge's media WebSocket and start the media clock (§4).

        ``reconnect`` (``acs-reconnect``): a replacement socket; the caller audio due since
        the last frame sent is skipped, and no ``MediaStreamingStarted`` is posted.
        """
        media = call.media_options or {}
        url = str(media.get("transportUrl"))
        token = self.sign_jwt(lifetime_s=MEDIA_TOKEN_LIFETIME_S)
        headers = {
            "Authorization": f"Bearer {token}",
            "x-ms-call-connection-id": call.call_connection_id or "",
            "x-ms-call-correlation-id": call.correlation_id,
        }
        socket_no = call.media_sockets + 1
        call._log("media_connecting", {"url": url, "socket": socket_no})
        try:
            ws = await ws_connect(
                url,
                additional_headers=headers,
                compression=None,
                proxy=None,  # loopback only: never route through an environment proxy
                open_timeout=10,
                close_timeout=2,
                max_size=1 << 20,
                user_agent_header=None,
            )
        except Exception as exc:
            status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
            call._log("media_failed", {"error": f"{type(exc).__name__}: {exc}", "status": status})
            if status in (401, 403):
                details = "authenticationFailure"
            elif reconnect:
                details = "streamConnectionUnsuccessful"
            else:
                details = "initialWebSocketConnectionFailed"
            await self._media_failed(call, details)
            return
        if call._ending:
            await ws.close(1000)
            return
        now = time.monotonic()
        if call._origin is None:
            call._origin = now
            call._wall_origin_us = _epoch_us(_now_utc())
            call._next_tick = 0
        else:  # streaming restarted: continue on the same call clock
            elapsed_ticks = math.ceil((now - call._origin) * self.speed / FRAME_S - 1e-9)
            next_tick = max(call._next_tick, elapsed_ticks)
            if reconnect:  # the caller kept talking during the gap: that audio is lost
                call._skip_caller(next_tick - call._next_tick)
            call._next_tick = next_tick
        call._ws = ws
        call.media_sockets = socket_no
        call._media_stopping = False
        if call._idle_task is not None:
            call._idle_task.cancel()
        connected: dict[str, Any] = {"tick": call._next_tick, "socket": socket_no}
        if reconnect:
            connected["reconnect"] = True
        call._log("media_connected", connected)
        call.media_connected.set()
        cid = (call.call_connection_id or "")[:8]
        call._reader = self._spawn(self._read_media(call, ws), f"media-read-{cid}")
        call._sender = self._spawn(self._send_media(call, ws), f"media-send-{cid}")
        if reconnect:
            return
        context = body.get("operationContext")
        uri = body.get("operationCallbackUri")
        self._spawn(
            self._post_event(
                call,
                "MediaStreamingStarted",
                self._media_update("mediaStreamingStarted", "subscriptionStarted"),
                operation_context=context if isinstance(context, str) else None,
                uri=uri if isinstance(uri, str) else None,
            ),
            f"media-started-{cid}",
        )

    async def _send_media(self, call: FakeCall, ws: ClientConnection) -> None:
        """AudioMetadata, then one frame per tick on an absolute schedule.

        Tick ``n`` is due at ``origin + n * 0.02 / speed``; a late loop catches up by
        sending back-to-back rather than drifting.
        """
        origin = call._origin
        assert origin is not None
        try:
            await ws.send(
                acs.audio_metadata_message(
                    sample_rate=call.acs_rate, subscription_id=call.media_subscription_id
                )
            )
            while True:
                tick = call._next_tick
                delay = origin + tick * FRAME_S / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if call._hangup_due(tick):
                    call._log("caller_hangs_up", {"tick": tick})
                    self._spawn(self._end(call, "caller_hung_up"), "caller-hangup")
                    return
                fault = call._media_fault_due(tick)
                if fault is not None:
                    self._spawn(self._media_fault(call, ws, fault), f"{fault}-{tick}")
                    return
                call._play_tick(tick)
                if call._held(tick):  # on hold: the call goes on, the stream is quiet
                    call._next_tick = tick + 1
                    continue
                message = call._caller_frame(tick)
                call._next_tick = tick + 1
                await _send_text(ws, message)
        except ConnectionClosed:
            return  # the reader sees the close and decides what it means

    async def _media_fault(self, call: FakeCall, ws: ClientConnection, fault: str) -> None:
        """``acs-drop`` / ``acs-reconnect``: abort ``ws`` now (no close frame), then either
        wait for the end of the call or open a replacement socket."""
        call._ws = None  # tells the reader the close is ours
        flushed = call._discard_queue()
        call._fired(fault, tick=call._next_tick, socket=call.media_sockets)
        if fault == "acs-drop":
            call._media_dropped = True
        ws.transport.abort()
        reader = call._reader
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        call._log(
            "media_dropped",
            {
                "socket": call.media_sockets,
                "flushed_samples": flushed,
                "code": None if ws.close_code is None else int(ws.close_code),
            },
        )
        if fault == "acs-drop":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), MEDIA_DROP_END_S / self.speed)
            if not call._ending:
                await self._end(call, "media_dropped")
            return
        await asyncio.sleep(RECONNECT_GAP_S / self.speed)
        if not call._ending:
            await self._start_media(call, {}, reconnect=True)

    async def _read_media(self, call: FakeCall, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                call._on_outbound(message)
        except ConnectionClosed:
            pass
        call.media_close_code = ws.close_code
        if call._ending or call._media_stopping or call._ws is not ws:
            return  # closed by the fake itself (hang-up, stop, or a fault)
        # The bridge closed the socket without a hang-up (yet): stop the clock and
        # give it a moment to hang up before calling it a media failure.
        call._log("media_closed_by_bridge", {"code": ws.close_code})
        if call._sender is not None:
            call._sender.cancel()
        call._ws = None
        self._spawn(self._media_lost(call), "media-lost")

    async def _media_lost(self, call: FakeCall) -> None:
        """The bridge closed the media socket: a hang-up should follow shortly.

        Bridges often close the socket first and then hang up; that is a clean
        ``bridge_hung_up``. Only a call left dangling gets ``MediaStreamingFailed``
        and ends as ``media_failed``.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), MEDIA_FAILURE_GRACE_S)
        if not call._ending:
            await self._media_failed(call, "streamConnectionInterrupted", grace_s=0.0)

    async def _media_failed(
        self, call: FakeCall, details: str, *, grace_s: float | None = None
    ) -> None:
        """Post ``MediaStreamingFailed`` (8581, §3); end the call if the bridge does not.

        The bridge gets ``grace_s`` (default :data:`MEDIA_FAILURE_GRACE_S`) wall
        seconds to hang up; either way the call ends as ``media_failed``.
        """
        call._media_failed = True
        await self._post_event(
            call,
            "MediaStreamingFailed",
            self._media_update("mediaStreamingFailed", details),
            result={
                "code": 400,
                "subCode": 8581,
                "message": "Action failed, Transport url is not valid or web socket server "
                "is not operational.",
            },
        )
        wait_s = MEDIA_FAILURE_GRACE_S if grace_s is None else grace_s
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), wait_s)
        if not call._ending:
            await self._end(call, "media_failed")

    async def _stop_streaming(self, call: FakeCall, body: Mapping[str, Any]) -> None:
        if call._ws is None:
            return
        await self._close_media(call)
        context = body.get("operationContext")
        uri = body.get("operationCallbackUri")
        await self._post_event(
            call,
            "MediaStreamingStopped",
            self._media_update("mediaStreamingStopped", "subscriptionStopped"),
            operation_context=context if isinstance(context, str) else None,
            uri=uri if isinstance(uri, str) else None,
        )
        self._idle_hangup(call, self.hangup_after_audio_s)

    async def _stop_sender(self, call: FakeCall) -> None:
        sender = call._sender
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _close_media(self, call: FakeCall) -> None:
        """Stop the clock and close the media socket with 1000 (normal closure)."""
        call._media_stopping = True
        await self._stop_sender(call)
        ws, call._ws = call._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000), 5)
            reader = call._reader
            if reader is not None and reader is not asyncio.current_task():
                await asyncio.gather(reader, return_exceptions=True)
            call.media_close_code = ws.close_code
            call._log("media_closed", {"code": ws.close_code})

    async def _end(self, call: FakeCall, reason: str) -> None:
        """End ``call`` once, in the order live ACS is modelled to use.

        Caller hang-up: stop the media clock, post ``CallDisconnected``, close the
        media socket. Bridge hang-up: close the media socket, then post
        ``CallDisconnected``. A second call waits for the first to finish.
        """
        if call._ending:
            await call.ended.wait()
            return
        call._ending = True
        call._log("hangup", {"by": _HANGUP_BY.get(reason, "fake"), "reason": reason})
        if call._media_failed and reason == "bridge_hung_up":
            reason = "media_failed"  # the root cause, not the bridge's reaction to it
        if call._media_dropped:
            reason = "media_dropped"  # acs-drop: whoever ends it, no callback is posted
        call.end_reason = reason
        current = asyncio.current_task()
        for task in (call._ring_task, call._idle_task, call._play_task):
            if task is not None and task is not current:
                task.cancel()
        answered = call.call_connection_id is not None
        caller_split = reason == "caller_hung_up" and answered
        if reason in ("bridge_hung_up", "media_failed"):
            await self._close_media(call)
            await self._post_event(call, "CallDisconnected", result=_disconnect_result(reason))
        elif caller_split and "acs-close-first" in call.faults:
            call._fired("acs-close-first")
            await self._close_media(call)
            await asyncio.sleep(HANGUP_SPLIT_S / self.speed)
            await self._post_event(call, "CallDisconnected", result=_disconnect_result(reason))
        elif answered and reason not in ("answer_failed", "media_dropped"):
            await self._stop_sender(call)
            await self._post_event(call, "CallDisconnected", result=_disconnect_result(reason))
            if caller_split and "acs-disconnect-first" in call.faults:
                call._fired("acs-disconnect-first")
                await asyncio.sleep(HANGUP_SPLIT_S / self.speed)
            await self._close_media(call)
        else:
            await self._close_media(call)
        call.state = "disconnected"
        call._log("ended", {"reason": reason})
        call.ended.set()


_HANGUP_BY = {"caller_hung_up": "caller", "bridge_hung_up": "bridge"}


def _disconnect_result(reason: str) -> dict[str, Any]:
    messages = {
        "caller_hung_up": "The call was ended by the remote participant.",
        "bridge_hung_up": "The call was ended by the application.",
        "media_failed": "The call was ended after media streaming failed.",
    }
    return {"code": 200, "subCode": 0, "message": messages.get(reason, "The call ended.")}


def _resample_pcm(pcm: bytes, in_hz: int, out_hz: int) -> bytes:
    """PCM16LE mono from ``in_hz`` to ``out_hz`` (soxr, the project's quality reference)."""
    if in_hz == out_hz or not pcm:
        return pcm
    import soxr  # only when a rate conversion is actually needed

    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, in_hz, out_hz)
    return np.asarray(out, dtype="<i2").tobytes()


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``voicebridge fake-acs``."""
    parser.add_argument("--webhook", required=True, help="the bridge's Event Grid webhook URL")
    parser.add_argument(
        "--caller-audio", required=True, type=Path, help="what the caller says: 16-bit WAV"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port for REST/JWKS (default: any)")
    parser.add_argument("--speed", type=float, default=1.0, help="media clock scale (default 1)")
    parser.add_argument(
        "--access-key", default=None, help="base64 access key the bridge signs with (default: new)"
    )
    parser.add_argument(
        "--resource-id", default=None, help="immutable resource id = JWT audience (default: new)"
    )
    parser.add_argument(
        "--hangup-after", type=float, default=1.0, help="caller stays this long after audio (s)"
    )
    parser.add_argument(
        "--schema", choices=("eventgrid", "cloudevents"), default="eventgrid", help="event schema"
    )
    parser.add_argument(
        "--validate", action="store_true", help="run the subscription handshake first"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up after this many wall seconds"
    )
    parser.add_argument("--out", type=Path, default=None, help="directory for heard.wav")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=ARG]",
        help="inject an acs-* fault (repeatable): "
        + ", ".join(info.usage for info in FAULTS.values() if info.target == "acs"),
    )


def _read_wav(path: Path) -> tuple[bytes, int]:
    """Mono PCM16LE and its rate from a 16-bit WAV (stereo is averaged)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        channels, rate = wav.getnchannels(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).round().astype("<i2")
    return samples.tobytes(), rate


def _write_wav(path: Path, samples: npt.NDArray[np.int16], rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


async def _cli_main(args: argparse.Namespace) -> int:
    faults = parse_faults(args.fault)
    if faults.voicelive:
        raise ValueError(f"not fake ACS faults: {', '.join(faults.voicelive)}")
    pcm, rate = _read_wav(args.caller_audio)
    if rate not in (16000, 24000):
        pcm, rate = _resample_pcm(pcm, rate, 16000), 16000
    fake = FakeAcs(
        access_key=args.access_key,
        resource_id=args.resource_id,
        acs_rate=rate,
        speed=args.speed,
        hangup_after_audio_s=args.hangup_after,
        faults=faults.acs,
    )
    await fake.start(args.host, args.port)
    try:
        print(f"fake ACS at {fake.endpoint}")
        print(f"  connection string: {fake.connection_string}")
        print(f"  JWT audience (resource id): {fake.resource_id}")
        print(f"  JWKS: {fake.jwks_url}")
        if args.validate:
            check = await fake.validate_subscription(args.webhook, schema=args.schema)
            print(f"subscription validation: status {check['status']}, ok={check['ok']}")
            if not check["ok"]:
                return 1
        call = await fake.place_call(webhook_url=args.webhook, caller_pcm=pcm, schema=args.schema)
        print(f"IncomingCall posted: HTTP {call.incoming_call_status}")
        try:
            await call.wait_ended(args.timeout)
        except TimeoutError:
            print(f"the call did not end within {args.timeout:g} s; hanging up")
            await call.hang_up()
        _print_summary(call)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            _write_wav(args.out / "heard.wav", call.heard, call.acs_rate)
            print(f"wrote {args.out / 'heard.wav'}")
        ok = call.end_reason in ("caller_hung_up", "bridge_hung_up") and not call.errors
        return 0 if ok and not fake.internal_errors else 1
    finally:
        await fake.stop()


def _print_summary(call: FakeCall) -> None:
    heard_s = call.samples_heard / call.acs_rate
    print(f"call {call.call_connection_id}: ended ({call.end_reason}) at {call.now():.2f} s")
    print(
        f"  caller audio sent: {call.caller_samples_sent / call.acs_rate:.2f} s "
        f"in {call.frames_sent} frames ({call.silent_frames_sent} silent)"
    )
    print(
        f"  bridge audio: {call.received_frames} frames, "
        f"{call.received_samples / call.acs_rate:.2f} s received, {heard_s:.2f} s heard"
    )
    starts = ", ".join(f"{t:.2f}" for t in call.first_audio_heard_s) or "none"
    print(f"  utterances started at: {starts}")
    print(f"  StopAudio: {len(call.stop_audio)}; underrun frames: {call.underrun_frames}")
    callbacks = ", ".join(f"{kind}={status}" for _, kind, status in call.callbacks_posted)
    print(f"  callbacks: {callbacks or 'none'}")
    for error in call.errors[:10]:
        print(f"  protocol error: {error}")


def run(args: argparse.Namespace) -> int:
    """``voicebridge fake-acs``: place one call to ``--webhook`` and report."""
    try:
        return asyncio.run(_cli_main(args))
    except (OSError, ValueError, wave.Error) as exc:
        print(f"fake-acs: {exc}")
        return 2
