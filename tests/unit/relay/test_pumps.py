"""The pumps against plain functions and fakes (no sockets): the pacer's wake-up
contract (relay/pumps.py), StopAudio leaving at once, and the pumps' ends."""

from __future__ import annotations

import asyncio
from typing import Any

from azure.ai.voicelive.aio import ConnectionClosed

from voicebridge.relay.pumps import AWAKE, IDLE, PacerAlarm, pacer, voicelive_pump

STOP = '{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}'


class Clock:
    """Media time stands still unless a test moves it; one media second = one real."""

    def __init__(self) -> None:
        self.t = 1000.0

    def media_now(self) -> float:
        return self.t

    def real_now(self) -> float:
        return self.t

    def wall_now(self) -> float:
        return self.t

    def real_seconds(self, media_s: float) -> float:
        return media_s


class Outbox:
    """The core's ACS queue as the pacer sees it: control messages first, due now
    (``next_acs_due`` -inf); frames at their due time."""

    def __init__(self) -> None:
        self.control: list[str] = []
        self.frames: list[tuple[float, str]] = []

    def next_acs_due(self) -> float | None:
        if self.control:
            return float("-inf")
        return self.frames[0][0] if self.frames else None

    def acs_to_send(self, now: float, ahead: float = 0.0) -> list[str]:
        out, self.control = self.control, []
        while self.frames and self.frames[0][0] <= now + ahead:
            out.append(self.frames.pop(0)[1])
        return out


async def turns(n: int = 3) -> None:
    """Let the event loop run ``n`` times (no timers fire: nothing here sleeps)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_stop_audio_queued_while_the_pacer_sleeps_for_a_far_frame_leaves_at_once() -> None:
    clock, outbox, alarm = Clock(), Outbox(), PacerAlarm()
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    outbox.frames.append((clock.t + 3600.0, "far frame"))  # due in an hour
    task = asyncio.create_task(pacer(outbox, send, alarm, clock))
    try:
        await turns()
        assert alarm.wakes_at == clock.t + 3600.0  # asleep until the frame is due
        assert sent == []
        outbox.control.append(STOP)  # barge-in: the core queues StopAudio ...
        alarm.queued(outbox.next_acs_due())  # ... and the Voice Live pump tells the alarm
        await turns()  # one turn of the pacer's loop: no timer, no media time passes
        assert sent == [STOP]
        assert alarm.wakes_at == clock.t + 3600.0  # back to sleep for the frame
    finally:
        task.cancel()


async def test_the_alarm_wakes_only_for_something_sooner() -> None:
    alarm = PacerAlarm()
    assert alarm.wakes_at == IDLE
    alarm.queued(None)  # nothing queued
    assert not alarm.event.is_set()
    alarm.wakes_at = 10.0  # sleeping until a frame at 10 s
    alarm.queued(12.0)  # a later frame: no need to wake
    assert not alarm.event.is_set()
    alarm.queued(float("-inf"))  # a control message
    assert alarm.event.is_set()
    alarm.event.clear()
    alarm.wakes_at = AWAKE  # sending: it looks again before it sleeps
    alarm.queued(float("-inf"))
    assert not alarm.event.is_set()


async def test_a_pacer_with_nothing_queued_sleeps_until_woken() -> None:
    clock, outbox, alarm = Clock(), Outbox(), PacerAlarm()
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    task = asyncio.create_task(pacer(outbox, send, alarm, clock))
    try:
        await turns()
        assert alarm.wakes_at == IDLE
        outbox.frames.append((clock.t, "frame 1"))
        outbox.frames.append((clock.t + 0.02, "frame 2"))  # within the batch: sent too
        outbox.frames.append((clock.t + 0.5, "frame 3"))
        alarm.queued(outbox.next_acs_due())
        await turns()
        assert sent == ["frame 1", "frame 2"]
        assert alarm.wakes_at == clock.t + 0.5
    finally:
        task.cancel()


class Bridge:
    """Enough of CallBridge for the Voice Live pump: a speech_started frame queues
    StopAudio in the outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.voicelive_unusable = False
        self.voicelive_pending = False
        self.events_pending = False
        self.received: list[bytes] = []

    def receive_voicelive(self, raw: bytes, now: float) -> None:
        self.received.append(raw)
        if b"speech_started" in raw:
            self.outbox.control.append(STOP)

    def next_acs_due(self) -> float | None:
        return self.outbox.next_acs_due()


class Host:
    voicelive_close_code: int | None = None
    voicelive_open = True

    async def send_voicelive(self) -> None:
        raise AssertionError("nothing queued for Voice Live")

    def drain_events(self) -> None:
        pass


async def test_the_voicelive_pump_wakes_the_pacer_for_stop_audio() -> None:
    clock, outbox, alarm = Clock(), Outbox(), PacerAlarm()
    bridge, host = Bridge(outbox), Host()
    sent: list[str] = []
    frames: asyncio.Queue[bytes] = asyncio.Queue()

    async def send(text: str) -> None:
        sent.append(text)

    async def recv() -> bytes:
        raw = await frames.get()
        if raw == b"close":
            raise ConnectionClosed(1011, "gone")
        return raw

    outbox.frames.append((clock.t + 3600.0, "far frame"))
    pacing = asyncio.create_task(pacer(outbox, send, alarm, clock))
    pump = asyncio.create_task(
        voicelive_pump(recv, bridge, host, alarm, clock.media_now)  # type: ignore[arg-type]
    )
    try:
        await turns()
        frames.put_nowait(b'{"type":"input_audio_buffer.speech_started"}')
        await turns(4)
        assert sent == [STOP]
        frames.put_nowait(b"close")
        await asyncio.wait_for(pump, 1.0)
        assert host.voicelive_close_code == 1011
    finally:
        pacing.cancel()
        pump.cancel()


async def test_the_voicelive_pump_ends_on_an_empty_frame() -> None:
    outbox = Outbox()
    host = Host()

    async def recv() -> bytes:
        return b""

    bridge: Any = Bridge(outbox)
    await asyncio.wait_for(voicelive_pump(recv, bridge, host, PacerAlarm(), lambda: 0.0), 1.0)
    assert host.voicelive_close_code == 1006
