"""Playout: the agent's audio, from Voice Live deltas to paced ACS frames (design.md §3).

Each ``response.audio.delta`` is resampled to the ACS rate (a pure delay: each
frame's worth of audio fills an ACS frame at once) and cut into frames of exactly
``frame_ms``; a response's last frame is zero-padded (counted apart). Frames are
sent paced ``lead_ms`` ahead of real time (ACS queues whatever it is sent, while
Voice Live's echo cancellation and ``auto_truncate`` assume the caller hears the
audio in real time): :meth:`Playout.acs_to_send` returns what is due at ``now``,
:meth:`Playout.next_acs_due` says when to ask again.

Barge-in (:meth:`Playout.interrupt`): ``StopAudio`` goes out before anything else,
the queued frames and what the resampler and framer hold are dropped, and late
deltas of the interrupted response are dropped as they arrive; all of it is counted
in ``samples_dropped_by_barge_in``.

Per response, the books (:class:`_Response`) keep what arrived and what was fed, so
:mod:`~voicebridge.core.accounting` can prove every agent sample was sent or dropped
on purpose.
"""

from __future__ import annotations

import binascii
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pybase64

from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.accounting import Accounting
from voicebridge.core.audio import Framer, Resampler
from voicebridge.core.events import AcsSocketReplaced, BridgeEvent, VoiceLiveMalformed

__all__ = ["Playout", "PlayoutConfig"]


@dataclass(frozen=True, slots=True)
class PlayoutConfig:
    #: how far ahead of real time agent audio is sent
    lead_ms: float = 160.0
    #: the length of each ACS frame sent (20, 40, 60, 80 or 100 ms)
    frame_ms: int = 20

    def __post_init__(self) -> None:
        if self.frame_ms % 20 or not 20 <= self.frame_ms <= 100:
            raise ValueError(f"frame_ms must be 20, 40, 60, 80 or 100, not {self.frame_ms}")


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


