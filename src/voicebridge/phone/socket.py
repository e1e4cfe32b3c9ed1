"""The browser's media socket as the relay sees it, and the side channel to the page.

:class:`PhoneSocket` wraps the accepted starlette ``WebSocket`` and is what the
:class:`~voicebridge.relay.MediaRelay` reads and writes (a
:class:`~voicebridge.relay.MediaSocket`): the page speaks the ACS media protocol, so
every ACS message goes to the core unchanged and the relay, core, guard and pacer are
the ones a phone call goes through. The wrapper adds only what a browser needs and ACS
does not have:

* **the caller leaving.** ACS says ``CallDisconnected``; a page says
  ``{"kind": "phone.hangup"}`` (its hang-up button, or ``pagehide`` when the tab closes)
  or just closes the socket (a dropped connection). Either is the caller hanging up:
  ``call.outcome`` = ``caller_hung_up`` and ``call.disconnected`` is set, so the relay
  ends the call at once (no ``ACS_RECONNECT_GRACE_S`` wait: a page never reconnects).
  The close code is kept in the conversation log (``phone_closed``).
* **bad input from a page** is logged (the first few of each kind per call) and counted
  in ``/api/stats`` counters, never raised: a frame over :data:`MAX_FRAME_CHARS`
  (``phone_oversized``; frames over ``MAX_MEDIA_MESSAGE_BYTES`` never get here: uvicorn
  closes the socket with 1009 first), a ``phone.*`` message that is not JSON
  (``phone_malformed``) or of a kind the bridge does not know
  (``phone_unknown_kinds``). Anything else goes to the core, which counts what it
  cannot parse (``acs_malformed``, ``acs_unknown_kinds``) like any ACS frame.
* **the side channel** (:class:`SideChannel`): what the page shows besides audio —
  transcripts of both sides and the turn state — as JSON text messages of kinds the ACS
  protocol does not use (``phone.*``), built from the relay's core events (its
  ``observer``). They never enter the ACS path: only this wrapper sends them.

Writes never overlap: the pacer's audio and the side channel share one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from typing import Any

import orjson
from starlette.types import Message
from starlette.websockets import WebSocket

from voicebridge.calls import Call, CallOutcome
from voicebridge.core.events import (
    AgentTranscript,
    BargeIn,
    BridgeEvent,
    CallerSpeechStopped,
    Dtmf,
    NoInput,
    ResponseEnded,
    ResponseStarted,
    SessionLost,
    SessionReady,
    ToolRequested,
    UserTranscript,
)

log = logging.getLogger(__name__)

#: The subprotocol the page asks for (with its token as a second one) and the bridge picks.
SUBPROTOCOL = "voicebridge.phone.v1"
#: The page's token rides in the subprotocol list as ``vbtoken.<PHONE_TOKEN>``.
TOKEN_PREFIX = "vbtoken."
#: The longest message a page may send: a 20 ms frame at 24 kHz is ~1.4 KB of JSON.
MAX_FRAME_CHARS = 16 * 1024
#: How a page's own messages begin (the page writes ``kind`` first): cheap to test on
#: every frame, so audio is parsed once, by the core.
PHONE_KIND = '{"kind":"phone.'
#: Log lines per kind of bad input per call; the rest are only counted.
LOGGED_PER_KIND = 3
#: Side-channel messages held for a page that reads slowly (the oldest go first).
SIDE_QUEUE = 256


class PhoneSocket:
    """The page's socket for :class:`~voicebridge.relay.MediaRelay` (module docstring)."""

    def __init__(self, websocket: WebSocket, call: Call, counters: Counter[str]) -> None:
        self.ws = websocket
        self.call = call
        self.counters = counters  # the service's (ServiceStats.counters): /api/stats
        self.close_code: int | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._logged: Counter[str] = Counter()
        self.side = SideChannel(self)

    # ------------------------------------------------------------------ reading

    async def receive(self) -> Message:
        """The next message for the core (ACS protocol), or the disconnect; the page's
        own messages and bad frames are handled here and not passed on."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self._left(int(message.get("code") or 1005), message.get("reason") or "")
                return message
            text = message.get("text")
            size = len(text) if text is not None else len(message.get("bytes") or b"")
            if size > MAX_FRAME_CHARS:
                self._bad("phone_oversized", f"a {size}-byte frame (limit {MAX_FRAME_CHARS})")
                continue
            if text is not None and text.startswith(PHONE_KIND):
                self._own(text)
                continue
            return message

    def _own(self, text: str) -> None:
        """A message of the page's own (``phone.*``)."""
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._bad("phone_malformed", "a phone.* message that is not JSON")
            return
        kind = msg.get("kind") if isinstance(msg, dict) else None
        if kind == "phone.hangup":
            log.info("call %s: the caller hung up (the page's hang-up)", self.call.label)
            self.call.log.write("phone_hangup")
            self._caller_gone()
        else:
            self._bad("phone_unknown_kinds", f"an unknown kind {str(kind)[:40]!r}")

    def _left(self, code: int, reason: str) -> None:
        """The page closed the socket (the tab, the button) or the connection dropped."""
        self._closed = True
        self.close_code = code
        if not self.call.disconnected.is_set():
            log.info(
                "call %s: the page's socket closed (%d%s): the caller is gone",
                self.call.label,
                code,
                f" {reason[:60]}" if reason else "",
            )
        self.call.log.write("phone_closed", code=code)
        self._caller_gone()

    def _caller_gone(self) -> None:
        call = self.call
        if not call.disconnected.is_set():
            call.outcome = call.outcome or CallOutcome.CALLER_HUNG_UP
            call.disconnected.set()

    def _bad(self, counter: str, what: str) -> None:
        self.counters[counter] += 1
        self._logged[counter] += 1
        n = self._logged[counter]
        if n <= LOGGED_PER_KIND:
            more = " (further ones are only counted)" if n == LOGGED_PER_KIND else ""
            log.warning("call %s: the page sent %s: ignored%s", self.call.label, what, more)

    # ------------------------------------------------------------------ writing

    async def send_text(self, data: str) -> None:
        """Send one message (the pacer's audio, a side-channel message). A socket the page
        closed is not an error here: the read side sees the disconnect and ends the call."""
        if self._closed:
            return
        async with self._lock:
            try:
                await self.ws.send_text(data)
            except Exception as exc:  # closed under us (uvicorn raises on a closed socket)
                self._closed = True
                log.debug("phone send after close: %s", type(exc).__name__)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            with contextlib.suppress(Exception):  # the page may be gone already
                await self.ws.close(code=code, reason=reason)

    async def finish(self, outcome: CallOutcome) -> None:
        """The call is over: tell the page why, then close (1000, the outcome as reason)."""
        await self.side.flush()
        await self.send_text(_dumps({"kind": "phone.ended", "outcome": str(outcome)}))
        await self.close(1000, str(outcome))


