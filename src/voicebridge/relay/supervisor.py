"""``MediaRelay.run``: supervise one call's tasks until the call ends, and say why.

Tasks: the three pumps (:mod:`voicebridge.relay.pumps`), :meth:`Supervisor.timers`,
and waits on ``CallDisconnected`` (``hangup``), the drain grace (``drain``) and a new
ACS socket (``newsock``).

When the Voice Live session is replaced (a :class:`ReplaceReason`):

* the Voice Live pump ended: ``VOICELIVE_CLOSED`` (socket closed, or unreadable frames);
* :meth:`Supervisor.timers` got one from the core's ``poll``: ``SESSION_UPDATE_TIMEOUT``,
  ``RESPONSE_TIMEOUT``, ``RESPONSE_STALLED``, ``SESSION_EXPIRING``.

:meth:`Supervisor.reconnect` then tries within ``VOICELIVE_RECONNECT_BUDGET_S`` with
back-off, keeping the conversation (agent mode: the same conversation id; model mode:
the transcript is replayed); caller audio is held meanwhile. A session lost before it
confirmed its configuration carries the gap's budget and attempts on.

When the call ends (a :class:`CallOutcome`, every exit in :meth:`Supervisor.run`):

* ``CALLER_HUNG_UP`` (or the outcome the callbacks set): ``CallDisconnected``;
* ``APOLOGY_HANGUP``: no Voice Live at the start, or the reconnect budget ran out;
* ``MEDIA_IDLE_TIMEOUT``: no ACS media for ``MEDIA_IDLE_TIMEOUT_S`` *and* Call
  Automation no longer knows the call (:meth:`Supervisor.call_still_connected`);
* ``MAX_DURATION``: ``MAX_CALL_DURATION_S`` (goodbye first);
* ``MEDIA_LOST``: the ACS socket closed without ``CallDisconnected``, no new one came
  within ``ACS_RECONNECT_GRACE_S`` (a second socket for the call replaces the first) and
  Call Automation still knows the call (if it does not, the caller hung up and its
  callback went astray: ``CALLER_HUNG_UP``);
* ``DRAINED``: SIGTERM's ``DRAIN_GRACE_S`` is over (goodbye first);
* ``MOVED``: another node claimed the call's media (many nodes): no hang-up, the call
  goes on there;
* ``ERROR``: the pacer failed.

Limits are in real time, the core's timers in media time (:mod:`voicebridge.clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from voicebridge import observations
from voicebridge.calls import CallOutcome
from voicebridge.config import Settings
from voicebridge.core.events import ReplaceReason
from voicebridge.core.stats import Histogram
from voicebridge.errors import UpstreamUnavailable
from voicebridge.relay import MediaRelay, PendingReconnect
from voicebridge.relay.prompts import prompt_pcm
from voicebridge.relay.pumps import acs_pump, pacer, voicelive_pump
from voicebridge.voicelive.session import OpenSession

log = logging.getLogger("voicebridge.relay")

#: After CallDisconnected, how long the media socket may stay open with the caller's last
#: frames before the call is finished anyway (real seconds; ACS closes it right away).
DISCONNECT_READ_S = 1.0
#: Outcomes in which the other party left first: agent audio still queued is not a loss.
PARTY_LEFT = frozenset(
    {CallOutcome.CALLER_HUNG_UP, CallOutcome.CALLEE_HUNG_UP, CallOutcome.TRANSFERRED}
)
#: How long a goodbye or apology may play before the hang-up regardless (real seconds).
PROMPT_DEADLINE_S = 15.0

Tasks = dict[str, asyncio.Task[Any]]


def usage(counters: dict[str, Any], s: Settings) -> dict[str, Any]:
    """The call's token use (summed ``response.usage``) and its estimated cost in USD at
    the configured per-million prices. Cached input tokens are part of the input
    tokens, charged at the cached price instead."""
    tokens = {
        "input_text": counters.get("tokens_input_text", 0),
        "input_audio": counters.get("tokens_input_audio", 0),
        "input_cached": counters.get("tokens_input_cached", 0),
        "output_text": counters.get("tokens_output_text", 0),
        "output_audio": counters.get("tokens_output_audio", 0),
    }
    inputs = tokens["input_text"] + tokens["input_audio"]
    cached = min(tokens["input_cached"], inputs)
    # Cached tokens are charged at the cached price, taken off audio first (the bulk).
    cached_audio = min(cached, tokens["input_audio"])
    cached_text = cached - cached_audio
    cost = (
        (tokens["input_text"] - cached_text) * s.price_input_text_per_m
        + (tokens["input_audio"] - cached_audio) * s.price_input_audio_per_m
        + cached * s.price_input_cached_per_m
        + tokens["output_text"] * s.price_output_text_per_m
        + tokens["output_audio"] * s.price_output_audio_per_m
    ) / 1e6
    return {
        **tokens,
        "total": inputs + tokens["output_text"] + tokens["output_audio"],
        "cost_usd": round(cost, 6),
    }


class Supervisor:
    """One run of a :class:`~voicebridge.relay.MediaRelay` (see the module docstring)."""

    def __init__(self, relay: MediaRelay) -> None:
        self.relay = relay
        self.call = relay.call
        self.bridge = relay.bridge
        self.settings = relay.settings
        self.clock = relay.clock
        self.services = relay.services
        self.tasks: Tasks = {}

    # ------------------------------------------------------------------ tasks

    def _start_acs(self) -> None:
        relay, label = self.relay, self.call.label
        self.tasks["acs"] = asyncio.create_task(
            acs_pump(relay.ws.receive, self.bridge, relay, relay.acs, self.clock.real_now),
            name=f"acs-{label}",
        )
        self.tasks["pacer"] = asyncio.create_task(
            pacer(self.bridge, relay.ws.send_text, relay.alarm, self.clock), name=f"pacer-{label}"
        )

    def _start_voicelive(self, session: OpenSession) -> None:
        relay = self.relay
        relay.session = session
        self.tasks["voicelive"] = asyncio.create_task(
            voicelive_pump(
                session.connection.recv_bytes,
                self.bridge,
                relay,
                relay.alarm,
                self.clock.media_now,
            ),
            name=f"vl-{self.call.label}",
        )

    async def run(self) -> CallOutcome:
        """Relay until the call ends; return the outcome."""
        call, tasks = self.call, self.tasks
        log.info(
            "call %s: media connected; relaying ACS %d Hz <-> Voice Live %d Hz",
            call.label,
            self.bridge.acs_hz,
            self.settings.voicelive_audio_rate,
        )
        try:
            self._start_acs()
            tasks["hangup"] = asyncio.create_task(call.disconnected.wait(), name="disconnected")
            tasks["drain"] = asyncio.create_task(call.drain_now.wait(), name="drain")
            tasks["timers"] = asyncio.create_task(self.timers(), name=f"timers-{call.label}")
            tasks["newsock"] = asyncio.ensure_future(self.relay.new_socket())
            tasks["moved"] = asyncio.create_task(call.moved.wait(), name="moved")
            try:
                await self._first_connect()
            except UpstreamUnavailable as exc:
                log.error("call %s: %s", call.label, exc)
                call.log.write("voicelive_unavailable", error=str(exc))
                await self._say_and_hang_up("apology")
                return await self._finish(CallOutcome.APOLOGY_HANGUP)
            if self.relay.session is None:  # the call ended while we were connecting
                return await self._end_by()
            return await self._supervise()
        finally:
            await self._stop()

    async def _supervise(self) -> CallOutcome:
        """The main loop: act on whichever task ended first."""
        call, tasks = self.call, self.tasks
        while True:
            done, _ = await asyncio.wait(set(tasks.values()), return_when=asyncio.FIRST_COMPLETED)
            if tasks["moved"] in done:
                return await self._let_go()
            if tasks["hangup"] in done:
                await self._read_to_close()
                return await self._finish(call.outcome or CallOutcome.CALLER_HUNG_UP)
            if tasks["newsock"] in done:
                await self._swap_socket()
                continue
            if tasks["acs"] in done:
                if not await self._await_acs_reconnect():
                    return await self._end_by(lost=True)
                continue
            if tasks["drain"] in done:
                log.info("call %s: drain grace over: goodbye", call.label)
                await self._say_and_hang_up("goodbye")
                return await self._finish(CallOutcome.DRAINED)
            if tasks["pacer"] in done:
                tasks["pacer"].result()  # re-raise whatever stopped the pacer
                return await self._finish(CallOutcome.ERROR)
            reason: CallOutcome | ReplaceReason | None = None
            if "voicelive" in tasks and tasks["voicelive"] in done:
                tasks.pop("voicelive").result()
                reason = ReplaceReason.VOICELIVE_CLOSED
            elif tasks["timers"] in done:
                reason = tasks["timers"].result()
                tasks["timers"] = asyncio.create_task(self.timers(), name="timers")
            if reason is CallOutcome.MEDIA_IDLE_TIMEOUT and await self.call_still_connected():
                continue  # silence or hold, not a dead call: keep it
            if isinstance(reason, CallOutcome):
                return await self._limit_reached(reason)
            if isinstance(reason, ReplaceReason) and not await self.reconnect(reason):
                await self._say_and_hang_up("apology")
                return await self._finish(CallOutcome.APOLOGY_HANGUP)

    async def _stop(self) -> None:
        relay = self.relay
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(BaseException):
                await task
        if relay.session is not None:
            await relay.session.close()
        relay.release_all()
        relay.tracing.end()

    async def timers(self) -> CallOutcome | ReplaceReason:
        """Return the first reason the call must change course: a limit (ACS silent
        for ``MEDIA_IDLE_TIMEOUT_S`` — it streams 50 frames a second, silence
        included — or the call longer than ``MAX_CALL_DURATION_S``), or the core's
        reason to replace the session (its timeouts, or ``expires_at`` near: the core
        is given the wall clock for that). Limits are in real time."""
        s, relay, bridge, clock = self.settings, self.relay, self.bridge, self.clock
        tick = min(0.25, s.media_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            now = clock.real_now()
            if now - relay.acs.last_rx > s.media_idle_timeout_s:
                return CallOutcome.MEDIA_IDLE_TIMEOUT
            if now - relay._started > s.max_call_duration_s:
                return CallOutcome.MAX_DURATION
            ending = self._ending(now)
            if ending is not None:
                return ending
            if relay.session is None:
                continue
            reason = bridge.poll(clock.media_now(), clock.wall_now())
            if bridge.voicelive_pending:
                await relay.send_voicelive()
            if bridge.events_pending:
                relay.drain_events()
            if reason is not None:
                return reason

    def _ending(self, now: float) -> CallOutcome | None:
        """The agent ended the call and its goodbye has played (or took too long to);
        or the silent-caller watchdog gave up."""
        control, bridge = self.relay.control, self.bridge
        if control.ending:
            heard = bridge.responses.is_idle and bridge.played_out(self.clock.media_now())
            if heard or now - control.ending_since > PROMPT_DEADLINE_S:
                return CallOutcome.AGENT_HUNG_UP
        if bridge.giving_up:
            return CallOutcome.NO_INPUT
        return None

    # ------------------------------------------------------------------ Voice Live

    async def _first_connect(self) -> None:
        """Connect, unless the call ends first (then ``relay.session`` stays None)."""
        tasks = self.tasks
        connect = asyncio.create_task(self._open(), name=f"connect-{self.call.label}")
        enders = {tasks["acs"], tasks["hangup"], tasks["timers"], tasks["drain"], tasks["moved"]}
        done, _ = await asyncio.wait({connect, *enders}, return_when=asyncio.FIRST_COMPLETED)
        if connect not in done:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            return
        self._start_voicelive(connect.result())

    async def _open(self, timeout_s: float | None = None, attempt: int = 0) -> OpenSession:
        s, call, relay = self.settings, self.call, self.relay
        agent = s.mode == "agent"
        with self.services.telemetry.use(
            "voicelive.connect",
            relay.tracing.connect_parent(),
            **{
                "voicebridge.mode": s.mode,
                "server.address": s.voicelive_host,
                "voicebridge.reconnect_attempt": attempt or None,
            },
        ) as span:
            session = await self.services.open_session(
                call_id=call.call_connection_id or call.correlation_id,
                conversation_id=(self.bridge.conversation_id or call.conversation_id)
                if agent
                else None,
                timeout_s=timeout_s,
            )
            span.set_attribute("voicebridge.connect_ms", round(session.connect_ms, 1))
        log.info("call %s: Voice Live connected in %.0f ms", call.label, session.connect_ms)
        call.log.write("voicelive_connected", connect_ms=round(session.connect_ms, 1))
        return session

    async def reconnect(self, reason: ReplaceReason) -> bool:
        """Replace the Voice Live session within the budget; False if it cannot be done."""
        call, relay, bridge, s = self.call, self.relay, self.bridge, self.settings
        real_now = self.clock.real_now
        lost_at = real_now()
        attempt = 0
        # A session lost before it confirmed its configuration (refused by the service:
        # agent not found, conflicting agent config, ...) does not end the gap: the budget
        # and the attempts run on from the first loss, with the same back-off.
        retrying = relay.pending_reconnect
        if retrying is not None:
            lost_at, attempt = retrying.lost_at, retrying.attempts
            relay.pending_reconnect = None
        self._reconnect_started(reason)
        old_conversation = bridge.conversation_id
        if "voicelive" in self.tasks:
            self.tasks.pop("voicelive").cancel()
        if relay.session is not None:
            await relay.session.close()
            relay.session = None
        bridge.voicelive_lost(self.clock.media_now())
        relay.drain_events()
        deadline = lost_at + s.voicelive_reconnect_budget_s
        delay = min(0.2 * 2**attempt, 2.0)
        if retrying is not None:
            await asyncio.sleep(min(delay, max(0.0, deadline - real_now())))
        while True:
            if call.disconnected.is_set() or call.drain_now.is_set():
                return True  # the main loop ends the call
            attempt += 1
            left = deadline - real_now()
            if left <= 0:
                break
            try:
                session = await self._open(
                    timeout_s=min(s.voicelive_connect_timeout_s, left), attempt=attempt
                )
            except UpstreamUnavailable as exc:
                log.warning("call %s: reconnect attempt %d failed: %s", call.label, attempt, exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - real_now())))
                delay = min(delay * 2, 2.0)
                continue
            relay.pending_reconnect = PendingReconnect(
                at_s=round(relay.call_time(), 3),
                reason=reason,
                attempts=attempt,
                lost_at=lost_at,
                old_conversation=old_conversation,
            )
            self._start_voicelive(session)
            return True
        log.error(
            "call %s: Voice Live reconnect failed within %.1f s",
            call.label,
            s.voicelive_reconnect_budget_s,
        )
        call.log.write("voicelive_reconnect_failed", attempts=attempt - 1)
        relay.tracing.reconnect_failed(attempt - 1)
        return False

    def _reconnect_started(self, reason: ReplaceReason) -> None:
        """Log the loss and open the reconnect span (ending one left open)."""
        call, code = self.call, self.relay.voicelive_close_code
        log.warning(
            "call %s: Voice Live %s (close code %s): reconnecting", call.label, reason, code
        )
        call.log.write("voicelive_reconnecting", reason=reason, code=code)
        self.relay.tracing.reconnect_started(reason, code)

    # ------------------------------------------------------------------ ACS socket

    async def _swap_socket(self) -> None:
        relay, tasks = self.relay, self.tasks
        new = relay.take_new_socket()
        for name in ("acs", "pacer"):
            tasks[name].cancel()
            with contextlib.suppress(BaseException):
                await tasks[name]
        old, relay.ws = relay.ws, new
        with contextlib.suppress(Exception):
            await old.close(code=1000)
        relay.release(old)
        relay.sockets += 1
        relay.acs.last_rx = self.clock.real_now()
        self.call.media_closed.clear()
        log.info("call %s: media socket replaced (socket %d)", self.call.label, relay.sockets)
        self.call.log.write("media_socket_replaced", socket=relay.sockets)
        self.bridge.acs_socket_replaced(self.clock.media_now())
        self._start_acs()
        tasks["newsock"] = asyncio.ensure_future(relay.new_socket())

    async def _await_acs_reconnect(self) -> bool:
        """The ACS socket closed: True if a new one came within the grace period."""
        call = self.call
        call.media_closed.set()
        if call.disconnected.is_set():
            return False
        tasks = self.tasks
        grace = self.settings.acs_reconnect_grace_s
        if call.migrating:  # the new socket goes to another node, which takes the call
            grace = max(grace, self.settings.drain_migrate_deadline_s)
        done, _ = await asyncio.wait(
            {tasks["newsock"], tasks["hangup"], tasks["moved"]},
            timeout=grace,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if tasks["newsock"] in done:
            await self._swap_socket()
            return True
        return False

    async def call_still_connected(self) -> bool:
        """ACS sent nothing for ``MEDIA_IDLE_TIMEOUT_S``: ask Call Automation whether the
        call is still connected. No source says whether ACS keeps streaming through
        silence or hold (protocol audit §3), so a quiet caller is never hung up on the
        media clock alone; a call ACS no longer knows is. An unanswered question keeps
        the call too (the next idle period asks again; ``MAX_CALL_DURATION_S`` bounds it)."""
        call, acs = self.call, self.relay.acs
        state = await self.services.call_state(call)
        gap_s = round(self.clock.real_now() - acs.last_rx, 1)
        if state in ("connected", "unknown"):
            log.info("call %s: no media for %.1f s, call %s: keeping it", call.label, gap_s, state)
            call.log.write("media_idle", gap_s=gap_s, call_state=state)
            observations.observe("acs_media_gap", gap_s=gap_s, call_state=state)
            acs.last_rx = self.clock.real_now()
            return True
        return False

    # ------------------------------------------------------------------ endings

    async def _end_by(self, *, lost: bool = False) -> CallOutcome:
        """The call ended before or outside the main loop: find out how."""
        tasks, call = self.tasks, self.call
        timers = tasks["timers"]
        if timers.done() and isinstance(limit := timers.result(), CallOutcome):
            return await self._limit_reached(limit)
        if call.moved.is_set():
            return await self._let_go()
        if tasks["drain"].done():
            await self._say_and_hang_up("goodbye")
            return await self._finish(CallOutcome.DRAINED)
        if lost and not call.disconnected.is_set():
            if await self.services.call_state(call) == "gone":
                # ACS ended the call and its CallDisconnected never reached us (it went
                # to another node while Redis was down, or was lost): the caller hung up.
                log.info("call %s: media closed and ACS says the call is over", call.label)
                return await self._finish(CallOutcome.CALLER_HUNG_UP)
            log.warning("call %s: media socket lost and not reopened: hanging up", call.label)
            await self.services.hang_up(call)  # not if another node has it now
            if call.moved.is_set():
                return await self._let_go()
            return await self._finish(CallOutcome.MEDIA_LOST)
        return await self._finish(call.outcome or CallOutcome.CALLER_HUNG_UP)

    async def _read_to_close(self) -> None:
        """``CallDisconnected`` came: read what ACS had already sent until it closes the
        media socket (at once, or :data:`DISCONNECT_READ_S` at most), so that the caller's
        last frames, still on the wire behind a busy event loop, reach Voice Live too."""
        reader = self.tasks["acs"]
        if not reader.done():
            await asyncio.wait({reader}, timeout=DISCONNECT_READ_S)

    async def _let_go(self) -> CallOutcome:
        """Another node claimed the call's media (many nodes): stop here, no hang-up."""
        log.info("call %s: taken over by another node: letting go", self.call.label)
        self.call.log.write("moved")
        return await self._finish(CallOutcome.MOVED)

    async def _limit_reached(self, outcome: CallOutcome) -> CallOutcome:
        if outcome is CallOutcome.AGENT_HUNG_UP:
            log.info("call %s: the agent ended the call", self.call.label)
            self.call.log.write("agent_hung_up")
        else:
            log.warning("call %s: %s, ending the call", self.call.label, outcome)
            self.call.log.write("limit_reached", limit=outcome)
        if outcome in (CallOutcome.MAX_DURATION, CallOutcome.NO_INPUT):
            await self._say_and_hang_up("goodbye")  # the caller is there: goodbye first
        else:
            await self.services.hang_up(self.call)
        return await self._finish(outcome)

    async def _say_and_hang_up(self, prompt: str) -> None:
        """Play a shipped prompt, wait until the caller heard it, then hang up."""
        bridge, clock = self.bridge, self.clock
        bridge.play_prompt(prompt_pcm(prompt, bridge.acs_hz), clock.media_now())
        self.relay.alarm.wake()
        acs_task = self.tasks.get("acs")
        deadline = clock.real_now() + PROMPT_DEADLINE_S
        while clock.real_now() < deadline:
            if acs_task is not None and acs_task.done():
                break  # the caller is gone already
            if bridge.played_out(clock.media_now()):
                break
            await asyncio.sleep(0.02)
        await self.services.hang_up(self.call)

    async def _finish(self, outcome: CallOutcome) -> CallOutcome:
        relay, bridge = self.relay, self.bridge
        # Flushes the uplink resampler (the caller's last samples); agent audio still
        # queued when the caller hung up or went to a person had nobody left to reach.
        bridge.finish(party_left=outcome in PARTY_LEFT)
        if relay.session is not None and bridge.voicelive_pending:
            try:
                async with asyncio.timeout(2.0):
                    await relay.send_voicelive()
            except Exception as exc:  # Voice Live may be gone already
                log.info("call %s: final append not sent: %s", self.call.label, type(exc).__name__)
        if bridge.events_pending:
            relay.drain_events()
        report = bridge.report()
        report["inbound_latency_ms"] = relay.acs.latency_ms.summary()
        self._observe_acs(report["counters"])
        report["usage"] = usage(report["counters"], self.settings)
        # The core measured outbound latency on the media clock: back to real ms.
        scale = self.clock.real_seconds(1.0)
        outbound = Histogram()
        outbound.merge_scaled(bridge.outbound_latency_ms, scale)
        self.services.stats.call_finished(report, relay.acs.latency_ms, outbound)
        if scale != 1.0:
            report["outbound_latency_ms"] = {
                k: (v if k == "count" else round(v * scale, 3))
                for k, v in report["outbound_latency_ms"].items()
            }
        report["voicelive_close_code"] = relay.voicelive_close_code
        report["session_id"] = bridge.session_id
        report["conversation_id"] = bridge.conversation_id
        report["reconnects"] = relay.reconnects
        report["media_sockets"] = relay.sockets
        relay.control.close()
        self.call.report = report
        self._log_counters(outcome, report)
        return outcome

    def _observe_acs(self, counters: dict[str, Any]) -> None:
        acs = self.relay.acs
        if acs.levels is not None and acs.levels.sampled:  # a call shorter than the window
            observations.observe("acs_inbound_during_playback", **acs.levels.report())
            acs.levels = None
        if counters["acs_frames_in"]:
            observations.observe(
                "acs_silent_frames",
                frames=counters["acs_frames_in"],
                silent_frames=counters["acs_silent_frames"],
                longest_gap_ms=round(acs.max_gap_s * 1000.0),
            )

    def _log_counters(self, outcome: CallOutcome, report: dict[str, Any]) -> None:
        c, reconnects = report["counters"], self.relay.reconnects
        log.info(
            "call %s: media ended (%s): %d frames in, %d out, %d responses, %d barge-ins, "
            "%d reconnects",
            self.call.label,
            outcome,
            c.get("acs_frames_in", 0),
            c.get("acs_frames_out", 0),
            c.get("responses_created", 0),
            c.get("barge_ins", 0),
            len(reconnects),
        )
        self.call.log.write(
            "counters",
            inbound=report["inbound"],
            outbound=report["outbound"],
            guard=report["guard"],
            counters=report["counters"],
            reconnects=reconnects,
        )
