"""The relay's three loops, each feeding the core and then draining it (design.md §1).

* :func:`acs_pump` — reads the ACS media socket, feeds the core, sends what the core
  queued for Voice Live;
* :func:`voicelive_pump` — the *only* reader of the Voice Live connection (protocols
  §6.4): feeds the core, sends its Voice Live messages, wakes the pacer;
* :func:`pacer` — the *only* writer of the ACS socket: control messages at once, agent
  audio in frames ``PACING_LEAD_MS`` ahead of real time.

They are typed against small callables (:data:`Receive`, :data:`ReceiveBytes`,
:data:`SendText`, the starlette ``types.py`` idea) and a :class:`Host` — what they
need from the relay — so they run against plain functions in unit tests.

The pacer's wake-up contract (:class:`PacerAlarm`)
--------------------------------------------------

The pacer sleeps until the next thing for ACS is due. Whoever queues something for
ACS outside the pacer (the Voice Live pump after each event, the supervisor's prompts)
must tell the alarm, which wakes the pacer only if the new thing is due *sooner* than
the pacer planned to look:

* ``alarm.wakes_at`` is the media time the pacer will next look: ``IDLE`` (+inf) while
  nothing is queued, the due time of the next frame while it sleeps for it, ``AWAKE``
  (-inf) while it is sending (it reads ``next_acs_due()`` again before it sleeps, so
  nothing queued meanwhile can be missed: one event loop, no preemption);
* ``CallBridge.next_acs_due()`` is -inf while a control message (``StopAudio``) is
  pending, which is sooner than any frame: :meth:`PacerAlarm.queued` then wakes a
  sleeping pacer, which sends control messages first (``acs_to_send``). So a
  ``StopAudio`` queued while the pacer sleeps until a far-future frame leaves within
  one turn of its loop (tests/unit/relay/test_pumps.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from azure.ai.voicelive.aio import ConnectionClosed

from voicebridge import observations
from voicebridge.clock import Clock
from voicebridge.core.bridge import CallBridge
from voicebridge.core.stats import Histogram

__all__ = [
    "PACER_BATCH_S",
    "AcsOutbox",
    "AcsWatch",
    "Host",
    "PacerAlarm",
    "Receive",
    "ReceiveBytes",
    "SendText",
    "acs_pump",
    "pacer",
    "voicelive_pump",
]

#: The pacer also sends frames due this soon (media seconds), so it wakes about once per
#: 40 ms of agent audio whatever the frame length (with 20 ms frames: -7 % bridge CPU at
#: 100 calls; with 40 ms frames a longer batch measured no better, docs/performance.md).
PACER_BATCH_S = 0.040

#: One ASGI WebSocket message (``{"type": "websocket.receive", "text": ...}``).
Message = Mapping[str, Any]
#: Reads the ACS socket (starlette's ``WebSocket.receive``).
Receive = Callable[[], Awaitable[Message]]
#: Reads one raw Voice Live frame (the SDK connection's ``recv_bytes``).
ReceiveBytes = Callable[[], Awaitable[bytes]]
#: Sends one text message (``WebSocket.send_text``, ``OpenSession.send_text``).
SendText = Callable[[str], Awaitable[None]]


class Host(Protocol):
    """What the pumps need from the relay."""

    voicelive_close_code: int | None

    @property
    def voicelive_open(self) -> bool:
        """A Voice Live session is connected (caller audio waits in the core otherwise)."""
        ...

    async def send_voicelive(self) -> None:
        """Send what the core queued for Voice Live (one writer at a time)."""
        ...

    def drain_events(self) -> None:
        """Hand the core's events to the relay (log, tracing, reconnect completion)."""
        ...


class AcsOutbox(Protocol):
    """The core's side of the pacer (:class:`~voicebridge.core.bridge.CallBridge`)."""

    def next_acs_due(self) -> float | None: ...

    def acs_to_send(self, now: float, ahead: float = 0.0) -> list[str]: ...


#: ``PacerAlarm.wakes_at`` while nothing is queued for ACS.
IDLE = float("inf")
#: ``PacerAlarm.wakes_at`` while the pacer is sending: nobody needs to wake it.
AWAKE = float("-inf")