class Playout:
    """Agent audio for one call: downlink resampler, framer, paced queue, barge-in."""

    __slots__ = (
        "_accounting",
        "_control",
        "_downlink",
        "_emit",
        "_framer",
        "_frames",
        "_play_end",
        "_responses",
        "_streaming",
        "frame_ms",
        "frame_s",
        "frame_samples",
        "lead_s",
        "voicelive_out_hz",
    )

    def __init__(
        self,
        accounting: Accounting,
        emit: Callable[[BridgeEvent], None],
        *,
        acs_hz: int,
        voicelive_out_hz: int,
        config: PlayoutConfig | None = None,
    ) -> None:
        config = config or PlayoutConfig()
        self._accounting = accounting
        self._emit = emit
        self.voicelive_out_hz = voicelive_out_hz
        self.lead_s = config.lead_ms / 1000.0
        self.frame_ms = config.frame_ms
        self.frame_s = config.frame_ms / 1000.0
        self._control: list[str] = []  # ACS control messages (StopAudio): sent first
        self._frames: deque[_Frame] = deque()
        self._play_end = 0.0  # when ACS will have played everything we sent
        self._responses: dict[str, _Response] = {}
        self._streaming: str | None = None  # response whose audio is in the resampler
        self.set_acs_rate(acs_hz)

    def set_acs_rate(self, acs_hz: int) -> None:
        """The ACS stream's rate (before any audio arrived)."""
        # Outbound frames may be longer than ACS's 20 ms: fewer WebSocket messages per
        # second of agent speech (ACS queues whatever it is sent).
        self.frame_samples = acs_hz * self.frame_ms // 1000
        # Downlink as a pure delay: each frame's worth of agent audio fills an ACS frame
        # at once, instead of the framer waiting on the samples compensation shifts.
        self._downlink = Resampler(
            in_hz=self.voicelive_out_hz, out_hz=acs_hz, compensate_delay=False
        )
        self._framer = Framer(frame_bytes=self.frame_samples * 2)

    # ------------------------------------------------------------------ agent audio in

    def response_created(self, response_id: str) -> None:
        self._responses.setdefault(response_id, _Response())

    def agent_audio(self, ev: vl.AudioDelta, now: float) -> None:
        """One ``response.audio.delta``: into the resampler and framer, frames queued."""
        accounting = self._accounting
        c = accounting.counters
        try:
            pcm = pybase64.b64decode(ev.delta, validate=True)  # 10-30x binascii strict
        except (binascii.Error, ValueError):
            c.voicelive_malformed += 1
            self._emit(VoiceLiveMalformed(error="response.audio.delta: invalid base64"))
            return
        n = len(pcm) >> 1
        c.agent_samples_in += n
        if accounting.agent_in_per_session:
            accounting.agent_in_per_session[-1] += n
        rid = ev.response_id
        resp = self._responses.get(rid)
        if resp is None:  # audio before (or without) response.created
            resp = self._responses[rid] = _Response()
        resp.samples_in += n
        if resp.suppressed:
            c.late_deltas_dropped += 1
            return
        if self._streaming is not None and self._streaming != rid:
            self.end_stream(self._streaming, now)
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

    def end_stream(self, response_id: str, now: float) -> None:
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

    def response_done(self, response_id: str, now: float) -> None:
        """``response.done``: the response's audio ends and is settled in the totals."""
        self.end_stream(response_id, now)
        resp = self._responses.pop(response_id, None)
        if resp is not None:
            self._settle(resp)

    def _settle(self, resp: _Response) -> None:
        """Add a finished response to the outbound totals (ACS-rate samples)."""
        if resp.finished:
            return
        resp.finished = True
        c = self._accounting.counters
        expected = self._downlink.output_for(resp.samples_in)
        fed = self._downlink.output_for(resp.samples_fed)
        c.agent_samples_expected += expected
        # Audio that arrived after the barge-in never entered the resampler.
        c.samples_dropped_by_barge_in += expected - fed

    def finish(self, now: float) -> None:
        """No more audio will come (the session or the call ended): the streaming
        response ends with what arrived and every response is settled."""
        if self._streaming is not None:
            self.end_stream(self._streaming, now)
        for resp in self._responses.values():
            self._settle(resp)

    def session_lost(self, now: float) -> None:
        """The Voice Live session is gone: audio already queued keeps playing."""
        self.finish(now)
        self._responses.clear()

    # ------------------------------------------------------------------ barge-in

    def interrupt(self, now: float, active_response_id: str | None) -> int:
        """The caller spoke: ``StopAudio`` first, drop queued and late agent audio of
        the streaming and the active response. Returns the samples dropped."""
        c = self._accounting.counters
        c.barge_ins += 1
        self._control.append(acs.stop_audio())
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
        if active_response_id is not None:
            self._responses.setdefault(active_response_id, _Response()).suppressed = True
        c.samples_dropped_by_barge_in += dropped
        return dropped

    # ------------------------------------------------------------------ prompts, sockets

    def play_prompt(self, pcm: bytes, now: float) -> None:
        """Queue a prompt (PCM16 at the ACS rate) for paced playback to the caller."""
        framer = Framer(frame_bytes=self.frame_samples * 2)
        for frame in framer.push(pcm):
            self._queue_frame(frame, now, prompt=True)
        last = framer.flush()
        if last is not None:
            self._queue_frame(last, now, prompt=True)

    def socket_replaced(self, now: float) -> None:
        """ACS opened a new media socket: what it queued on the old one is gone, so
        pacing restarts from now (nothing already sent is re-sent)."""
        self._play_end = now
        self._emit(AcsSocketReplaced())

    # ------------------------------------------------------------------ out to ACS

    def acs_to_send(self, now: float, ahead: float = 0.0) -> list[str]:
        """ACS messages due at ``now``: control first, then paced audio frames — also
        those due within ``ahead`` seconds (so a pacer can wake up less often)."""
        out = self._control
        self._control = []
        frames = self._frames
        if not frames:
            return out
        if self._play_end < now:  # ACS ran dry: playback restarts now
            self._play_end = now
        lead = self.lead_s
        horizon = now + ahead + lead - 1e-6  # float sums of frame lengths must not add one
        accounting = self._accounting
        c = accounting.counters
        latency = accounting.outbound_latency_ms
        frame_s = self.frame_s
        frame_samples = self.frame_samples
        play_end = self._play_end
        while frames and play_end < horizon:
            frame = frames.popleft()
            out.append(frame.text)
            c.acs_frames_out += 1
            c.agent_samples_sent += frame.agent_samples
            c.prompt_samples_sent += frame.prompt_samples
            if frame.agent_samples and frame.agent_samples < frame_samples:
                c.padding_samples_sent += frame_samples - frame.agent_samples
            due = play_end - lead
            late = now - (frame.stamp if frame.stamp > due else due)
            latency.add(late * 1000.0 if late > 0.0 else 0.0)  # sent early: no delay
            play_end += frame_s
        self._play_end = play_end
        return out

    def next_acs_due(self) -> float | None:
        """When :meth:`acs_to_send` next has something: ``-inf`` while a control
        message waits (send it now), None when nothing is queued."""
        if self._control:
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

    @property
    def queued_agent_samples(self) -> int:
        """Agent samples queued and not sent (prompts excluded)."""
        return sum(f.agent_samples for f in self._frames)
