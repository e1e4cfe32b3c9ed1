"""CallBridge: all the logic of one call, with no I/O (design.md §1, §4).

Adapters feed it what arrived and send what it queued:

* :meth:`CallBridge.receive_acs` takes each ACS media-socket text message;
* :meth:`CallBridge.receive_voicelive` takes each Voice Live server frame (its bytes);
* :meth:`CallBridge.voicelive_to_send` returns the guarded messages for Voice Live,
  as wire-ready text;
* :meth:`CallBridge.acs_to_send` returns the ACS messages due at ``now`` — control
  messages (``StopAudio``) at once, agent audio as frames of exactly ``out_frame_ms``
  (20 ms by default) paced ``lead_ms`` ahead of real time;
  :meth:`CallBridge.next_acs_due` says when to ask again;
* :meth:`CallBridge.events_received` hands over what happened, as typed events
  (:mod:`voicebridge.core.events`): what the adapter acts on and the conversation
  log keeps.

Times are plain floats in seconds from any monotonic clock the adapter chooses; the
core never reads a clock.

Sample accounting (so a call can prove nothing was lost):

* inbound: ``caller_samples_in`` (ACS rate, silent frames included) must equal
  ``voicelive_samples_appended`` converted back at the end (:meth:`report`);
* outbound: each response's audio, converted to the ACS rate, is either sent
  (``agent_samples_sent``) or dropped on purpose by barge-in
  (``samples_dropped_by_barge_in``); zero padding of a response's last frame is
  counted apart (``padding_samples_sent``).
"""

from __future__ import annotations

import binascii
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pybase64