class PacerAlarm:
    """The pacer's wake-up (see the module docstring for the contract)."""

    __slots__ = ("event", "wakes_at")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.wakes_at = IDLE  # media time the pacer will next look

    def queued(self, due: float | None) -> None:
        """Something for ACS is due at ``due`` (``next_acs_due()``; -inf: a control
        message): wake the pacer if it planned to look later."""
        if due is not None and due < self.wakes_at:
            self.event.set()

    def wake(self) -> None:
        """Wake the pacer regardless (a prompt was queued)."""
        self.event.set()


class AcsWatch:
    """What the ACS pump measures: when ACS last sent (real seconds), the longest wait
    between two messages, inbound latency (ms), and the caller's levels while the agent
    plays (the echo question, sampled until observed once)."""

    __slots__ = ("last_rx", "latency_ms", "levels", "max_gap_s")

    def __init__(self, now: float) -> None:
        self.last_rx = now
        self.max_gap_s = 0.0
        self.latency_ms = Histogram()
        self.levels = (
            None
            if observations.observed("acs_inbound_during_playback")
            else observations.InboundLevels()
        )

    def sample_levels(self, data: str | bytes, playing: bool) -> None:
        levels = self.levels
        if levels is not None and levels.feed(data, playing):
            observations.observe("acs_inbound_during_playback", **levels.report())
            self.levels = None


async def acs_pump(
    receive: Receive, bridge: CallBridge, host: Host, watch: AcsWatch, real_now: Callable[[], float]
) -> None:
    """Until the ACS socket closes: feed each message to the core, send what it queued
    for Voice Live (timed: inbound latency)."""
    latency = watch.latency_ms
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        t0 = real_now()
        if t0 - watch.last_rx > watch.max_gap_s:
            watch.max_gap_s = t0 - watch.last_rx
        watch.last_rx = t0
        data = message.get("text") or message.get("bytes") or b""
        bridge.receive_acs(data)
        if watch.levels is not None:
            watch.sample_levels(data, bridge.frames_queued > 0)
        if bridge.voicelive_pending and host.voicelive_open:
            await host.send_voicelive()
            latency.add((real_now() - t0) * 1000.0)
        if bridge.events_pending:
            host.drain_events()


async def voicelive_pump(
    recv: ReceiveBytes,
    bridge: CallBridge,
    host: Host,
    alarm: PacerAlarm,
    media_now: Callable[[], float],
) -> None:
    """Until the session is unusable (closed — ``host.voicelive_close_code`` says how —
    or a run of frames that are not JSON objects): feed each frame to the core, send
    what it queued for Voice Live, and wake the pacer if ACS has something due sooner."""
    while True:
        # The SDK's recv() would also build a typed model of every event; the core
        # parses the raw frame once itself.
        try:
            raw = await recv()
            if not raw:
                raise ConnectionClosed(1006, "Empty WebSocket frame")
        except ConnectionClosed as exc:
            host.voicelive_close_code = exc.code
            return
        bridge.receive_voicelive(raw, media_now())
        if bridge.voicelive_unusable:
            if bridge.events_pending:
                host.drain_events()
            return
        if bridge.voicelive_pending:
            await host.send_voicelive()
        alarm.queued(bridge.next_acs_due())
        if bridge.events_pending:
            host.drain_events()


async def pacer(outbox: AcsOutbox, send: SendText, alarm: PacerAlarm, clock: Clock) -> None:
    """Sleep until the next frame is due (or a wake-up), then send what is due —
    including frames due within ``PACER_BATCH_S``, so each wake-up sends a couple of
    frames: half the wake-ups, and ACS still holds between the lead and
    lead + batch of audio."""
    wake = alarm.event
    loop = asyncio.get_running_loop()
    media_now = clock.media_now
    while True:
        due = outbox.next_acs_due()
        if due is None:
            alarm.wakes_at = IDLE
            wake.clear()
            await wake.wait()
            continue
        now = media_now()
        delay = clock.real_seconds(due - now)
        if delay > 0.001:
            alarm.wakes_at = due
            wake.clear()
            timer = loop.call_later(delay, wake.set)  # cheaper than asyncio.timeout
            await wake.wait()
            timer.cancel()
            continue
        alarm.wakes_at = AWAKE
        for text in outbox.acs_to_send(now, ahead=PACER_BATCH_S):
            await send(text)
