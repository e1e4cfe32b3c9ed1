"""One call's Voice Live sessions: configuration, greeting, responses, timeouts, expiry.

The part of :class:`~voicebridge.core.bridge.CallBridge` that talks to Voice Live
(protocols.md §7). Everything it sends goes through its
:class:`~voicebridge.core.guard.OutboundGuard`, which asks its
:class:`~voicebridge.core.responses.ResponseState`; both are reset for each new
session, while the user-turn count and the conversation go on.

* :meth:`VoiceLiveSession.read` parses each frame (the codec); frames that are not
  JSON objects are counted, and :data:`MAX_UNREADABLE_IN_A_ROW` of them in a row make
  the session :attr:`~VoiceLiveSession.unusable` (the socket itself is bad).
* ``session.created`` queues the one ``session.update`` and, in model mode on a
  replacement session, replays the conversation so far (agent mode keeps it
  server-side under the conversation id); ``session.updated`` sends the greeting,
  once per call.
* ``context`` (an outbound call's data for the agent, already plain ``key: value``
  text): one ``system`` message item right after the call's first ``session.update``,
  through the guard like everything else — the agent-mode way to hand it over (an
  agent takes no ``instructions``; model mode appends it to them instead). Sent once
  per call: an agent keeps it in the conversation across reconnects.
* :meth:`VoiceLiveSession.poll` says when the session should be replaced:
  ``session_update_timeout``, ``response_stalled``, ``response_timeout`` (a committed
  turn got no response even after one ``response.create`` of our own, the nudge) or
  ``session_expiring`` (:meth:`~VoiceLiveSession.expiring`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voicebridge.core import voicelive as vl
from voicebridge.core.accounting import Accounting
from voicebridge.core.control import KeypadSecrets
from voicebridge.core.events import (
    AgentTranscript,
    BridgeEvent,
    GuardBlocked,
    HistoryReplayed,
    ReplaceReason,
    ResponseEnded,
    ResponseNudged,
    ResponseStarted,
    SessionLost,
    SessionReady,
    SessionStarted,
    TurnAnomaly,
    UserTranscript,
    VoiceLiveError,
    VoiceLiveMalformed,
)
from voicebridge.core.guard import GuardLimits, OutboundGuard
from voicebridge.core.responses import ResponseState, Trigger
from voicebridge.errors import GuardRejected, IllegalTransition, RemoteProtocolError

__all__ = [
    "GREETING_MODES",
    "MAX_UNREADABLE_IN_A_ROW",
    "Greeting",
    "History",
    "Timeouts",
    "VoiceLiveSession",
]

GREETING_MODES = ("llm", "text", "none")

#: Voice Live frames in a row that are not JSON objects before the socket itself is
#: taken for bad (:attr:`VoiceLiveSession.unusable`).
MAX_UNREADABLE_IN_A_ROW = 50


@dataclass(frozen=True, slots=True)
class Greeting:
    #: "llm" (the model greets, optionally with ``instructions``), "text" (``text``
    #: spoken verbatim) or "none"
    mode: str = "llm"
    text: str = ""
    instructions: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in GREETING_MODES:
            raise ValueError(f"greeting must be one of {GREETING_MODES}, not {self.mode!r}")


@dataclass(frozen=True, slots=True)
class History:
    #: replay the conversation into a replacement session (model mode: a new session
    #: knows nothing; agent mode keeps it server-side under the conversation id)
    replay: bool = True
    max_items: int = 40


@dataclass(frozen=True, slots=True)
class Timeouts:
    session_update_s: float = 5.0  # session.created -> session.updated
    response_start_s: float = 4.0  # committed turn -> response.created (then one nudge)
    response_stall_s: float = 8.0  # an active response's silence
    expiry_margin_s: float = 30.0  # replace the session this long before expires_at


class VoiceLiveSession:
    """The Voice Live side of one call, across its sessions; see the module docstring."""

    def __init__(
        self,
        session_config: Mapping[str, Any],
        voicelive_out: list[str],
        accounting: Accounting,
        emit: Callable[[BridgeEvent], None],
        *,
        greeting: Greeting | None = None,
        history: History | None = None,
        timeouts: Timeouts | None = None,
        limits: GuardLimits | None = None,
        cancel_on_barge_in: bool | None = None,
        context: str | None = None,
    ) -> None:
        self.session_config = dict(session_config)
        self._context = context or None  # sent once, after the first session.update
        self._out = voicelive_out  # the bridge's Voice Live outbox (wire text)
        self._accounting = accounting
        self._emit = emit
        self._greeting = greeting or Greeting()
        self._history = history or History()
        self._timeouts = timeouts or Timeouts()
        limits = limits or GuardLimits()
        if cancel_on_barge_in is None:
            # With interrupt_response the service cancels by itself; a second cancel
            # from us would race it and come back as an error event (protocols §7).
            td = self.session_config.get("turn_detection")
            interrupts = isinstance(td, Mapping) and bool(td.get("interrupt_response", True))
            cancel_on_barge_in = not interrupts
        self.cancel_on_barge_in = cancel_on_barge_in
        self.responses = ResponseState()
        self.guard = OutboundGuard(
            self.responses,
            max_text_bytes=limits.max_text_bytes,
            max_message_bytes=limits.max_message_bytes,
        )
        self.transcript: deque[tuple[str, str]] = deque(maxlen=self._history.max_items)
        self.keypad = KeypadSecrets()  # keypad entries, blanked out of logged transcripts
        self.sessions = 0
        self.session_id: str | None = None
        self.conversation_id: str | None = None
        self.expires_at: float | None = None  # epoch seconds
        self.unreadable_run = 0  # frames in a row that were not JSON objects
        self._last_event_at = 0.0
        self._awaiting_update_since: float | None = None
        # A committed turn with no response yet: when it counts as unanswered.
        self._turn_deadline: float | None = None
        self._nudged = False
        self._greeted = False
        self._resumed = False  # taken over from another node: replay from the first session
        self._expiry_seen: float | None = None  # the expires_at _lifetime belongs to
        self._lifetime = 0.0

    # ------------------------------------------------------------------ frames in

    def read(self, frame: bytes | str, now: float) -> vl.ServerEvent | None:
        """One frame as the event the bridge acts on; None (counted, reported) if it
        is not a JSON object or a known event lacks what the bridge needs."""
        c = self._accounting.counters
        try:
            event = vl.loads(frame)
        except RemoteProtocolError as exc:
            self.unreadable_run += 1
            c.voicelive_malformed += 1
            self._emit(VoiceLiveMalformed(error=str(exc)))
            return None
        self.unreadable_run = 0
        c.voicelive_events_in += 1
        self._last_event_at = now
        try:
            return vl.classify(event)
        except RemoteProtocolError as exc:
            c.voicelive_malformed += 1
            self._emit(VoiceLiveMalformed(error=str(exc)))
            return None

    @property
    def unusable(self) -> bool:
        """True once :data:`MAX_UNREADABLE_IN_A_ROW` frames in a row were not JSON
        objects: the socket itself is bad, so the session should be replaced."""
        return self.unreadable_run >= MAX_UNREADABLE_IN_A_ROW

    # ------------------------------------------------------------------ session life

    def created(self, ev: vl.SessionCreated, now: float) -> None:
        """``session.created``: queue ``session.update`` (and the history replay)."""
        self.sessions += 1
        self._accounting.new_session()
        self.session_id = ev.session_id
        self.expires_at = ev.expires_at
        if ev.conversation_id:
            self.conversation_id = ev.conversation_id
        self._emit(
            SessionStarted(
                session_id=ev.session_id,
                conversation_id=ev.conversation_id,
                conversation_id_field=ev.conversation_id_field,
                agent=dict(ev.agent) if ev.agent else None,
                voice=ev.voice,
                expires_at=ev.expires_at,
            )
        )
        self.new_session()
        self.send(vl.session_update(self.session_config))
        self._awaiting_update_since = now
        if self._context is not None and not self._resumed:
            self.send(vl.message_item_create("system", self._context))
            self._context = None
        replaying = self.sessions > 1 or self._resumed
        if replaying and self._history.replay and self.transcript:
            for role, text in self.transcript:
                self.send(vl.message_item_create(role, text))
            self._emit(HistoryReplayed(items=len(self.transcript)))

    def updated(self, ev: vl.SessionUpdated) -> None:
        """``session.updated``: the configuration holds; greet once per call."""
        self._awaiting_update_since = None
        if ev.expires_at is not None:
            self.expires_at = ev.expires_at
        self._emit(SessionReady(session_id=ev.session_id, voice=ev.voice))
        greeting = self._greeting
        if self._greeted or greeting.mode == "none":
            return
        self._greeted = True
        if greeting.mode == "text":
            self.send(vl.greeting_pre_generated(greeting.text))
        else:
            self.send(vl.response_create(instructions=greeting.instructions))

    def resume(self, history: Iterable[tuple[str, str]]) -> None:
        """The call began on another node: it was greeted there, and ``history`` (the
        conversation so far, model mode) is replayed into the first session here."""
        self._greeted = True
        self._resumed = True
        self.transcript.extend(history)

    def new_session(self) -> None:
        """A new (or no) session: ``session.update`` must go first again and no
        response is active; the turn count goes on."""
        self.guard.new_session()
        self.responses.reset()

    def lost(self) -> None:
        """The session is gone (a replacement follows): its timers stop."""
        self.new_session()
        self._awaiting_update_since = None
        self._turn_deadline = None
        self.unreadable_run = 0
        self._emit(SessionLost(session_id=self.session_id))

    # ------------------------------------------------------------------ sending

    def send(self, message: Mapping[str, Any]) -> bool:
        """Queue ``message`` for Voice Live through the guard; False if refused."""
        try:
            self._out.extend(self.guard.check(message))
        except GuardRejected as exc:
            self._accounting.counters.guard_rejections += 1
            mtype = message.get("type")
            self._emit(
                GuardBlocked(type=mtype if isinstance(mtype, str) else None, reason=exc.reason)
            )
            return False
        return True

    def request_response(self, instructions: str | None = None) -> bool:
        """Ask for a response (e.g. after a tool result); the guard may refuse."""
        return self.send(vl.response_create(instructions=instructions))

    def cancel_after_barge_in(self) -> None:
        """The caller spoke over the agent: ``response.cancel`` if we are the ones to
        cancel and a response is active."""
        if self.cancel_on_barge_in and self.responses.allows(Trigger.CANCEL) is None:
            self.send(vl.response_cancel())

    # ------------------------------------------------------------------ turns and responses

    def input_committed(self, now: float) -> None:
        """A caller utterance was committed: a new turn, waiting for its response."""
        self.responses.user_turn()
        self._turn_deadline = now + self._timeouts.response_start_s
        self._nudged = False

    def user_said(self, ev: vl.TranscriptionCompleted) -> None:
        self.transcript.append(("user", ev.transcript))  # in clear: replayed to the model
        text = self.keypad.redact(ev.transcript)  # events are logged: no keypad digits
        self._emit(UserTranscript(item_id=ev.item_id, text=text))

    def agent_said(self, ev: vl.TranscriptDone) -> None:
        self.transcript.append(("assistant", ev.transcript))
        text = self.keypad.redact(ev.transcript)
        self._emit(AgentTranscript(response_id=ev.response_id, item_id=ev.item_id, text=text))

    def _respond(self, trigger: Trigger, response_id: str | None = None) -> None:
        """Apply a server fact to the response state; an illegal one is an anomaly."""
        try:
            self.responses.handle(trigger, response_id)
        except IllegalTransition as exc:
            self._accounting.counters.turn_anomalies += 1
            self._emit(TurnAnomaly(error=str(exc)))

    def response_created(self, ev: vl.ResponseCreated) -> None:
        self._turn_deadline = None
        self._accounting.counters.responses_created += 1
        self._respond(Trigger.CREATED, ev.response_id)
        self._emit(ResponseStarted(response_id=ev.response_id, turn=self.responses.turn))

    def response_done(self, ev: vl.ResponseDone) -> None:
        c = self._accounting.counters
        c.responses_done[ev.status] += 1
        self._respond(Trigger.DONE, ev.response_id)
        usage = ev.usage or vl.Usage()
        c.tokens_input_text += usage.input_text
        c.tokens_input_audio += usage.input_audio
        c.tokens_input_cached += usage.input_cached
        c.tokens_output_text += usage.output_text
        c.tokens_output_audio += usage.output_audio
        self._emit(
            ResponseEnded(
                response_id=ev.response_id,
                status=ev.status,
                reason=ev.reason,
                input_tokens=usage.input_text + usage.input_audio,
                output_tokens=usage.output_text + usage.output_audio,
            )
        )

    @property
    def ready(self) -> bool:
        """A session is open and its configuration confirmed."""
        return (
            self.sessions > 0
            and self._awaiting_update_since is None
            and self.guard.session_configured
        )

    def say(self, text: str) -> bool:
        """Speak ``text`` verbatim (a filler, an announcement): a new turn with one
        guarded response; False if a response is active (or the guard refused)."""
        if not self.responses.is_idle:
            return False
        self.responses.user_turn()
        return self.send(vl.greeting_pre_generated(text))

    def error(self, ev: vl.Error, now: float) -> None:
        self._accounting.counters.voicelive_errors[ev.code] += 1
        if self.responses.allows(Trigger.REJECTED) is None:  # it answers our request
            self._respond(Trigger.REJECTED)
        if ev.code == vl.ACTIVE_RESPONSE_ERROR and self._turn_deadline is not None:
            # Our response.create (cancel_previous=false) met a response the service has
            # already started for this turn: it is coming, so the turn is not unanswered.
            # Wait for it as long as for a stalled response before giving up on the session.
            self._turn_deadline = now + self._timeouts.response_stall_s
        self._emit(
            VoiceLiveError(
                type=ev.type,
                code=ev.code,
                message=ev.message,
                param=ev.param,
                event_id=ev.event_id,
            )
        )

    # ------------------------------------------------------------------ timers

    def poll(self, now: float) -> ReplaceReason | None:
        """The reason to replace the session at media time ``now``, or None.

        ``SESSION_UPDATE_TIMEOUT``: no ``session.updated`` in time;
        ``RESPONSE_STALLED``: a response is active but the service has sent nothing
        for ``response_stall_s``; ``RESPONSE_TIMEOUT``: a committed turn got no
        response even after one ``response.create`` of our own. A turn left unanswered
        for ``response_start_s`` is nudged once (the guard still allows one per turn).
        """
        t = self._timeouts
        if (
            self._awaiting_update_since is not None
            and now - self._awaiting_update_since > t.session_update_s
        ):
            return ReplaceReason.SESSION_UPDATE_TIMEOUT
        if self.responses.is_active and now - self._last_event_at > t.response_stall_s:
            return ReplaceReason.RESPONSE_STALLED
        deadline = self._turn_deadline
        if deadline is not None and now > deadline:
            if self._nudged:
                return ReplaceReason.RESPONSE_TIMEOUT
            self._nudged = True
            self._turn_deadline = now + t.response_start_s
            sent = self.request_response()
            self._emit(ResponseNudged(sent=sent, turn=self.responses.turn))
        return None

    def expiring(self, wall_now: float, *, playing: bool) -> bool:
        """Close to ``expires_at`` (``wall_now`` in epoch seconds): replace the session
        at a quiet moment (no response, no agent audio ``playing``), or regardless at
        the very end.

        The window is ``expiry_margin_s``, but never more than a quarter of the
        session's lifetime, so a short-lived session is not replaced over and over."""
        expires = self.expires_at
        if expires is None:
            return False
        if self._expiry_seen != expires:  # a new session (or a new expiry): its lifetime
            self._expiry_seen, self._lifetime = expires, max(0.0, expires - wall_now)
        left = expires - wall_now
        margin = min(self._timeouts.expiry_margin_s, self._lifetime / 4)
        quiet = self.responses.is_idle and not playing
        return left < margin and (quiet or left < min(5.0, margin / 2))
