"""The per-call media relay: thin async pumps around one :class:`CallBridge`.

* :mod:`~voicebridge.relay.pumps` — the three loops (ACS pump, Voice Live pump, pacer)
  and the pacer's wake-up contract;
* :mod:`~voicebridge.relay.supervisor` — :meth:`MediaRelay.run`: supervision, Voice
  Live reconnects, the ACS socket swap, limits, and the call's :class:`CallOutcome`;
* :mod:`~voicebridge.relay.tracing` — the call's spans from the core's events;
* :mod:`~voicebridge.relay.prompts` — the shipped prompts (apology, goodbye).

:class:`MediaRelay` holds one call's state and the paths every task shares: the single
Voice Live send path and the handling of the core's events. It gets what it needs from
the service as a :class:`CallServices`, never the whole app context.

Sends to Voice Live come from several tasks, so they go through one lock that covers
draining the core's outbox *and* sending it: order is preserved (``session.update``
before any audio) and writes never overlap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import Message

from voicebridge import observations
from voicebridge.calls import Call, CallOutcome
from voicebridge.clock import Clock
from voicebridge.config import Settings
from voicebridge.core.bridge import (
    CallBridge,
    Control,
    DtmfConfig,
    Greeting,
    GuardLimits,
    History,
    NoInputConfig,
    PlayoutConfig,
    Rates,
    Reprompt,
    Timeouts,
    UplinkConfig,
)
from voicebridge.core.context import context_text
from voicebridge.core.events import (
    AcsMalformed,
    AgentTranscript,
    BridgeEvent,
    Dtmf,
    GuardBlocked,
    NoInput,
    ReplaceReason,
    SessionReady,
    SessionStarted,
    ToolRequested,
    UserTranscript,
    VoiceLiveError,
    VoiceLiveMalformed,
    as_record,
)
from voicebridge.relay.control import CallControl
from voicebridge.relay.prompts import prompt_pcm
from voicebridge.relay.pumps import AcsWatch, PacerAlarm
from voicebridge.relay.tracing import CallTracing
from voicebridge.stats import ServiceStats
from voicebridge.telemetry import Telemetry
from voicebridge.voicelive.session import SEND_ERRORS, OpenSession, session_config

if TYPE_CHECKING:
    from voicebridge.cluster.node import ClusterNode

__all__ = [
    "CallServices",
    "MediaRelay",
    "MediaSocket",
    "OpenVoiceLive",
    "bridge_for",
    "prompt_pcm",
]

log = logging.getLogger("voicebridge.relay")


class MediaSocket(Protocol):
    """The media socket as the relay uses it: starlette's ``WebSocket`` (ACS), or the
    browser phone's wrapper of one (:class:`voicebridge.phone.socket.PhoneSocket`)."""

    async def receive(self) -> Message: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class OpenVoiceLive(Protocol):
    """Connects one Voice Live session for a call (``voicelive.session.open_session``
    with the service's settings and credential bound), or raises ``UpstreamUnavailable``."""

    def __call__(
        self, *, call_id: str, conversation_id: str | None, timeout_s: float | None
    ) -> Awaitable[OpenSession]: ...


@dataclass(frozen=True, slots=True)
class CallServices:
    """What a relay needs from the service (``routes/media.py`` builds it from the
    :class:`~voicebridge.app.AppContext`)."""

    settings: Settings
    stats: ServiceStats
    telemetry: Telemetry
    clock: Clock
    open_session: OpenVoiceLive
    #: Hang up through Call Automation (idempotent, never raises).
    hang_up: Callable[[Call], Awaitable[None]]
    #: ``connected`` / ``gone`` / ``unknown`` (or another ACS state).
    call_state: Callable[[Call], Awaitable[str]]
    #: Transfer the call to a phone number or ACS user (Call Automation); raises on failure.
    transfer: Callable[[Call, str], Awaitable[None]]
    #: Many nodes: where the transcript and conversation id go for a takeover.
    cluster: ClusterNode | None = None


