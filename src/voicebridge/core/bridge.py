"""CallBridge: all the logic of one call, with no I/O (design.md §1, §4).

Adapters feed it what arrived and send what it queued:

* :meth:`CallBridge.receive_acs` takes each ACS media-socket text message;
* :meth:`CallBridge.receive_voicelive` takes each Voice Live server frame (its bytes);
* :meth:`CallBridge.voicelive_to_send` returns the guarded messages for Voice Live,
  as wire-ready text;
* :meth:`CallBridge.acs_to_send` returns the ACS messages due at ``now`` — control
  messages (``StopAudio``) at once, agent audio as frames of exactly ``frame_ms``
  (20 ms by default) paced ``lead_ms`` ahead of real time;
  :meth:`CallBridge.next_acs_due` says when to ask again;
* :meth:`CallBridge.events_received` hands over what happened, as typed events
  (:mod:`voicebridge.core.events`): what the adapter acts on and the conversation
  log keeps;
* :meth:`CallBridge.poll` runs the timers and says when to replace the session.

Times are plain floats in seconds from any monotonic clock the adapter chooses (and,
for session expiry, epoch seconds); the core never reads a clock.

The bridge is a facade over four parts, each readable and testable alone:

* :class:`~voicebridge.core.uplink.Uplink` — caller audio: resampling, held while no
  session is configured, requeued when unsent;
* :class:`~voicebridge.core.playout.Playout` — agent audio: per-response books,
  framing, pacing, barge-in, prompts;
* :class:`~voicebridge.core.session.VoiceLiveSession` — the Voice Live sessions:
  codec, guard and response state, greeting, history, timeouts, expiry;
* :class:`~voicebridge.core.accounting.Accounting` — counters, the report and the
  sample-conservation verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.accounting import Accounting
from voicebridge.core.control import (
    DtmfCollector,
    DtmfConfig,
    DtmfResult,
    NoInput,
    NoInputConfig,
    ToolCalls,
    parse_arguments,
)
from voicebridge.core.events import (
    AcsMalformed,
    AcsMetadata,
    AcsRateChanged,
    AcsRateMismatch,
    AgentTruncated,
    BargeIn,
    BridgeEvent,
    CallerSpeechStopped,
    Dtmf,
    ReplaceReason,
    ServerTool,
    ToolAnswered,
    ToolRequested,
)
from voicebridge.core.events import (
    NoInput as NoInputEvent,
)
from voicebridge.core.guard import GuardLimits
from voicebridge.core.playout import Playout, PlayoutConfig
from voicebridge.core.responses import ResponseState
from voicebridge.core.session import (
    MAX_UNREADABLE_IN_A_ROW,
    Greeting,
    History,
    Timeouts,
    VoiceLiveSession,
)
from voicebridge.core.stats import Histogram
from voicebridge.core.uplink import Uplink, UplinkConfig
from voicebridge.errors import RemoteProtocolError

__all__ = [
    "CallBridge",
    "Control",
    "DtmfConfig",
    "Greeting",
    "GuardLimits",
    "History",
    "NoInputConfig",
    "PlayoutConfig",
    "Rates",
    "Reprompt",
    "Timeouts",
    "UplinkConfig",
]


#: Event types of tools the service runs itself (agent mode): MCP calls (the SDK's
#: ``response.mcp_call*``, ``mcp_list_tools.*``) and Foundry agent calls (named
#: ``response.foundry_agent_call*`` by the how-to; not in the SDK we pin: unverified).
SERVER_TOOL_PREFIXES = ("response.mcp_call", "mcp_list_tools", "response.foundry_agent_call")


@dataclass(frozen=True, slots=True)
class Reprompt:
    """What a silent caller hears: ``text`` verbatim, else a response with ``instructions``."""

    text: str = ""
    instructions: str = (
        "The caller has said nothing for a while. In one short sentence, ask whether "
        "they are still there and how you can help."
    )


@dataclass(frozen=True, slots=True)
class Control:
    """Call-control settings of the core (keypad, silent caller)."""

    dtmf: DtmfConfig = field(default_factory=DtmfConfig)
    #: The user turn a keypad entry becomes; ``{digits}`` is replaced by the keys.
    dtmf_text: str = "The caller typed on the keypad: {digits}"
    no_input: NoInputConfig = field(default_factory=NoInputConfig)
    reprompt: Reprompt = field(default_factory=Reprompt)


@dataclass(frozen=True, slots=True)
class Rates:
    """The call's sample rates: ACS (pcm16KMono or 24K) and Voice Live in and out."""

    acs_hz: int = 16000
    voicelive_in_hz: int = 24000
    voicelive_out_hz: int = 24000