class SideChannel:
    """Core events as ``phone.*`` messages for the page, sent by one task (:meth:`run`)
    so the relay's event handling never waits on the page."""

    def __init__(self, socket: PhoneSocket) -> None:
        self.socket = socket
        self._queue: deque[str] = deque(maxlen=SIDE_QUEUE)
        self._wake = asyncio.Event()

    def send(self, message: dict[str, Any]) -> None:
        self._queue.append(_dumps(message))
        self._wake.set()

    def on_event(self, event: BridgeEvent) -> None:
        """The relay's ``observer``: what the page shows of ``event``, if anything."""
        message = page_message(event)
        if message is not None:
            self.send(message)

    async def run(self) -> None:
        """Forever: send what is queued, in order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._queue:
            await self.socket.send_text(self._queue.popleft())


def page_message(event: BridgeEvent) -> dict[str, Any] | None:
    """The side-channel message for a core event (None: nothing to show). Transcripts
    of both sides and the turn state; never audio, never keypad digits (a ``Dtmf``
    event carries none)."""
    match event:
        case UserTranscript():
            return {"kind": "phone.transcript", "role": "user", "text": event.text}
        case AgentTranscript():
            return {"kind": "phone.transcript", "role": "agent", "text": event.text}
        case SessionReady():
            return _turn("listening")
        case BargeIn():  # every speech_started: the caller is talking (and playback stops)
            return _turn("caller_speaking", dropped_samples=event.dropped_samples)
        case CallerSpeechStopped():
            return _turn("thinking", audio_end_ms=event.audio_end_ms)
        case ResponseStarted():
            return _turn("responding")
        case ResponseEnded():
            return _turn("listening", status=event.status)
        case ToolRequested():
            return _turn("tool", tool=event.tool)
        case Dtmf() if event.kind != "ignored":
            return _turn("keypad", dtmf=event.kind, length=event.length)
        case NoInput():
            return _turn("reprompt" if event.action == "reprompt" else "giving_up")
        case SessionLost():
            return _turn("reconnecting")
    return None


def _turn(state: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "phone.turn", "state": state, **fields}


def _dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()
