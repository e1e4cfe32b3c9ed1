"""The per-call media relay: thin async pumps around one :class:`CallBridge`.

Three tasks per call (design.md §1):

* **ACS pump** — reads the media WebSocket, feeds the core, sends what the core queued
  for Voice Live;
* **Voice Live pump** — the *only* reader of the SDK connection (protocols §6.4);
  feeds the core, sends its Voice Live messages, wakes the pacer;
* **pacer** — the *only* writer of the ACS socket: control messages at once,
  agent audio in 20 ms frames ``PACING_LEAD_MS`` ahead of real time.

Sends to Voice Live come from two pumps, so they go through one lock that covers
draining the core's outbox *and* sending it: order is preserved (``session.update``
before any audio) and writes never overlap.
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
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from starlette.websockets import WebSocket

from voicebridge.calls import Call
from voicebridge.core.audio import Resampler
from voicebridge.core.bridge import CallBridge
from voicebridge.core.stats import Histogram
from voicebridge.errors import UpstreamUnavailable
from voicebridge.voicelive.session import OpenSession, open_session, session_config

log = logging.getLogger(__name__)


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
    """Runs one call's media until either side ends; see the module docstring."""

    def __init__(self, ctx: Any, call: Call, websocket: WebSocket) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.call = call
        self.ws = websocket
        s = self.settings
        self.speed: float = s.media_clock_speed
        self.bridge = CallBridge(
            session_config=session_config(s),
            acs_hz=s.acs_audio_rate,
            voicelive_in_hz=s.voicelive_audio_rate,
            voicelive_out_hz=s.voicelive_audio_rate,
            greeting=s.greeting_mode,
            greeting_text=s.greeting_text,
            greeting_instructions=s.greeting_instructions,
            lead_ms=s.pacing_lead_ms,
            max_text_bytes=s.max_text_bytes,
            max_message_bytes=s.max_message_bytes,
        )
        self.session: OpenSession | None = None
        self.inbound_latency_ms = Histogram()
        self._vl_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.outcome = "completed"
        self.voicelive_close_code: int | None = None
        self._last_acs_rx = time.perf_counter()

    def now(self) -> float:
        """The media clock (seconds); runs ``MEDIA_CLOCK_SPEED`` times real time."""
        return time.monotonic() * self.speed

    # ------------------------------------------------------------------ pumps

    async def _send_voicelive(self) -> None:
        session = self.session
        if session is None:
            return
        async with self._vl_lock:
            messages = self.bridge.voicelive_to_send()
            send = session.connection.send
            for message in messages:
                await send(message)

    def _drain_records(self) -> None:
        records = self.bridge.records
        while records:
            record = records.popleft()
            self.call.log.write_record(record)
            event = record["event"]
            if event in (
                "acs_malformed",
                "voicelive_malformed",
                "voicelive_error",
                "guard_blocked",
            ):
                log.warning("call %s: %s %s", self.call.label, event, _brief(record))
            elif event == "session_created" and record.get("conversation_id"):
                self.call.conversation_id = record["conversation_id"]

    async def _acs_pump(self) -> str:
        receive = self.ws.receive
        bridge = self.bridge
        latency = self.inbound_latency_ms
        perf = time.perf_counter
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return "caller_hung_up"
            t0 = self._last_acs_rx = perf()
            bridge.receive_acs(message.get("text") or message.get("bytes") or b"")
            if bridge.voicelive_pending and self.session is not None:
                await self._send_voicelive()
                latency.add((perf() - t0) * 1000.0)
            if bridge.records:
                self._drain_records()

    async def _voicelive_pump(self) -> str:
        assert self.session is not None
        conn = self.session.connection
        bridge = self.bridge
        while True:
            try:
                event = await conn.recv()
            except ConnectionClosed as exc:
                self.voicelive_close_code = exc.code
                return "voicelive_closed"
            except VoiceLiveConnectionError as exc:  # a frame that is not JSON: count, go on
                bridge.counters.voicelive_malformed += 1
                log.warning("call %s: unreadable Voice Live frame: %s", self.call.label, exc)
                continue
            bridge.receive_voicelive(event, self.now())
            if bridge.voicelive_pending:
                await self._send_voicelive()
            if bridge.next_acs_due() is not None:
                self._wake.set()
            if bridge.records:
                self._drain_records()

    async def _pacer(self) -> None:
        bridge = self.bridge
        send = self.ws.send_text
        wake = self._wake
        while True:
            due = bridge.next_acs_due()
            if due is None:
                wake.clear()
                await wake.wait()
                continue
            delay = (due - self.now()) / self.speed
            if delay > 0.0005:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()
                continue
            for text in bridge.acs_to_send(self.now()):
                await send(text)

    async def _limits(self) -> str:
        """Return when a limit ends the call: ACS silent for ``MEDIA_IDLE_TIMEOUT_S``
        (it streams 50 frames a second, silence included, so quiet means dead) or the
        call longer than ``MAX_CALL_DURATION_S``. Both in real time."""
        s = self.settings
        started = time.perf_counter()
        tick = min(1.0, s.media_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.perf_counter()
            if now - self._last_acs_rx > s.media_idle_timeout_s:
                return "media_idle_timeout"
            if now - started > s.max_call_duration_s:
                return "max_duration"

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> str:
        """Relay until the call ends; return the outcome."""
        call = self.call
        tasks: dict[str, asyncio.Task[Any]] = {}
        try:
            tasks["acs"] = asyncio.create_task(self._acs_pump(), name=f"acs-{call.label}")
            tasks["pacer"] = asyncio.create_task(self._pacer(), name=f"pacer-{call.label}")
            tasks["hangup"] = asyncio.create_task(call.disconnected.wait(), name="disconnected")
            tasks["limits"] = asyncio.create_task(self._limits(), name=f"limits-{call.label}")
            connect = asyncio.create_task(self._connect(), name=f"connect-{call.label}")
            done, _ = await asyncio.wait(
                {connect, tasks["acs"], tasks["hangup"], tasks["limits"]},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if connect not in done:  # the call ended while we were connecting
                connect.cancel()
                with contextlib.suppress(BaseException):
                    await connect
                if tasks["limits"] in done:
                    return await self._limit_reached(tasks)
                return await self._finish(call.outcome or "caller_hung_up")
            try:
                await connect
            except UpstreamUnavailable as exc:
                log.error("call %s: %s", call.label, exc)
                call.log.write("voicelive_unavailable", error=str(exc))
                await self._apologise_and_hang_up(tasks)
                return await self._finish("apology_hangup")
            tasks["voicelive"] = asyncio.create_task(
                self._voicelive_pump(), name=f"vl-{call.label}"
            )
            done, _ = await asyncio.wait(
                {
                    tasks["acs"],
                    tasks["voicelive"],
                    tasks["pacer"],
                    tasks["hangup"],
                    tasks["limits"],
                },
                return_when=asyncio.FIRST_COMPLETED,
            )
            if tasks["acs"] in done or tasks["hangup"] in done:
                return await self._finish(call.outcome or "caller_hung_up")
            if tasks["limits"] in done:
                return await self._limit_reached(tasks)
            if tasks["voicelive"] in done:
                tasks["voicelive"].result()
                log.error(
                    "call %s: Voice Live closed (code %s)", call.label, self.voicelive_close_code
                )
                call.log.write("voicelive_closed", code=self.voicelive_close_code)
                await self._apologise_and_hang_up(tasks)
                return await self._finish("apology_hangup")
            tasks["pacer"].result()  # re-raise whatever stopped the pacer
            return await self._finish("error")
        finally:
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(BaseException):
                    await task
            if self.session is not None:
                await self.session.close()

    async def _connect(self) -> None:
        session = await open_session(
            self.settings,
            self.ctx.voicelive_credential,
            call_id=self.call.call_connection_id or self.call.correlation_id,
            conversation_id=self.call.conversation_id,
        )
        self.session = session
        self.call.log.write("voicelive_connected", connect_ms=round(session.connect_ms, 1))

    async def _limit_reached(self, tasks: dict[str, asyncio.Task[Any]]) -> str:
        outcome = tasks["limits"].result()
        log.warning("call %s: %s, ending the call", self.call.label, outcome)
        self.call.log.write("limit_reached", limit=outcome)
        if outcome == "max_duration":  # the caller is there: say goodbye first
            await self._apologise_and_hang_up(tasks, prompt="goodbye")
        else:
            await self.ctx.hang_up(self.call)
        return await self._finish(outcome)

    async def _apologise_and_hang_up(
        self, tasks: dict[str, asyncio.Task[Any]], prompt: str = "apology"
    ) -> None:
        """Play a shipped prompt, wait until the caller heard it, then hang up."""
        bridge = self.bridge
        bridge.play_prompt(prompt_pcm(prompt, bridge.acs_hz), self.now())
        self._wake.set()
        acs_task = tasks.get("acs")
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if acs_task is not None and acs_task.done():
                break  # the caller is gone already
            if bridge.frames_queued == 0 and self.now() >= bridge.playing_until:
                break
            await asyncio.sleep(0.02)
        await self.ctx.hang_up(self.call)

    async def _finish(self, outcome: str) -> str:
        bridge = self.bridge
        bridge.finish()  # flushes the uplink resampler: the caller's last samples
        if self.session is not None and bridge.voicelive_pending:
            try:
                async with asyncio.timeout(2.0):
                    await self._send_voicelive()
            except Exception as exc:  # Voice Live may be gone already
                log.info("call %s: final append not sent: %s", self.call.label, type(exc).__name__)
        if bridge.records:
            self._drain_records()
        report = bridge.report()
        report["inbound_latency_ms"] = self.inbound_latency_ms.summary()
        if self.speed != 1.0:  # the core measured on the media clock: back to real ms
            report["outbound_latency_ms"] = {
                k: (v if k == "count" else round(v / self.speed, 3))
                for k, v in report["outbound_latency_ms"].items()
            }
        self.ctx.stats.call_finished(
            report,
            self.inbound_latency_ms,
            bridge.outbound_latency_ms,
            outbound_scale=1.0 / self.speed,
        )
        report["voicelive_close_code"] = self.voicelive_close_code
        report["session_id"] = bridge.session_id
        report["conversation_id"] = bridge.conversation_id
        self.call.report = report
        self.call.log.write(
            "counters",
            inbound=report["inbound"],
            outbound=report["outbound"],
            guard=report["guard"],
            counters=report["counters"],
        )
        self.outcome = outcome
        return outcome


def _brief(record: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in record.items() if k != "event")[:300]