class CallBridge:
    """The sans-I/O state of one call; see the module docstring."""

    def __init__(
        self,
        *,
        session_config: Mapping[str, Any],
        rates: Rates | None = None,
        uplink: UplinkConfig | None = None,
        playout: PlayoutConfig | None = None,
        greeting: Greeting | None = None,
        history: History | None = None,
        timeouts: Timeouts | None = None,
        limits: GuardLimits | None = None,
        cancel_on_barge_in: bool | None = None,
        control: Control | None = None,
        context: str | None = None,
    ) -> None:
        """``session_config`` is the ``session`` object of the one ``session.update``;
        ``cancel_on_barge_in`` None means: only when the session does not interrupt
        responses by itself (``turn_detection.interrupt_response``); ``control``: keypad,
        silent-caller and tool settings; ``context``: a system message sent once after the
        first ``session.update`` (an outbound call's data for an agent)."""
        rates = rates or Rates()
        self.voicelive_in_hz = rates.voicelive_in_hz
        self.voicelive_out_hz = rates.voicelive_out_hz
        self._events: list[BridgeEvent] = []
        self._voicelive_out: list[str] = []  # wire text, in order
        emit = self._events.append
        self._accounting = accounting = Accounting()
        self._session = VoiceLiveSession(
            session_config,
            self._voicelive_out,
            accounting,
            emit,
            greeting=greeting,
            history=history,
            timeouts=timeouts,
            limits=limits,
            cancel_on_barge_in=cancel_on_barge_in,
            context=context,
        )
        self._uplink = Uplink(
            self._session.guard,
            self._voicelive_out,
            accounting,
            acs_hz=rates.acs_hz,
            voicelive_in_hz=rates.voicelive_in_hz,
            config=uplink,
        )
        self._playout = Playout(
            accounting,
            emit,
            acs_hz=rates.acs_hz,
            voicelive_out_hz=rates.voicelive_out_hz,
            config=playout,
        )
        self.ended = False
        self._party_left = False  # finish(): the other party had gone
        control = control or Control()
        self._dtmf = DtmfCollector(control.dtmf)
        self._dtmf_text = control.dtmf_text
        self._no_input = NoInput(control.no_input)
        self._reprompt = control.reprompt
        self._tools = ToolCalls()
        self._keyed: tuple[str, str] | None = None  # a message waiting for its turn
        self._busy = False
        self._now = 0.0  # media time of the last poll or Voice Live frame
        #: The silent-caller watchdog gave up: the relay says goodbye and hangs up.
        self.giving_up = False

    # ------------------------------------------------------------------ ACS -> Voice Live

    def receive_acs(self, text: str | bytes) -> None:
        """Take one ACS media message. Malformed input is counted and reported
        (:class:`~voicebridge.core.events.AcsMalformed`), never raised."""
        c = self._accounting.counters
        c.acs_messages_in += 1
        try:
            event = acs.parse(text)
        except RemoteProtocolError as exc:
            c.acs_malformed += 1
            self._events.append(AcsMalformed(error=str(exc)))
            return
        if type(event) is acs.AudioData:
            self._uplink.caller_audio(event)
        elif type(event) is acs.AudioMetadata:
            self._events.append(AcsMetadata(sample_rate=event.sample_rate, length=event.length))
            acs_hz = self.acs_hz
            if event.sample_rate != acs_hz and c.acs_frames_in == 0:
                self._events.append(AcsRateChanged(expected=acs_hz, got=event.sample_rate))
                self._uplink.set_acs_rate(event.sample_rate)
                self._playout.set_acs_rate(event.sample_rate)
            elif event.sample_rate != acs_hz:
                self._events.append(AcsRateMismatch(expected=acs_hz, got=event.sample_rate))
        elif type(event) is acs.DtmfData:
            c.dtmf_tones += 1
            self._key(event.data, self._now)
        else:
            c.acs_unknown_kinds += 1

    # ------------------------------------------------------------------ Voice Live -> ACS

    def receive_voicelive(self, frame: bytes | str, now: float = 0.0) -> None:
        """Take one Voice Live server frame (the WebSocket message) at time ``now``.

        A frame that is not a JSON object is counted as malformed and reported but is
        no event (and :attr:`voicelive_unusable` says when a run of them means the
        socket is bad); a malformed event is counted and reported too. Nothing is
        raised."""
        session = self._session
        ev = session.read(frame, now)
        match ev:  # the audio delta first: it is most of the traffic
            case vl.AudioDelta():
                self._playout.agent_audio(ev, now)
            case vl.SpeechStarted():
                self._no_input.caller_active(now)
                self.barge_in(now)
            case vl.ResponseCreated():
                session.response_created(ev)
                self._playout.response_created(ev.response_id)
            case vl.ResponseDone():
                self._playout.response_done(ev.response_id, now)
                session.response_done(ev)
                self._no_input.busy_until(now)
                self._respond_if_due()
            case vl.FunctionCall():
                self._function_call(ev)
            case vl.AudioDone():
                self._playout.end_stream(ev.response_id, now)
            case vl.InputCommitted():
                session.input_committed(now)
            case vl.SessionCreated():
                session.created(ev, now)
                self._uplink.release()  # caller audio held meanwhile follows the update
            case vl.SessionUpdated():
                session.updated(ev)
                # The agent can listen from now: a silent caller's silence counts from
                # here, not from the media clock's origin (without a greeting nothing
                # else would start it, and the first poll would re-prompt at once).
                self._no_input.busy_until(now)
            case vl.TranscriptionCompleted():
                session.user_said(ev)
            case vl.TranscriptDone():
                session.agent_said(ev)
            case vl.SpeechStopped():
                self._events.append(CallerSpeechStopped(audio_end_ms=ev.audio_end_ms))
            case vl.ItemTruncated():
                self._events.append(
                    AgentTruncated(item_id=ev.item_id, audio_end_ms=ev.audio_end_ms)
                )
            case vl.Error():
                session.error(ev, now)
            case vl.TranscriptDelta():
                pass  # on purpose: response.audio_transcript.done carries the whole text
            case vl.Other():
                self._accounting.counters.voicelive_other_types[ev.type] += 1
                if ev.type.startswith(SERVER_TOOL_PREFIXES):
                    self._events.append(ServerTool(type=ev.type))

    # ------------------------------------------------------------------ call control

    def _function_call(self, ev: vl.FunctionCall) -> None:
        """The model called a tool: the relay runs it (:meth:`tool_result` answers)."""
        self._accounting.counters.tool_calls += 1
        parsed = parse_arguments(ev.arguments)
        error = parsed if isinstance(parsed, str) else None
        self._tools.started(ev.call_id, ev.name)
        self._events.append(
            ToolRequested(
                call_id=ev.call_id,
                tool=ev.name,
                arguments=None if isinstance(parsed, str) else parsed,
                error=error,
            )
        )

    def tool_result(
        self, call_id: str, output: str, *, ok: bool = True, respond: bool = True
    ) -> None:
        """A tool's result (plain text; the guard coerces and caps it) goes back as a
        function-call output; with ``respond``, exactly one ``response.create`` follows
        once no response is active (a tool reply is a turn of its own)."""
        tool = self._tools.running.get(call_id, "?")
        if not ok:
            self._accounting.counters.tool_errors += 1
        self._tools.finished(call_id, respond=respond)
        self._session.send(vl.function_call_output(call_id, output))
        self._events.append(ToolAnswered(call_id=call_id, tool=tool, ok=ok, respond=respond))
        self._respond_if_due()

    def _respond_if_due(self) -> None:
        session = self._session
        if session.responses.is_idle and session.ready and self._tools.take_response():
            session.responses.user_turn()
            session.request_response()
        if session.responses.is_idle and session.ready and self._keyed is not None:
            (role, text), self._keyed = self._keyed, None
            session.responses.user_turn()
            session.send(vl.message_item_create(role, text))
            session.request_response()

    def inform(self, text: str) -> None:
        """Tell the model something that happened (e.g. a keypad transfer failed) as a
        system message, followed by one response once none is active."""
        self._keyed = ("system", text)
        self._respond_if_due()

    def _key(self, key: str, now: float) -> None:
        """A keypad key: it interrupts the agent like speech; a submitted entry goes to
        the agent as one user turn; an action key acts without the model."""
        self._no_input.caller_active(now)
        result = self._dtmf.press(key, now)
        if result.kind == "ignored":
            self._events.append(Dtmf(kind="ignored", length=result.length))
            return
        self.barge_in(now)
        self._dtmf_result(result)

    def _dtmf_result(self, result: DtmfResult) -> None:
        c = self._accounting.counters
        if result.kind == "submitted":
            c.dtmf_submitted += 1
            self._session.keypad.add(result.digits)
            self._keyed = ("user", self._dtmf_text.format(digits=result.digits))
            self._respond_if_due()
        elif result.kind == "action":
            c.dtmf_actions += 1
        self._events.append(Dtmf(kind=result.kind, length=result.length, action=result.action))

    def say(self, text: str) -> bool:
        """Speak ``text`` verbatim now (a filler, an announcement); False if a response
        is active or no session is ready."""
        session = self._session
        return session.ready and session.say(text)

    def set_busy(self, busy: bool) -> None:
        """The relay runs something the caller waits on (a tool, a transfer): the
        silent-caller watchdog pauses."""
        self._busy = busy

    @property
    def tools_running(self) -> bool:
        return self._tools.busy

    def _control_poll(self, now: float) -> None:
        """Keypad timeout, a result waiting for its response, the silent caller."""
        submitted = self._dtmf.poll(now)
        if submitted is not None:
            self._dtmf_result(submitted)
        self._respond_if_due()
        session = self._session
        self._no_input.busy_until(self._playout.playing_until)
        idle = (
            session.ready
            and session.responses.is_idle
            and not self._busy
            and not self._tools.busy
            and self._keyed is None
            and self._dtmf.pending == 0
            and self._playout.frames_queued == 0
        )
        action = self._no_input.poll(now, idle=idle)
        if action is None:
            return
        count = self._no_input.reprompts
        self._events.append(NoInputEvent(action=action, count=count))
        if action == "reprompt":
            self._accounting.counters.no_input_reprompts += 1
            session.responses.user_turn()
            if self._reprompt.text:
                session.send(vl.greeting_pre_generated(self._reprompt.text))
            else:
                session.request_response(self._reprompt.instructions)
        else:
            self.giving_up = True

    def resume(self, history: Iterable[tuple[str, str]] = ()) -> None:
        """The call was taken over from another node: no greeting; ``history`` (model
        mode: the transcript so far, oldest first) is replayed into the first session."""
        self._session.resume(history)

    def barge_in(self, now: float) -> None:
        """The caller spoke: stop playback now, drop queued and late agent audio, and
        cancel the response if that is ours to do."""
        active = self._session.responses.active_response_id
        dropped = self._playout.interrupt(now, active)  # StopAudio goes out first
        self._events.append(BargeIn(dropped_samples=dropped, response_id=active))
        self._session.cancel_after_barge_in()

    def request_response(self, instructions: str | None = None) -> bool:
        """Ask for a response (e.g. after a tool result); the guard may refuse."""
        return self._session.request_response(instructions)

    # ------------------------------------------------------------------ session loss, timers

    def voicelive_lost(self, now: float) -> None:
        """The Voice Live session is gone (a reconnect follows).

        Agent audio already queued keeps playing; the response that was streaming ends
        with what arrived; caller audio is held (bounded) until the next session's
        ``session.update`` is out, then sent — nothing said in the gap is lost unless
        the buffer overflows (``caller_samples_buffered_dropped``).
        """
        self._playout.session_lost(now)
        # Unsent messages belonged to the dead session; unsent caller audio goes back
        # into the buffer for the next one.
        self.unsent(self.voicelive_to_send())
        self._session.lost()

    def unsent(self, messages: list[str]) -> None:
        """``messages`` (taken from :meth:`voicelive_to_send`) could not be sent: the
        caller audio among them goes back to the buffer, ahead of newer audio, and
        audio from now on is buffered too (in order) until the next session."""
        self._session.new_session()
        self._uplink.requeue(messages)

    def acs_socket_replaced(self, now: float) -> None:
        """ACS opened a new media socket: what it queued on the old one is gone, so
        pacing restarts from now (nothing already sent is re-sent)."""
        self._playout.socket_replaced(now)

    def poll(self, now: float, wall_now: float | None = None) -> ReplaceReason | None:
        """Timers, sans-I/O: call every few hundred ms with the media clock ``now``
        (and the wall clock in epoch seconds, for ``expires_at``).

        Returns why the session should be replaced (a :class:`ReplaceReason`) —
        ``SESSION_UPDATE_TIMEOUT``, ``RESPONSE_STALLED``, ``RESPONSE_TIMEOUT`` (see
        :meth:`VoiceLiveSession.poll <voicebridge.core.session.VoiceLiveSession.poll>`)
        or ``SESSION_EXPIRING`` — else None.
        """
        session = self._session
        self._now = now
        reason = session.poll(now)
        self._control_poll(now)
        if (
            reason is None
            and wall_now is not None
            and session.expiring(wall_now, playing=self._playout.frames_queued > 0)
        ):
            return ReplaceReason.SESSION_EXPIRING
        return reason

    @property
    def voicelive_unusable(self) -> bool:
        """True once a run of frames that are not JSON objects says the socket itself
        is bad: the session should be replaced."""
        return self._session.unreadable_run >= MAX_UNREADABLE_IN_A_ROW

    # ------------------------------------------------------------------ prompts (apology, goodbye)

    def play_prompt(self, pcm: bytes, now: float) -> None:
        """Queue a prompt (PCM16 at the ACS rate) for paced playback to the caller."""
        self._playout.play_prompt(pcm, now)

    def played_out(self, now: float) -> bool:
        """Nothing is queued for ACS and it has played everything sent (an estimate)."""
        playout = self._playout
        return playout.frames_queued == 0 and now >= playout.playing_until

    # ------------------------------------------------------------------ outboxes

    def voicelive_to_send(self) -> list[str]:
        """Wire text for Voice Live, in order; the caller owns the list."""
        out = self._voicelive_out
        texts = out[:]
        out.clear()  # the parts hold this list: it is emptied, never replaced
        return texts

    @property
    def voicelive_pending(self) -> bool:
        """True when :meth:`voicelive_to_send` has something."""
        return bool(self._voicelive_out)

    def acs_to_send(self, now: float, ahead: float = 0.0) -> list[str]:
        """ACS messages due at ``now``: control first, then paced audio frames — also
        those due within ``ahead`` seconds (so a pacer can wake up less often)."""
        return self._playout.acs_to_send(now, ahead)

    def next_acs_due(self) -> float | None:
        """When :meth:`acs_to_send` next has something (``-inf``: a control message
        waits, send now); None when nothing is queued."""
        return self._playout.next_acs_due()

    def events_received(self) -> list[BridgeEvent]:
        """What happened since the last call, in order; the caller owns the list."""
        events = self._events
        got = events[:]
        events.clear()  # the parts append to this list: emptied, never replaced
        return got

    @property
    def events_pending(self) -> bool:
        """True when :meth:`events_received` has something."""
        return bool(self._events)

    # ------------------------------------------------------------------ read-only state

    @property
    def acs_hz(self) -> int:
        return self._uplink.acs_hz

    @property
    def session_id(self) -> str | None:
        return self._session.session_id

    @property
    def conversation_id(self) -> str | None:
        """The Voice Live conversation id (agent mode), kept across sessions."""
        return self._session.conversation_id

    @property
    def responses(self) -> ResponseState:
        """The response state (for inspection: only the session part changes it)."""
        return self._session.responses

    @property
    def playing_until(self) -> float:
        """When ACS will have played all audio sent so far (an estimate, §4)."""
        return self._playout.playing_until

    @property
    def frames_queued(self) -> int:
        return self._playout.frames_queued

    @property
    def outbound_latency_ms(self) -> Histogram:
        """How late each ACS frame was sent (media-clock ms)."""
        return self._accounting.outbound_latency_ms

    # ------------------------------------------------------------------ end of call

    def finish(self, *, party_left: bool = False) -> None:
        """The call is over: flush the uplink, settle every response's accounting.

        Queued agent frames that were never sent stay counted as neither sent nor
        dropped, so :meth:`report` shows them as a loss; unless ``party_left`` (the caller
        hung up, or the call went to a person): then they had nobody to reach, and are
        reported as ``unsent_at_hangup``.
        """
        if self.ended:
            return
        self.ended = True
        self._party_left = party_left
        self._uplink.flush()  # the caller's last samples
        self._playout.finish(0.0)  # the clock is not ours to read: tail frames stamped 0

    def report(self) -> dict[str, Any]:
        """Counters and the conservation verdict (meaningful after :meth:`finish`)."""
        queued = self._playout.queued_agent_samples
        left = self.ended and self._party_left
        return self._accounting.report(
            acs_hz=self.acs_hz,
            voicelive_in_hz=self.voicelive_in_hz,
            voicelive_out_hz=self.voicelive_out_hz,
            buffered_samples=self._uplink.buffered_samples,
            queued_samples=0 if left else queued,
            unsent_at_hangup=queued if left else 0,
            guard=self._session.guard.counters(),
        )
