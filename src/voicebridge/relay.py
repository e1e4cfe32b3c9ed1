"""The per-call media relay: thin async pumps around one :class:`CallBridge`.

Tasks per call (design.md §1):

* **ACS pump** — reads the media WebSocket, feeds the core, sends what the core queued
  for Voice Live;
* **Voice Live pump** — the *only* reader of the SDK connection (protocols §6.4);
  feeds the core, sends its Voice Live messages, wakes the pacer;
* **pacer** — the *only* writer of the ACS socket: control messages at once,
  agent audio in 20 ms frames ``PACING_LEAD_MS`` ahead of real time;
* **timers** — limits (idle media, call length), the core's timeouts, session expiry.

Sends to Voice Live come from several tasks, so they go through one lock that covers
draining the core's outbox *and* sending it: order is preserved (``session.update``
before any audio) and writes never overlap.

What ends or repairs a call (docs/reliability.md):

* Voice Live drops, stalls or nears ``expires_at`` → reconnect with backoff within
  ``VOICELIVE_RECONNECT_BUDGET_S``, keeping the conversation (agent mode: the same
  conversation id; model mode: the transcript is replayed); caller audio is held
  meanwhile. If the budget runs out: the apology, then hang-up.
* The ACS socket closes without ``CallDisconnected`` → wait
  ``ACS_RECONNECT_GRACE_S`` for ACS to open a new one; a second socket for the call
  replaces the first.
* Draining (SIGTERM) past ``DRAIN_GRACE_S`` → the goodbye prompt, then hang-up.

Tracing (:mod:`voicebridge.telemetry`, when on): spans for each Voice Live connect,
each reconnect and each response (``response.created`` → ``response.done``), started
and ended from the core's typed events (:mod:`voicebridge.core.events`) — control
events, never per audio frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import wave
from functools import cache
from importlib import resources
from typing import Any

from azure.ai.voicelive.aio import ConnectionClosed
from starlette.websockets import WebSocket

from voicebridge import observations
from voicebridge.calls import Call, CallOutcome
from voicebridge.config import Settings
from voicebridge.core.audio import Resampler
from voicebridge.core.bridge import (
    CallBridge,
    Greeting,
    GuardLimits,
    History,
    PlayoutConfig,
    Rates,
    Timeouts,
    UplinkConfig,
)
from voicebridge.core.events import (
    AcsMalformed,
    BargeIn,
    BridgeEvent,
    GuardBlocked,
    ReplaceReason,
    ResponseEnded,
    ResponseStarted,
    SessionReady,
    SessionStarted,
    VoiceLiveError,
    VoiceLiveMalformed,
    as_record,
)
from voicebridge.core.stats import Histogram
from voicebridge.errors import UpstreamUnavailable
from voicebridge.voicelive.session import SEND_ERRORS, OpenSession, open_session, session_config

log = logging.getLogger(__name__)

#: The pacer also sends frames due this soon (media seconds), so it wakes about once per
#: 40 ms of agent audio whatever the frame length (with 20 ms frames: -7 % bridge CPU at
#: 100 calls; with 40 ms frames a longer batch measured no better, docs/performance.md).
PACER_BATCH_S = 0.040


def bridge_for(s: Settings) -> CallBridge:
    """The core of one call, configured from the settings."""
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
    )


@cache
def prompt_pcm(name: str, rate: int) -> bytes:
    """A shipped prompt (``assets/<name>.wav``) as PCM16 at ``rate``, resampled by the core."""
    ref = resources.files("voicebridge") / "assets" / f"{name}.wav"
    with ref.open("rb") as fh, wave.open(fh) as wav:
        src_rate: int = wav.getframerate()
        pcm: bytes = wav.readframes(wav.getnframes())
    if src_rate == rate:
        return pcm
    rs = Resampler(in_hz=src_rate, out_hz=rate)
    out: bytes = rs.feed(pcm) + rs.flush()
    return out


class MediaRelay:
    """Runs one call's media until the call ends; see the module docstring."""

    def __init__(self, ctx: Any, call: Call, websocket: WebSocket) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.call = call
        self.ws = websocket
        s = self.settings
        self.speed: float = s.media_clock_speed
        self.bridge = bridge_for(s)
        self.session: OpenSession | None = None
        self.inbound_latency_ms = Histogram()
        self.reconnects: list[dict[str, Any]] = []
        self._pending_reconnect: dict[str, Any] | None = None
        self._vl_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._new_socket: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()
        self._released: dict[int, asyncio.Event] = {}
        self.voicelive_close_code: int | None = None
        self.telemetry = ctx.telemetry
        self._tracing: bool = self.telemetry.enabled
        self._response_spans: dict[Any, Any] = {}
        self._reconnect_span: Any = None
        self.sockets = 1
        self._started = time.perf_counter()
        self._last_acs_rx = time.perf_counter()
        self._max_acs_gap_s = 0.0  # longest wait between two ACS messages (observations)
        # Caller-stream levels while the agent plays, for the echo question (first call).
        self._levels = (
            None
            if observations.observed("acs_inbound_during_playback")
            else observations.InboundLevels()
        )
        self._pacer_wakes_at = float("inf")  # media time the pacer will next look

    def now(self) -> float:
        """The media clock (seconds); runs ``MEDIA_CLOCK_SPEED`` times real time."""
        return time.monotonic() * self.speed

    def call_time(self) -> float:
        """Seconds of media time since the relay started (for reports)."""
        return (time.perf_counter() - self._started) * self.speed

    # ------------------------------------------------------------------ ACS sockets

    def attach(self, websocket: WebSocket) -> asyncio.Event:
        """A new media socket for this call (ACS reconnected): it replaces the current
        one. Returns an event set once the relay no longer uses it."""
        released = asyncio.Event()
        self._released[id(websocket)] = released
        if self._new_socket.done():  # two replacements at once: the newest wins
            self._release(self._new_socket.result())
            self._new_socket = asyncio.get_running_loop().create_future()
        self._new_socket.set_result(websocket)
        return released

    def _release(self, websocket: WebSocket) -> None:
        released = self._released.pop(id(websocket), None)
        if released is not None:
            released.set()

    async def _swap_socket(self, tasks: dict[str, asyncio.Task[Any]]) -> None:
        new = self._new_socket.result()
        self._new_socket = asyncio.get_running_loop().create_future()
        for name in ("acs", "pacer"):
            tasks[name].cancel()
            with contextlib.suppress(BaseException):
                await tasks[name]
        old, self.ws = self.ws, new
        with contextlib.suppress(Exception):
            await old.close(code=1000)
        self._release(old)
        self.sockets += 1
        self._last_acs_rx = time.perf_counter()
        log.info("call %s: media socket replaced (socket %d)", self.call.label, self.sockets)
        self.call.log.write("media_socket_replaced", socket=self.sockets)
        self.bridge.acs_socket_replaced(self.now())
        tasks["acs"] = asyncio.create_task(self._acs_pump(), name=f"acs-{self.call.label}")
        tasks["pacer"] = asyncio.create_task(self._pacer(), name=f"pacer-{self.call.label}")
        tasks["newsock"] = asyncio.ensure_future(self._new_socket)

    # ------------------------------------------------------------------ pumps

    async def _send_voicelive(self) -> None:
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

    def _drain_events(self) -> None:
        for event in self.bridge.events_received():
            self._on_event(event)

    def _on_event(self, event: BridgeEvent) -> None:
        """One core event: the conversation log, the few the relay acts on, tracing."""
        self.call.log.write_event(event)
        match event:
            case AcsMalformed() | VoiceLiveMalformed() | VoiceLiveError() | GuardBlocked():
                log.warning("call %s: %s %s", self.call.label, event.name, _brief(event))
            case SessionStarted():
                if event.conversation_id:
                    self.call.conversation_id = event.conversation_id
                if self.settings.mode == "agent":
                    observations.observe("agent_conversation_id", field=event.conversation_id_field)
            case SessionReady() if self._pending_reconnect is not None:
                self._reconnected()
        if self._tracing:
            self._trace(event)

    def _trace(self, event: BridgeEvent) -> None:
        """Spans and span events from the core's events (tracing on only)."""
        call_span = self.call.span
        match event:
            case ResponseStarted(response_id=rid, turn=turn):
                self._response_spans[rid] = self.telemetry.start(
                    "voicelive.response",
                    call_span,
                    **{"voicebridge.response_id": rid, "voicebridge.turn": turn},
                )
            case ResponseEnded(response_id=rid, status=status, reason=reason):
                span = self._response_spans.pop(rid, None)
                if span is not None:
                    span.set_attribute("voicebridge.response.status", status)
                    span.set_attribute("voicebridge.response.reason", reason)
                    if status == "failed":
                        span.fail(f"response failed: {reason}")
                    span.end()
            case BargeIn(response_id=rid, dropped_samples=dropped):
                span = self._response_spans.get(rid) or call_span
                if span is not None:
                    span.add_event("barge_in", dropped_samples=dropped)
            # codes and reasons only: error messages may quote conversation content
            case VoiceLiveError(code=code, type=etype) if call_span is not None:
                call_span.add_event(event.name, code=code, type=etype, reason=None)
            case GuardBlocked(type=mtype, reason=reason) if call_span is not None:
                call_span.add_event(event.name, code=None, type=mtype, reason=reason)
            case SessionStarted() if call_span is not None:
                call_span.set_attribute("voicebridge.session_id", event.session_id)
                call_span.set_attribute("voicebridge.conversation_id", event.conversation_id)

    def _end_spans(self) -> None:
        """End the spans still open when the relay stops (responses cut by the call's end)."""
        for span in self._response_spans.values():
            span.set_attribute("voicebridge.response.status", "unfinished")
            span.end()
        self._response_spans.clear()
        if self._reconnect_span is not None:
            self._reconnect_span.set_attribute("voicebridge.reconnect.result", "call_ended")
            self._reconnect_span.end()
            self._reconnect_span = None

    async def _acs_pump(self) -> None:
        receive = self.ws.receive
        bridge = self.bridge
        latency = self.inbound_latency_ms
        perf = time.perf_counter
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            t0 = perf()
            if t0 - self._last_acs_rx > self._max_acs_gap_s:
                self._max_acs_gap_s = t0 - self._last_acs_rx
            self._last_acs_rx = t0
            data = message.get("text") or message.get("bytes") or b""
            bridge.receive_acs(data)
            if self._levels is not None and self._levels.feed(data, bridge.frames_queued > 0):
                observations.observe("acs_inbound_during_playback", **self._levels.report())
                self._levels = None
            if bridge.voicelive_pending and self.session is not None:
                await self._send_voicelive()
                latency.add((perf() - t0) * 1000.0)
            if bridge.events_pending:
                self._drain_events()

    async def _voicelive_pump(self, session: OpenSession) -> ReplaceReason:
        conn = session.connection
        bridge = self.bridge
        recv = conn.recv_bytes
        while True:
            # The SDK's recv() would also build a typed model of every event; the core
            # parses the raw frame once itself.
            try:
                raw = await recv()
                if not raw:
                    raise ConnectionClosed(1006, "Empty WebSocket frame")
            except ConnectionClosed as exc:
                self.voicelive_close_code = exc.code
                return ReplaceReason.VOICELIVE_CLOSED
            bridge.receive_voicelive(raw, self.now())
            if bridge.voicelive_unusable:  # a run of frames that are not JSON objects
                if bridge.events_pending:
                    self._drain_events()
                return ReplaceReason.VOICELIVE_CLOSED
            if bridge.voicelive_pending:
                await self._send_voicelive()
            due = bridge.next_acs_due()
            if due is not None and due < self._pacer_wakes_at:  # sooner than planned
                self._wake.set()
            if bridge.events_pending:
                self._drain_events()

    async def _pacer(self) -> None:
        """Sleep until the next frame is due (or a wake-up), then send what is due —
        including frames due within ``PACER_BATCH_S``, so each wake-up sends a couple of
        frames: half the wake-ups, and ACS still holds between the lead and
        lead + batch of audio."""
        bridge = self.bridge
        send = self.ws.send_text
        wake = self._wake
        loop = asyncio.get_running_loop()
        speed = self.speed
        while True:
            due = bridge.next_acs_due()
            if due is None:
                self._pacer_wakes_at = float("inf")
                wake.clear()
                await wake.wait()
                continue
            now = time.monotonic() * speed
            delay = (due - now) / speed
            if delay > 0.001:
                self._pacer_wakes_at = due
                wake.clear()
                timer = loop.call_later(delay, wake.set)  # cheaper than asyncio.timeout
                await wake.wait()
                timer.cancel()
                continue
            self._pacer_wakes_at = float("-inf")  # awake: nobody needs to wake us
            for text in bridge.acs_to_send(now, ahead=PACER_BATCH_S):
                await send(text)

    async def _timers(self) -> CallOutcome | ReplaceReason:
        """Return the first reason the call must change course: a limit (ACS silent
        for ``MEDIA_IDLE_TIMEOUT_S`` — it streams 50 frames a second, silence
        included — or the call longer than ``MAX_CALL_DURATION_S``), or the core's
        reason to replace the session (its timeouts, or ``expires_at`` near: the core
        is given the wall clock for that). Limits are in real time."""
        s = self.settings
        tick = min(0.25, s.media_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.perf_counter()
            if now - self._last_acs_rx > s.media_idle_timeout_s:
                return CallOutcome.MEDIA_IDLE_TIMEOUT
            if now - self._started > s.max_call_duration_s:
                return CallOutcome.MAX_DURATION
            if self.session is None:
                continue
            timeout = self.bridge.poll(self.now(), time.time())
            if self.bridge.voicelive_pending:
                await self._send_voicelive()
            if self.bridge.events_pending:
                self._drain_events()
            if timeout is not None:
                return timeout

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> CallOutcome:
        """Relay until the call ends; return the outcome."""
        call = self.call
        tasks: dict[str, asyncio.Task[Any]] = {}
        log.info(
            "call %s: media connected; relaying ACS %d Hz <-> Voice Live %d Hz",
            call.label,
            self.bridge.acs_hz,
            self.settings.voicelive_audio_rate,
        )
        try:
            tasks["acs"] = asyncio.create_task(self._acs_pump(), name=f"acs-{call.label}")
            tasks["pacer"] = asyncio.create_task(self._pacer(), name=f"pacer-{call.label}")
            tasks["hangup"] = asyncio.create_task(call.disconnected.wait(), name="disconnected")
            tasks["drain"] = asyncio.create_task(call.drain_now.wait(), name="drain")
            tasks["timers"] = asyncio.create_task(self._timers(), name=f"timers-{call.label}")
            tasks["newsock"] = asyncio.ensure_future(self._new_socket)
            try:
                await self._first_connect(tasks)
            except UpstreamUnavailable as exc:
                log.error("call %s: %s", call.label, exc)
                call.log.write("voicelive_unavailable", error=str(exc))
                await self._say_and_hang_up(tasks, "apology")
                return await self._finish(CallOutcome.APOLOGY_HANGUP)
            if self.session is None:  # the call ended while we were connecting
                return await self._end_by(tasks)
            while True:
                done, _ = await asyncio.wait(
                    set(tasks.values()), return_when=asyncio.FIRST_COMPLETED
                )
                if tasks["hangup"] in done:
                    return await self._finish(call.outcome or CallOutcome.CALLER_HUNG_UP)
                if tasks["newsock"] in done:
                    await self._swap_socket(tasks)
                    continue
                if tasks["acs"] in done:
                    if not await self._await_acs_reconnect(tasks):
                        return await self._end_by(tasks, lost=True)
                    continue
                if tasks["drain"] in done:
                    log.info("call %s: drain grace over: goodbye", call.label)
                    await self._say_and_hang_up(tasks, "goodbye")
                    return await self._finish(CallOutcome.DRAINED)
                if tasks["pacer"] in done:
                    tasks["pacer"].result()  # re-raise whatever stopped the pacer
                    return await self._finish(CallOutcome.ERROR)
                reason: CallOutcome | ReplaceReason | None = None
                if "voicelive" in tasks and tasks["voicelive"] in done:
                    reason = tasks.pop("voicelive").result()
                elif tasks["timers"] in done:
                    reason = tasks["timers"].result()
                    tasks["timers"] = asyncio.create_task(self._timers(), name="timers")
                if reason is CallOutcome.MEDIA_IDLE_TIMEOUT and await self._call_still_connected():
                    continue  # silence or hold, not a dead call: keep it
                if isinstance(reason, CallOutcome):
                    return await self._limit_reached(tasks, reason)
                if isinstance(reason, ReplaceReason) and not await self._reconnect(tasks, reason):
                    await self._say_and_hang_up(tasks, "apology")
                    return await self._finish(CallOutcome.APOLOGY_HANGUP)
        finally:
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(BaseException):
                    await task
            if self.session is not None:
                await self.session.close()
            self._release(self.ws)
            for released in self._released.values():
                released.set()
            self._end_spans()

    async def _first_connect(self, tasks: dict[str, asyncio.Task[Any]]) -> None:
        """Connect, unless the call ends first (then ``self.session`` stays None)."""
        connect = asyncio.create_task(self._open(), name=f"connect-{self.call.label}")
        enders = {tasks["acs"], tasks["hangup"], tasks["timers"], tasks["drain"]}
        done, _ = await asyncio.wait({connect, *enders}, return_when=asyncio.FIRST_COMPLETED)
        if connect not in done:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            return
        self.session = connect.result()
        tasks["voicelive"] = asyncio.create_task(
            self._voicelive_pump(self.session), name=f"vl-{self.call.label}"
        )

    async def _open(self, timeout_s: float | None = None, attempt: int = 0) -> OpenSession:
        agent = self.settings.mode == "agent"
        parent = self._reconnect_span or self.call.span
        with self.telemetry.use(
            "voicelive.connect",
            parent,
            **{
                "voicebridge.mode": self.settings.mode,
                "server.address": self.settings.voicelive_host,
                "voicebridge.reconnect_attempt": attempt or None,
            },
        ) as span:
            session = await open_session(
                self.settings,
                self.ctx.voicelive_credential,
                call_id=self.call.call_connection_id or self.call.correlation_id,
                conversation_id=(self.bridge.conversation_id or self.call.conversation_id)
                if agent
                else None,
                timeout_s=timeout_s,
            )
            span.set_attribute("voicebridge.connect_ms", round(session.connect_ms, 1))
        log.info("call %s: Voice Live connected in %.0f ms", self.call.label, session.connect_ms)
        self.call.log.write("voicelive_connected", connect_ms=round(session.connect_ms, 1))
        return session

    async def _end_by(
        self, tasks: dict[str, asyncio.Task[Any]], *, lost: bool = False
    ) -> CallOutcome:
        """The call ended before or outside the main loop: find out how."""
        if tasks["timers"].done():
            return await self._limit_reached(tasks, tasks["timers"].result())
        if tasks["drain"].done():
            await self._say_and_hang_up(tasks, "goodbye")
            return await self._finish(CallOutcome.DRAINED)
        if lost and not self.call.disconnected.is_set():
            log.warning("call %s: media socket lost and not reopened: hanging up", self.call.label)
            await self.ctx.hang_up(self.call)
            return await self._finish(CallOutcome.MEDIA_LOST)
        return await self._finish(self.call.outcome or CallOutcome.CALLER_HUNG_UP)

    async def _await_acs_reconnect(self, tasks: dict[str, asyncio.Task[Any]]) -> bool:
        """The ACS socket closed: True if a new one came within the grace period."""
        if self.call.disconnected.is_set():
            return False
        grace = self.settings.acs_reconnect_grace_s
        done, _ = await asyncio.wait(
            {tasks["newsock"], tasks["hangup"]}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
        )
        if tasks["newsock"] in done:
            await self._swap_socket(tasks)
            return True
        return False

    async def _reconnect(self, tasks: dict[str, asyncio.Task[Any]], reason: ReplaceReason) -> bool:
        """Replace the Voice Live session within the budget; False if it cannot be done."""
        call, bridge, s = self.call, self.bridge, self.settings
        lost_at = time.perf_counter()
        attempt = 0
        # A session lost before it confirmed its configuration (refused by the service:
        # agent not found, conflicting agent config, ...) does not end the gap: the budget
        # and the attempts run on from the first loss, with the same back-off.
        retrying = self._pending_reconnect
        if retrying is not None:
            lost_at, attempt = retrying["lost_at"], retrying["attempts"]
            self._pending_reconnect = None
        self._reconnect_started(reason)
        old_conversation = bridge.conversation_id
        if "voicelive" in tasks:
            tasks.pop("voicelive").cancel()
        if self.session is not None:
            await self.session.close()
            self.session = None
        bridge.voicelive_lost(self.now())
        self._drain_events()
        deadline = lost_at + s.voicelive_reconnect_budget_s
        delay = min(0.2 * 2**attempt, 2.0)
        if retrying is not None:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.perf_counter())))
        while True:
            if call.disconnected.is_set() or call.drain_now.is_set():
                return True  # the main loop ends the call
            attempt += 1
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                session = await self._open(
                    timeout_s=min(s.voicelive_connect_timeout_s, left), attempt=attempt
                )
            except UpstreamUnavailable as exc:
                log.warning("call %s: reconnect attempt %d failed: %s", call.label, attempt, exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.perf_counter())))
                delay = min(delay * 2, 2.0)
                continue
            self.session = session
            self._pending_reconnect = {
                "at_s": round(self.call_time(), 3),
                "reason": reason,
                "attempts": attempt,
                "lost_at": lost_at,
                "old_conversation": old_conversation,
            }
            tasks["voicelive"] = asyncio.create_task(
                self._voicelive_pump(session), name=f"vl-{call.label}"
            )
            return True
        log.error(
            "call %s: Voice Live reconnect failed within %.1f s",
            call.label,
            s.voicelive_reconnect_budget_s,
        )
        call.log.write("voicelive_reconnect_failed", attempts=attempt - 1)
        if self._reconnect_span is not None:
            self._reconnect_span.set_attribute("voicebridge.reconnect.attempts", attempt - 1)
            self._reconnect_span.set_attribute("voicebridge.reconnect.result", "failed")
            self._reconnect_span.fail("reconnect budget exhausted")
            self._reconnect_span.end()
            self._reconnect_span = None
        return False

    def _reconnect_started(self, reason: ReplaceReason) -> None:
        """Log the loss and open the reconnect span (ending one left open)."""
        call, code = self.call, self.voicelive_close_code
        log.warning(
            "call %s: Voice Live %s (close code %s): reconnecting", call.label, reason, code
        )
        call.log.write("voicelive_reconnecting", reason=reason, code=code)
        if self._reconnect_span is not None:  # a new loss before the last gap closed
            self._reconnect_span.set_attribute("voicebridge.reconnect.result", "lost_again")
            self._reconnect_span.end()
        self._reconnect_span = self.telemetry.start(
            "voicelive.reconnect",
            call.span,
            **{"voicebridge.reconnect.reason": reason, "voicebridge.voicelive_close_code": code},
        )

    def _reconnected(self) -> None:
        """The new session confirmed its configuration: the gap is over."""
        pending, self._pending_reconnect = self._pending_reconnect, None
        assert pending is not None
        bridge = self.bridge
        if self.settings.mode == "agent":
            kept = (
                bool(pending["old_conversation"])
                and bridge.conversation_id == pending["old_conversation"]
            )
        else:
            kept = True  # the transcript so far was replayed as conversation items
        entry = {
            "at_s": pending["at_s"],
            "reason": pending["reason"],
            "gap_ms": round((time.perf_counter() - pending["lost_at"]) * 1000.0, 1),
            "attempts": pending["attempts"],
            "conversation_kept": kept,
        }
        self.reconnects.append(entry)
        self.ctx.stats.reconnected()
        span, self._reconnect_span = self._reconnect_span, None
        if span is not None:
            span.set_attribute("voicebridge.reconnect.result", "reconnected")
            span.set_attribute("voicebridge.reconnect.gap_ms", entry["gap_ms"])
            span.set_attribute("voicebridge.reconnect.attempts", entry["attempts"])
            span.set_attribute("voicebridge.reconnect.conversation_kept", kept)
            span.end()
        log.info("call %s: Voice Live reconnected after %.0f ms", self.call.label, entry["gap_ms"])
        self.call.log.write("voicelive_reconnected", **entry)

    async def _limit_reached(
        self, tasks: dict[str, asyncio.Task[Any]], outcome: CallOutcome
    ) -> CallOutcome:
        log.warning("call %s: %s, ending the call", self.call.label, outcome)
        self.call.log.write("limit_reached", limit=outcome)
        if outcome is CallOutcome.MAX_DURATION:  # the caller is there: say goodbye first
            await self._say_and_hang_up(tasks, "goodbye")
        else:
            await self.ctx.hang_up(self.call)
        return await self._finish(outcome)

    async def _say_and_hang_up(self, tasks: dict[str, asyncio.Task[Any]], prompt: str) -> None:
        """Play a shipped prompt, wait until the caller heard it, then hang up."""
        bridge = self.bridge
        bridge.play_prompt(prompt_pcm(prompt, bridge.acs_hz), self.now())
        self._wake.set()
        acs_task = tasks.get("acs")
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if acs_task is not None and acs_task.done():
                break  # the caller is gone already
            if bridge.played_out(self.now()):
                break
            await asyncio.sleep(0.02)
        await self.ctx.hang_up(self.call)

    async def _call_still_connected(self) -> bool:
        """ACS sent nothing for ``MEDIA_IDLE_TIMEOUT_S``: ask Call Automation whether the
        call is still connected. No source says whether ACS keeps streaming through
        silence or hold (protocol audit §3), so a quiet caller is never hung up on the
        media clock alone; a call ACS no longer knows is. An unanswered question keeps
        the call too (the next idle period asks again; ``MAX_CALL_DURATION_S`` bounds it)."""
        state = await self.ctx.call_state(self.call)
        gap_s = round(time.perf_counter() - self._last_acs_rx, 1)
        if state in ("connected", "unknown"):
            log.info(
                "call %s: no media for %.1f s, call %s: keeping it", self.call.label, gap_s, state
            )
            self.call.log.write("media_idle", gap_s=gap_s, call_state=state)
            observations.observe("acs_media_gap", gap_s=gap_s, call_state=state)
            self._last_acs_rx = time.perf_counter()
            return True
        return False

    async def _finish(self, outcome: CallOutcome) -> CallOutcome:
        bridge = self.bridge
        bridge.finish()  # flushes the uplink resampler: the caller's last samples
        if self.session is not None and bridge.voicelive_pending:
            try:
                async with asyncio.timeout(2.0):
                    await self._send_voicelive()
            except Exception as exc:  # Voice Live may be gone already
                log.info("call %s: final append not sent: %s", self.call.label, type(exc).__name__)
        if bridge.events_pending:
            self._drain_events()
        report = bridge.report()
        report["inbound_latency_ms"] = self.inbound_latency_ms.summary()
        if self._levels is not None and self._levels.sampled:  # a call shorter than the window
            observations.observe("acs_inbound_during_playback", **self._levels.report())
            self._levels = None
        counters = report["counters"]
        if counters["acs_frames_in"]:
            observations.observe(
                "acs_silent_frames",
                frames=counters["acs_frames_in"],
                silent_frames=counters["acs_silent_frames"],
                longest_gap_ms=round(self._max_acs_gap_s * 1000.0),
            )
        self.ctx.stats.call_finished(
            report,
            self.inbound_latency_ms,
            bridge.outbound_latency_ms,
            outbound_scale=1.0 / self.speed,
        )
        if self.speed != 1.0:  # the core measured on the media clock: back to real ms
            report["outbound_latency_ms"] = {
                k: (v if k == "count" else round(v / self.speed, 3))
                for k, v in report["outbound_latency_ms"].items()
            }
        report["voicelive_close_code"] = self.voicelive_close_code
        report["session_id"] = bridge.session_id
        report["conversation_id"] = bridge.conversation_id
        report["reconnects"] = self.reconnects
        report["media_sockets"] = self.sockets
        self.call.report = report
        c = report["counters"]
        log.info(
            "call %s: media ended (%s): %d frames in, %d out, %d responses, %d barge-ins, "
            "%d reconnects",
            self.call.label,
            outcome,
            c.get("acs_frames_in", 0),
            c.get("acs_frames_out", 0),
            c.get("responses_created", 0),
            c.get("barge_ins", 0),
            len(self.reconnects),
        )
        self.call.log.write(
            "counters",
            inbound=report["inbound"],
            outbound=report["outbound"],
            guard=report["guard"],
            counters=report["counters"],
            reconnects=self.reconnects,
        )
        return outcome


def _brief(event: BridgeEvent) -> str:
    return ", ".join(f"{k}={v}" for k, v in as_record(event).items() if k != "event")[:300]