def bridge_for(s: Settings, *, context: str | None = None) -> CallBridge:
    """The core of one call, configured from the settings (the call's profile's);
    ``context``: a system message for the start of the conversation (agent mode's
    outbound context, :mod:`voicebridge.core.context`)."""
    return CallBridge(
        session_config=session_config(s),
        rates=Rates(
            acs_hz=s.acs_audio_rate,
            voicelive_in_hz=s.voicelive_audio_rate,
            voicelive_out_hz=s.voicelive_audio_rate,
        ),
        uplink=UplinkConfig(max_buffered_ms=int(s.reconnect_buffer_s * 1000)),
        playout=PlayoutConfig(lead_ms=s.pacing_lead_ms, frame_ms=s.acs_out_frame_ms),
        greeting=Greeting(
            mode=s.greeting_mode, text=s.greeting_text, instructions=s.greeting_instructions
        ),
        history=History(replay=s.mode == "model"),
        timeouts=Timeouts(
            session_update_s=s.session_update_timeout_s,
            response_start_s=s.response_start_timeout_s,
            response_stall_s=s.response_stall_timeout_s,
            expiry_margin_s=s.session_expiry_margin_s,
        ),
        limits=GuardLimits(max_text_bytes=s.max_text_bytes, max_message_bytes=s.max_message_bytes),
        control=Control(
            dtmf=DtmfConfig(
                inter_digit_timeout_s=s.dtmf_inter_digit_timeout_s,
                max_digits=s.dtmf_max_digits,
                actions=s.dtmf_action_map,
            ),
            no_input=NoInputConfig(
                reprompt_s=s.no_input_reprompt_s, max_reprompts=s.no_input_max_reprompts
            ),
            reprompt=Reprompt(text=s.no_input_prompt or ""),
        ),
        context=context,
    )


@dataclass(slots=True)
class PendingReconnect:
    """A new session is connected but has not confirmed its configuration yet."""

    at_s: float  # call time of the loss (media seconds since the relay started)
    reason: ReplaceReason
    attempts: int
    lost_at: float  # real time of the first loss of this gap
    old_conversation: str | None