from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.audio import Framer, Resampler
from voicebridge.core.events import (
    AcsMalformed,
    AcsMetadata,
    AcsRateChanged,
    AcsRateMismatch,
    AcsSocketReplaced,
    AgentTranscript,
    AgentTruncated,
    BargeIn,
    BridgeEvent,
    CallerSpeechStopped,
    Dtmf,
    GuardBlocked,
    HistoryReplayed,
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
from voicebridge.core.guard import OutboundGuard
from voicebridge.core.responses import ResponseState, Trigger
from voicebridge.core.stats import Histogram
from voicebridge.errors import GuardRejected, IllegalTransition, RemoteProtocolError

__all__ = ["GREETING_MODES", "MAX_UNREADABLE_IN_A_ROW", "CallBridge", "Counters"]

GREETING_MODES = ("llm", "text", "none")

#: Voice Live frames in a row that are not JSON objects before the socket itself is
#: taken for bad (:attr:`CallBridge.voicelive_unusable`).
MAX_UNREADABLE_IN_A_ROW = 50


def _out_samples(n_in: int, in_hz: int, out_hz: int) -> int:
    """Samples a whole stream of ``n_in`` input samples resamples to (ceil)."""
    return -(-n_in * out_hz // in_hz)


@dataclass(slots=True)
class _Response:
    """Audio bookkeeping for one response (at the Voice Live output rate)."""

    samples_in: int = 0  # every sample received for it, suppressed ones included
    samples_fed: int = 0  # samples that went into the downlink resampler
    suppressed: bool = False  # interrupted: later deltas are dropped
    stream_open: bool = False  # the resampler holds part of it
    finished: bool = False  # accounted in the totals


@dataclass(slots=True)
class _Frame:
    text: str
    agent_samples: int  # real agent samples (padding excluded); 0 for prompts
    prompt_samples: int
    stamp: float


@dataclass
class Counters:
    """Everything the bridge counts. Plain ints so a report is a dict away."""

    acs_messages_in: int = 0
    acs_frames_in: int = 0
    acs_silent_frames: int = 0
    acs_malformed: int = 0
    acs_unknown_kinds: int = 0
    dtmf_tones: int = 0
    caller_samples_in: int = 0
    caller_samples_buffered_dropped: int = 0
    voicelive_samples_appended: int = 0
    voicelive_events_in: int = 0
    voicelive_malformed: int = 0
    voicelive_errors: Counter[str] = field(default_factory=Counter)
    voicelive_other_types: Counter[str] = field(default_factory=Counter)
    agent_samples_in: int = 0
    agent_samples_expected: int = 0
    agent_samples_sent: int = 0
    padding_samples_sent: int = 0
    prompt_samples_sent: int = 0
    samples_dropped_by_barge_in: int = 0
    late_deltas_dropped: int = 0
    acs_frames_out: int = 0
    stop_audio_sent: int = 0
    barge_ins: int = 0
    responses_created: int = 0
    responses_done: Counter[str] = field(default_factory=Counter)
    turn_anomalies: int = 0
    guard_rejections: int = 0


class CallBridge:
    """The sans-I/O state of one call: codecs, resamplers, framer, responses, guard."""

    def __init__(
        self,
        *,
        session_config: Mapping[str, Any],
        acs_hz: int = 16000,
        voicelive_in_hz: int = 24000,
        voicelive_out_hz: int = 24000,
        greeting: str = "llm",
        greeting_text: str = "",
        greeting_instructions: str | None = None,
        lead_ms: float = 160.0,
        out_frame_ms: int = 20,
        cancel_on_barge_in: bool | None = None,
        max_text_bytes: int = 8 * 1024,
        max_message_bytes: int = 128 * 1024,
        max_buffered_caller_ms: int = 10_000,
        replay_history: bool = True,
        max_history_items: int = 40,
        session_update_timeout_s: float = 5.0,
        response_start_timeout_s: float = 4.0,
        response_stall_timeout_s: float = 8.0,
    ) -> None:
        if greeting not in GREETING_MODES:
            raise ValueError(f"greeting must be one of {GREETING_MODES}, not {greeting!r}")
        self.session_config = dict(session_config)
        self.voicelive_in_hz = voicelive_in_hz
        self.voicelive_out_hz = voicelive_out_hz
        self.greeting = greeting
        self.greeting_text = greeting_text
        self.greeting_instructions = greeting_instructions
        self.lead_s = lead_ms / 1000.0
        if out_frame_ms % 20 or not 20 <= out_frame_ms <= 100:
            raise ValueError(f"out_frame_ms must be 20, 40, 60, 80 or 100, not {out_frame_ms}")
        self.out_frame_ms = out_frame_ms
        self.out_frame_s = out_frame_ms / 1000.0
        if cancel_on_barge_in is None:
            # With interrupt_response the service cancels by itself; a second cancel
            # from us would race it and come back as an error event (protocols §7).
            td = self.session_config.get("turn_detection")
            interrupts = isinstance(td, Mapping) and bool(td.get("interrupt_response", True))
            cancel_on_barge_in = not interrupts
        self.cancel_on_barge_in = cancel_on_barge_in
        self.max_buffered_caller_ms = max_buffered_caller_ms
        # Model mode: a new session knows nothing, so the conversation so far is
        # replayed into it. Agent mode keeps it server-side (conversation id).
        self.replay_history = replay_history
        self.history: deque[tuple[str, str]] = deque(maxlen=max_history_items)
        self.session_update_timeout_s = session_update_timeout_s
        self.response_start_timeout_s = response_start_timeout_s
        self.response_stall_timeout_s = response_stall_timeout_s
        self._last_event_at = 0.0
        self.sessions = 0
        # Per Voice Live session: caller samples appended and agent samples received,
        # so what a dropped socket swallowed can be told apart from a bridge bug.
        self.appended_per_session: list[int] = []
        self.agent_in_per_session: list[int] = []
        self.expires_at: float | None = None  # epoch seconds
        self._unreadable_run = 0  # frames in a row that were not JSON objects
        self._awaiting_update_since: float | None = None
        self._turn_waiting_since: float | None = None  # committed, no response yet
        self._nudged = False

        self.responses = ResponseState()
        self.guard = OutboundGuard(
            self.responses, max_text_bytes=max_text_bytes, max_message_bytes=max_message_bytes
        )
        self.counters = Counters()
        self.outbound_latency_ms = Histogram()
        self._events: list[BridgeEvent] = []

        self._voicelive_out: list[str] = []
        self._acs_control: list[str] = []
        self._frames: deque[_Frame] = deque()
        self._play_end = 0.0  # when ACS will have played everything we sent
        self._buffered_caller: deque[tuple[str, int]] = (
            deque()
        )  # (b64, samples) before session.update
        self._buffered_samples = 0
        self._responses: dict[str, _Response] = {}
        self._streaming: str | None = None  # response whose audio is in the resampler
        self._greeted = False
        self.session_id: str | None = None
        self.conversation_id: str | None = None
        self.ended = False
        self._set_acs_rate(acs_hz)

    # ------------------------------------------------------------------ set-up

    def _set_acs_rate(self, acs_hz: int) -> None:
        self.acs_hz = acs_hz
        self.frame_samples = acs_hz // 50  # inbound: ACS sends 20 ms frames
        self.frame_bytes = self.frame_samples * 2
        # Outbound frames may be longer (ACS queues whatever it is sent): fewer
        # WebSocket messages per second of agent speech.
        self.out_frame_samples = acs_hz * self.out_frame_ms // 1000
        self._uplink = Resampler(in_hz=acs_hz, out_hz=self.voicelive_in_hz)
        # Downlink as a pure delay: each frame's worth of agent audio fills an ACS frame
        # at once, instead of the framer waiting on the samples compensation shifts.
        self._downlink = Resampler(
            in_hz=self.voicelive_out_hz, out_hz=acs_hz, compensate_delay=False
        )
        self._framer = Framer(frame_bytes=self.out_frame_samples * 2)
        self._silence_pcm = bytes(self.frame_bytes)
        self._silence_b64 = binascii.b2a_base64(self._silence_pcm, newline=False).decode()

    def _emit(self, event: BridgeEvent) -> None:
        self._events.append(event)

    def events_received(self) -> list[BridgeEvent]:
        """What happened since the last call, in order; the list is handed over."""
        events = self._events
        self._events = []
        return events

    @property
    def events_pending(self) -> bool:
        """True when :meth:`events_received` has something."""
        return bool(self._events)

    # ------------------------------------------------------------------ ACS -> Voice Live

    def receive_acs(self, text: str | bytes) -> None:
        """Take one ACS media message. Malformed input is counted and reported
        (:class:`~voicebridge.core.events.AcsMalformed`), never raised."""
        c = self.counters
        c.acs_messages_in += 1
        try:
            event = acs.parse(text)
        except RemoteProtocolError as exc:
            c.acs_malformed += 1
            self._emit(AcsMalformed(error=str(exc)))
            return
        if type(event) is acs.AudioData:
            self._caller_audio(event)
        elif type(event) is acs.AudioMetadata:
            self._emit(AcsMetadata(sample_rate=event.sample_rate, length=event.length))
            if event.sample_rate != self.acs_hz and c.acs_frames_in == 0:
                self._emit(AcsRateChanged(expected=self.acs_hz, got=event.sample_rate))
                self._set_acs_rate(event.sample_rate)
            elif event.sample_rate != self.acs_hz:
                self._emit(AcsRateMismatch(expected=self.acs_hz, got=event.sample_rate))
        elif type(event) is acs.DtmfData:
            c.dtmf_tones += 1
            self._emit(Dtmf(tone=event.data))
        else:
            c.acs_unknown_kinds += 1

    def _caller_audio(self, frame: acs.AudioData) -> None:
        c = self.counters
        c.acs_frames_in += 1
        pcm = frame.pcm
        if not pcm:  # a silent frame without data: forward zeros, the VAD needs them
            c.acs_silent_frames += 1
            pcm = self._silence_pcm
            b64 = self._silence_b64
        else:
            if frame.silent:
                c.acs_silent_frames += 1
            b64 = frame.data
        c.caller_samples_in += len(pcm) >> 1
        uplink = self._uplink
        if not uplink.passthrough:
            out = uplink.feed(pcm)
            if not out:
                return
            b64 = pybase64.b64encode_as_string(out)
            samples = len(out) >> 1
        else:
            samples = len(pcm) >> 1
        self._append(b64, samples)

    def _append(self, b64: str, samples: int) -> None:
        if not self.guard.session_configured:
            self._buffer_caller(b64, samples)
            return
        self._voicelive_out.extend(self.guard.append(b64))
        self.counters.voicelive_samples_appended += samples
        self.appended_per_session[-1] += samples

    def _buffer_caller(self, b64: str, samples: int) -> None:
        """Hold caller audio until ``session.update`` is out (bounded; oldest dropped)."""
        self._buffered_caller.append((b64, samples))
        self._buffered_samples += samples
        limit = self.max_buffered_caller_ms * self.voicelive_in_hz // 1000
        while self._buffered_samples > limit and self._buffered_caller:
            _, n = self._buffered_caller.popleft()
            self._buffered_samples -= n
            self.counters.caller_samples_buffered_dropped += n

    def _release_buffered_caller(self) -> None:
        while self._buffered_caller:
            b64, n = self._buffered_caller.popleft()
            self._append(b64, n)
        self._buffered_samples = 0

    # ------------------------------------------------------------------ Voice Live -> ACS

    def receive_voicelive(self, frame: bytes | str, now: float = 0.0) -> None:
        """Take one Voice Live server frame (the WebSocket message) at time ``now``.

        A frame that is not a JSON object is counted as malformed and recorded but is no
        event (and :attr:`voicelive_unusable` says when a run of them means the socket
        is bad); a malformed event is counted and reported too. Nothing is raised."""
        c = self.counters
        try:
            event = vl.loads(frame)
        except RemoteProtocolError as exc:
            self._unreadable_run += 1
            c.voicelive_malformed += 1
            self._emit(VoiceLiveMalformed(error=str(exc)))
            return
        self._unreadable_run = 0
        c.voicelive_events_in += 1
        self._last_event_at = now
        try:
            ev = vl.classify(event)
        except RemoteProtocolError as exc:
            c.voicelive_malformed += 1
            self._emit(VoiceLiveMalformed(error=str(exc)))
            return
        match ev:  # the audio delta first: it is most of the traffic
            case vl.AudioDelta():
                self._agent_audio(ev, now)
            case vl.SpeechStarted():
                self.barge_in(now)
            case vl.ResponseCreated():
                self._response_created(ev)
            case vl.ResponseDone():
                self._response_done(ev, now)
            case vl.AudioDone():
                self._end_stream(ev.response_id, now)
            case vl.InputCommitted():
                self.responses.user_turn()
                self._turn_waiting_since = now
                self._nudged = False
            case vl.SessionCreated():
                self._session_created(ev, now)
            case vl.SessionUpdated():
                self._session_updated(ev)
            case vl.TranscriptionCompleted():
                self.history.append(("user", ev.transcript))
                self._emit(UserTranscript(item_id=ev.item_id, text=ev.transcript))
            case vl.TranscriptDone():
                self.history.append(("assistant", ev.transcript))
                self._emit(
                    AgentTranscript(
                        response_id=ev.response_id, item_id=ev.item_id, text=ev.transcript
                    )
                )
            case vl.SpeechStopped():
                self._emit(CallerSpeechStopped(audio_end_ms=ev.audio_end_ms))
            case vl.ItemTruncated():
                self._emit(AgentTruncated(item_id=ev.item_id, audio_end_ms=ev.audio_end_ms))
            case vl.Error():
                self._error(ev, now)
            case vl.Other():
                c.voicelive_other_types[ev.type] += 1

    def _session_created(self, ev: vl.SessionCreated, now: float) -> None:
        self.sessions += 1
        self.appended_per_session.append(0)
        self.agent_in_per_session.append(0)
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
        self._new_session()
        self._send(vl.session_update(self.session_config))
        self._awaiting_update_since = now
        if self.sessions > 1 and self.replay_history and self.history:
            for role, text in self.history:
                self._send(vl.message_item_create(role, text))
            self._emit(HistoryReplayed(items=len(self.history)))
        self._release_buffered_caller()

    def _session_updated(self, ev: vl.SessionUpdated) -> None:
        self._awaiting_update_since = None
        if ev.expires_at is not None:
            self.expires_at = ev.expires_at
        self._emit(SessionReady(session_id=ev.session_id, voice=ev.voice))
        if self._greeted or self.greeting == "none":
            return
        self._greeted = True
        if self.greeting == "text":
            self._send(vl.greeting_pre_generated(self.greeting_text))
        else:
            self._send(vl.response_create(instructions=self.greeting_instructions))

    def _send(self, message: Mapping[str, Any]) -> bool:
        """Queue ``message`` for Voice Live through the guard; False if refused."""
        try:
            self._voicelive_out.extend(self.guard.check(message))
        except GuardRejected as exc:
            self.counters.guard_rejections += 1
            mtype = message.get("type")
            self._emit(
                GuardBlocked(type=mtype if isinstance(mtype, str) else None, reason=exc.reason)
            )
            return False
        return True

    def request_response(self, instructions: str | None = None) -> bool:
        """Ask for a response (e.g. after a tool result); the guard may refuse."""
        return self._send(vl.response_create(instructions=instructions))

    def _new_session(self) -> None:
        """A new (or no) Voice Live session: ``session.update`` must go first again and
        no response is active; the turn count goes on."""
        self.guard.new_session()
        self.responses.reset()

    def _respond(self, trigger: Trigger, response_id: str | None = None) -> None:
        """Apply a server fact to the response state; an illegal one is an anomaly."""
        try:
            self.responses.handle(trigger, response_id)
        except IllegalTransition as exc:
            self.counters.turn_anomalies += 1
            self._emit(TurnAnomaly(error=str(exc)))

    def _response_created(self, ev: vl.ResponseCreated) -> None:
        self._turn_waiting_since = None
        self.counters.responses_created += 1
        self._respond(Trigger.CREATED, ev.response_id)
        self._responses.setdefault(ev.response_id, _Response())
        self._emit(ResponseStarted(response_id=ev.response_id, turn=self.responses.turn))

    def _response_done(self, ev: vl.ResponseDone, now: float) -> None:
        self.counters.responses_done[ev.status] += 1
        self._respond(Trigger.DONE, ev.response_id)
        self._end_stream(ev.response_id, now)
        resp = self._responses.pop(ev.response_id, None)
        if resp is not None:
            self._finish(resp)
        self._emit(ResponseEnded(response_id=ev.response_id, status=ev.status, reason=ev.reason))

    def _error(self, ev: vl.Error, now: float) -> None:
        self.counters.voicelive_errors[ev.code] += 1
        if self.responses.allows(Trigger.REJECTED) is None:  # it answers our request
            self._respond(Trigger.REJECTED)
        if ev.code == vl.ACTIVE_RESPONSE_ERROR and self._turn_waiting_since is not None:
            # Our response.create (cancel_previous=false) met a response the service has
            # already started for this turn: it is coming, so the turn is not unanswered.
            # Wait for it as long as for a stalled response before giving up on the session.
            self._turn_waiting_since = (
                now + self.response_stall_timeout_s - self.response_start_timeout_s
            )
        self._emit(
            VoiceLiveError(
                type=ev.type,
                code=ev.code,
                message=ev.message,
                param=ev.param,
                event_id=ev.event_id,
            )
        )

    def _agent_audio(self, ev: vl.AudioDelta, now: float) -> None:
        try:
            pcm = pybase64.b64decode(ev.delta, validate=True)  # 10-30x binascii strict
        except (binascii.Error, ValueError):
            self.counters.voicelive_malformed += 1
            self._emit(VoiceLiveMalformed(error="response.audio.delta: invalid base64"))
            return
        n = len(pcm) >> 1
        self.counters.agent_samples_in += n
        if self.agent_in_per_session:
            self.agent_in_per_session[-1] += n
        rid = ev.response_id
        resp = self._responses.get(rid)
        if resp is None:  # audio before (or without) response.created
            resp = self._responses[rid] = _Response()
        resp.samples_in += n
        if resp.suppressed:
            self.counters.late_deltas_dropped += 1
            return
        if self._streaming is not None and self._streaming != rid:
            self._end_stream(self._streaming, now)
        self._streaming = rid
        resp.stream_open = True
        resp.samples_fed += n
        downlink = self._downlink
        out = pcm if downlink.passthrough else downlink.feed(pcm)
        for frame in self._framer.push(out):
            self._queue_frame(frame, now)

    def _queue_frame(
        self, pcm: bytes, now: float, *, padding: int = 0, prompt: bool = False
    ) -> None:
        b64 = pybase64.b64encode_as_string(pcm)
        samples = (len(pcm) >> 1) - padding
        self._frames.append(
            _Frame(acs.audio_data(b64), 0 if prompt else samples, samples if prompt else 0, now)
        )

    def _end_stream(self, response_id: str, now: float) -> None:
        """The response's audio is complete: flush resampler and framer into frames."""
        if self._streaming != response_id:
            return
        self._streaming = None
        resp = self._responses.get(response_id)
        if resp is not None:
            resp.stream_open = False
        tail = b"" if self._downlink.passthrough else self._downlink.flush()
        for frame in self._framer.push(tail):
            self._queue_frame(frame, now)
        pending = self._framer.pending_bytes
        last = self._framer.flush()
        if last is not None:
            self._queue_frame(last, now, padding=(len(last) - pending) >> 1)

    def _finish(self, resp: _Response) -> None:
        """Add a finished response to the outbound totals (ACS-rate samples)."""
        if resp.finished:
            return
        resp.finished = True
        expected = self._downlink.output_for(resp.samples_in)
        fed = self._downlink.output_for(resp.samples_fed)
        self.counters.agent_samples_expected += expected
        # Audio that arrived after the barge-in never entered the resampler.
        self.counters.samples_dropped_by_barge_in += expected - fed

    def barge_in(self, now: float) -> None:
        """The caller spoke: stop playback now, drop queued and late agent audio."""
        c = self.counters
        c.barge_ins += 1
        self._acs_control.append(acs.stop_audio())
        c.stop_audio_sent += 1
        dropped = sum(f.agent_samples for f in self._frames)
        self._frames.clear()
        self._play_end = now  # StopAudio flushes ACS's queue
        if self._streaming is not None:
            dropped += self._framer.clear() >> 1
            if not self._downlink.passthrough:
                dropped += self._downlink.clear()
            resp = self._responses.get(self._streaming)
            if resp is not None:
                resp.stream_open = False
                resp.suppressed = True
            self._streaming = None
        active = self.responses.active_response_id
        if active is not None:
            self._responses.setdefault(active, _Response()).suppressed = True
        c.samples_dropped_by_barge_in += dropped
        self._emit(BargeIn(dropped_samples=dropped, response_id=active))
        if self.cancel_on_barge_in and self.responses.allows(Trigger.CANCEL) is None:
            self._send(vl.response_cancel())

    # ------------------------------------------------------------------ session loss, timeouts

    def voicelive_lost(self, now: float) -> None:
        """The Voice Live session is gone (a reconnect follows).

        Agent audio already queued keeps playing; the response that was streaming ends
        with what arrived; caller audio is held (bounded) until the next session's
        ``session.update`` is out, then sent — nothing said in the gap is lost unless
        the buffer overflows (``caller_samples_buffered_dropped``).
        """
        if self._streaming is not None:
            self._end_stream(self._streaming, now)
        for resp in self._responses.values():
            self._finish(resp)
        self._responses.clear()
        self._new_session()  # session.update must go first again
        # Unsent messages belonged to the dead session; unsent caller audio goes back
        # into the buffer for the next one.
        unsent, self._voicelive_out = self._voicelive_out, []
        self.unsent(unsent)
        self._awaiting_update_since = None
        self._turn_waiting_since = None
        self._unreadable_run = 0
        self._emit(SessionLost(session_id=self.session_id))

    def unsent(self, messages: list[str]) -> None:
        """``messages`` (taken from :meth:`voicelive_to_send`) could not be sent: the
        caller audio among them goes back to the buffer, ahead of newer audio, and
        audio from now on is buffered too (in order) until the next session."""
        self._new_session()
        audio = [b64 for b64 in map(vl.append_audio, messages) if b64 is not None]
        for b64 in reversed(audio):
            samples = len(binascii.a2b_base64(b64)) >> 1
            self.counters.voicelive_samples_appended -= samples
            if self.appended_per_session:
                self.appended_per_session[-1] -= samples
            self._buffered_caller.appendleft((b64, samples))
            self._buffered_samples += samples

    def acs_socket_replaced(self, now: float) -> None:
        """ACS opened a new media socket: what it queued on the old one is gone, so
        pacing restarts from now (nothing already sent is re-sent)."""
        self._play_end = now
        self._emit(AcsSocketReplaced())

    def poll(self, now: float) -> str | None:
        """Timers, sans-I/O: call every few hundred ms with the media clock.

        Returns ``"session_update_timeout"`` (no ``session.updated`` in time),
        ``"response_timeout"`` (a committed turn got no response even after one
        ``response.create`` of our own) or ``"response_stalled"`` (a response is active
        but the service has sent nothing for ``response_stall_timeout_s``) when the
        session should be replaced, else None.
        A turn left unanswered for ``response_start_timeout_s`` is nudged once with a
        ``response.create`` (the guard still allows one per turn).
        """
        if (
            self._awaiting_update_since is not None
            and now - self._awaiting_update_since > self.session_update_timeout_s
        ):
            return "session_update_timeout"
        if self.responses.is_active and now - self._last_event_at > self.response_stall_timeout_s:
            return "response_stalled"
        waiting = self._turn_waiting_since
        if waiting is not None and now - waiting > self.response_start_timeout_s:
            if self._nudged:
                return "response_timeout"
            self._nudged = True
            self._turn_waiting_since = now
            sent = self.request_response()
            self._emit(ResponseNudged(sent=sent, turn=self.responses.turn))
        return None

    # ------------------------------------------------------------------ prompts (apology, goodbye)

    def play_prompt(self, pcm: bytes, now: float) -> None:
        """Queue a prompt (PCM16 at the ACS rate) for paced playback to the caller."""
        framer = Framer(frame_bytes=self.out_frame_samples * 2)
        for frame in framer.push(pcm):
            self._queue_frame(frame, now, prompt=True)
        last = framer.flush()
        if last is not None:
            self._queue_frame(last, now, prompt=True)

    # ------------------------------------------------------------------ outboxes

    def voicelive_to_send(self) -> list[str]:
        """Wire text for Voice Live, in order; the list is handed over (not copied)."""
        out = self._voicelive_out
        self._voicelive_out = []
        return out

    @property
    def voicelive_pending(self) -> bool:
        """True when :meth:`voicelive_to_send` has something."""
        return bool(self._voicelive_out)

    @property
    def voicelive_unusable(self) -> bool:
        """True once :data:`MAX_UNREADABLE_IN_A_ROW` frames in a row were not JSON
        objects: the socket itself is bad, so the session should be replaced."""
        return self._unreadable_run >= MAX_UNREADABLE_IN_A_ROW

    def acs_to_send(self, now: float, ahead: float = 0.0) -> list[str]:
        """ACS messages due at ``now``: control first, then paced audio frames — also
        those due within ``ahead`` seconds (so a pacer can wake up less often)."""
        out = self._acs_control
        self._acs_control = []
        frames = self._frames
        if not frames:
            return out
        if self._play_end < now:  # ACS ran dry: playback restarts now
            self._play_end = now
        horizon = now + ahead + self.lead_s - 1e-6  # float sums of frame lengths must not add one
        c = self.counters
        latency = self.outbound_latency_ms
        frame_s = self.out_frame_s
        frame_samples = self.out_frame_samples
        while frames and self._play_end < horizon:
            frame = frames.popleft()
            out.append(frame.text)
            c.acs_frames_out += 1
            c.agent_samples_sent += frame.agent_samples
            c.prompt_samples_sent += frame.prompt_samples
            if frame.agent_samples and frame.agent_samples < frame_samples:
                c.padding_samples_sent += frame_samples - frame.agent_samples
            due = self._play_end - self.lead_s
            late = now - (frame.stamp if frame.stamp > due else due)
            latency.add(late * 1000.0 if late > 0.0 else 0.0)  # sent early: no delay
            self._play_end += frame_s
        return out

    def next_acs_due(self) -> float | None:
        """When :meth:`acs_to_send` next has something; None when nothing is queued."""
        if self._acs_control:
            return float("-inf")
        if not self._frames:
            return None
        return self._play_end - self.lead_s

    @property
    def playing_until(self) -> float:
        """When ACS will have played all audio sent so far (an estimate, §4)."""
        return self._play_end

    @property
    def frames_queued(self) -> int:
        return len(self._frames)

    # ------------------------------------------------------------------ end of call

    def finish(self) -> None:
        """The call is over: flush the uplink, settle every response's accounting.

        Queued agent frames that were never sent stay counted as neither sent nor
        dropped, so :meth:`report` shows them as unaccounted.
        """
        if self.ended:
            return
        self.ended = True
        if not self._uplink.passthrough:
            tail = self._uplink.flush()
            if tail:
                b64 = pybase64.b64encode_as_string(tail)
                self._append(b64, len(tail) >> 1)
        if self._streaming is not None:
            self._end_stream(self._streaming, 0.0)
        for resp in self._responses.values():
            self._finish(resp)

    def report(self) -> dict[str, Any]:
        """Counters and the conservation verdict (meaningful after :meth:`finish`)."""
        c = self.counters
        inbound_expected = _out_samples(c.caller_samples_in, self.acs_hz, self.voicelive_in_hz)
        # Caller audio dropped while waiting for the session is a counted loss.
        inbound_accounted = (
            c.voicelive_samples_appended
            + self._buffered_samples
            + c.caller_samples_buffered_dropped
        )
        queued = sum(f.agent_samples for f in self._frames)
        outbound_accounted = c.agent_samples_sent + c.samples_dropped_by_barge_in + queued
        return {
            "acs_hz": self.acs_hz,
            "sessions": {
                "count": self.sessions,
                "appended": list(self.appended_per_session),
                "agent_in": list(self.agent_in_per_session),
            },
            "voicelive_in_hz": self.voicelive_in_hz,
            "voicelive_out_hz": self.voicelive_out_hz,
            "inbound": {
                "caller_samples_in": c.caller_samples_in,
                "voicelive_samples_appended": c.voicelive_samples_appended,
                "expected_appended": inbound_expected,
                "buffered_dropped": c.caller_samples_buffered_dropped,
                "conserved": inbound_expected == inbound_accounted,
            },
            "outbound": {
                "agent_samples_in": c.agent_samples_in,
                "agent_samples_expected": c.agent_samples_expected,
                "agent_samples_sent": c.agent_samples_sent,
                "samples_dropped_by_barge_in": c.samples_dropped_by_barge_in,
                "queued_unsent": queued,
                "padding_samples_sent": c.padding_samples_sent,
                "conserved": c.agent_samples_expected == outbound_accounted and queued == 0,
            },
            "counters": {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(c).items()},
            "guard": self.guard.counters(),
            "outbound_latency_ms": self.outbound_latency_ms.summary(),
        }