class MediaRelay:
    """Runs one call's media until the call ends; see the package docstring."""

    def __init__(self, services: CallServices, call: Call, websocket: MediaSocket) -> None:
        self.services = services
        # The call's profile's settings: session, greeting, tools, limits (the service's
        # own when the call has none).
        self.settings = call.settings or services.settings
        self.clock = services.clock
        self.call = call
        self.ws = websocket
        agent_context = self.settings.mode == "agent" and call.context
        self.bridge = bridge_for(
            self.settings, context=context_text(call.context) if agent_context else None
        )
        self.control = CallControl(self)
        if call.resume:  # taken over from another node mid-call
            self.bridge.resume(call.history)
        self.session: OpenSession | None = None
        self.voicelive_close_code: int | None = None
        self.reconnects: list[dict[str, Any]] = []
        self.pending_reconnect: PendingReconnect | None = None
        self.tracing = CallTracing(services.telemetry, call)
        self.alarm = PacerAlarm()
        self.sockets = 1
        self._started = self.clock.real_now()
        self.acs = AcsWatch(self._started)
        self._vl_lock = asyncio.Lock()
        self._new_socket: asyncio.Future[MediaSocket] = asyncio.get_running_loop().create_future()
        self._released: dict[int, asyncio.Event] = {}
        #: Sees every core event after the relay (the browser phone's side channel).
        self.observer: Callable[[BridgeEvent], None] | None = None

    async def run(self) -> CallOutcome:
        """Relay until the call ends; return the outcome."""
        # imported here: the supervisor imports this module (MediaRelay, PendingReconnect)
        from voicebridge.relay.supervisor import Supervisor

        return await Supervisor(self).run()

    def call_time(self) -> float:
        """Seconds of media time since the relay started (for reports)."""
        elapsed = self.clock.real_now() - self._started
        return elapsed / self.clock.real_seconds(1.0)

    @property
    def voicelive_open(self) -> bool:
        return self.session is not None

    # ------------------------------------------------------------------ ACS sockets

    def attach(self, websocket: MediaSocket) -> asyncio.Event:
        """A new media socket for this call (ACS reconnected): it replaces the current
        one. Returns an event set once the relay no longer uses it."""
        released = asyncio.Event()
        self._released[id(websocket)] = released
        if self._new_socket.done():  # two replacements at once: the newest wins
            self.release(self._new_socket.result())
            self._new_socket = asyncio.get_running_loop().create_future()
        self._new_socket.set_result(websocket)
        return released

    def new_socket(self) -> asyncio.Future[MediaSocket]:
        """Done once a new socket is attached (take it with :meth:`take_new_socket`)."""
        return self._new_socket

    def take_new_socket(self) -> MediaSocket:
        new = self._new_socket.result()
        self._new_socket = asyncio.get_running_loop().create_future()
        return new

    def release(self, websocket: MediaSocket) -> None:
        """The relay no longer uses ``websocket``: its route handler may return."""
        released = self._released.pop(id(websocket), None)
        if released is not None:
            released.set()

    def release_all(self) -> None:
        self.release(self.ws)
        for released in self._released.values():
            released.set()

    # ------------------------------------------------------------------ shared paths

    async def send_voicelive(self) -> None:
        """Send what the core queued for Voice Live: the single send path."""
        session = self.session
        if session is None:
            return
        async with self._vl_lock:
            messages = self.bridge.voicelive_to_send()  # wire text, appends included
            send = session.send_text
            for i, text in enumerate(messages):
                try:
                    await send(text)
                except SEND_ERRORS:
                    # The socket is going; the Voice Live pump sees it close and
                    # reconnects. Caller audio not sent waits for the next session.
                    self.bridge.unsent(messages[i:])
                    return

    def drain_events(self) -> None:
        for event in self.bridge.events_received():
            self.on_event(event)

    def on_event(self, event: BridgeEvent) -> None:
        """One core event: the conversation log, the few the relay acts on, tracing."""
        self.call.log.write_event(event)
        match event:
            case AcsMalformed() | VoiceLiveMalformed() | VoiceLiveError() | GuardBlocked():
                log.warning("call %s: %s %s", self.call.label, event.name, _brief(event))
            case UserTranscript() | AgentTranscript() if self.services.cluster is not None:
                role = "user" if isinstance(event, UserTranscript) else "assistant"
                self.services.cluster.said(self.call, role, event.text)
            case SessionStarted():
                if event.conversation_id:
                    if self.services.cluster is not None and (
                        event.conversation_id != self.call.conversation_id
                    ):
                        self.services.cluster.conversation(self.call, event.conversation_id)
                    self.call.conversation_id = event.conversation_id
                if self.settings.mode == "agent":
                    observations.observe("agent_conversation_id", field=event.conversation_id_field)
            case SessionReady() if self.pending_reconnect is not None:
                self.reconnected()
            case ToolRequested():
                self.control.requested(event)
            case Dtmf() if event.kind != "ignored":
                self.alarm.queued(self.bridge.next_acs_due())  # StopAudio: the key interrupts
                if event.kind == "action":
                    self.control.action(event.action)
            case NoInput():
                log.info(
                    "call %s: silent caller: %s %d", self.call.label, event.action, event.count
                )
        if self.tracing.enabled:
            self.tracing.on_event(event)
        if self.observer is not None:
            self.observer(event)

    def reconnected(self) -> None:
        """The new session confirmed its configuration: the gap is over."""
        pending, self.pending_reconnect = self.pending_reconnect, None
        assert pending is not None
        if self.settings.mode == "agent":
            kept = bool(pending.old_conversation) and (
                self.bridge.conversation_id == pending.old_conversation
            )
        else:
            kept = True  # the transcript so far was replayed as conversation items
        entry = {
            "at_s": pending.at_s,
            "reason": pending.reason,
            "gap_ms": round((self.clock.real_now() - pending.lost_at) * 1000.0, 1),
            "attempts": pending.attempts,
            "conversation_kept": kept,
        }
        self.reconnects.append(entry)
        self.services.stats.reconnected()
        self.tracing.reconnected(entry)
        log.info("call %s: Voice Live reconnected after %.0f ms", self.call.label, entry["gap_ms"])
        self.call.log.write("voicelive_reconnected", **entry)


def _brief(event: BridgeEvent) -> str:
    return ", ".join(f"{k}={v}" for k, v in as_record(event).items() if k != "event")[:300]
