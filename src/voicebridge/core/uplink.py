"""Uplink: the caller's audio, from ACS frames to Voice Live appends (design.md §3).

Each ACS ``AudioData`` frame is resampled to the Voice Live input rate (or passed
through untouched when the rates match) and queued as ``input_audio_buffer.append``
wire text through the guard. Silent frames without data are forwarded as zeros: the
service's VAD needs them.

Until a session's ``session.update`` is queued, caller audio is held in a bounded
buffer (oldest dropped first, counted in ``caller_samples_buffered_dropped``) and
released, in order, right after it. Appends that could not be sent (the socket was
going) come back into the buffer ahead of newer audio (:meth:`Uplink.requeue`).
"""

from __future__ import annotations

import binascii
from collections import deque
from dataclasses import dataclass

import pybase64

from voicebridge.core import acs
from voicebridge.core import voicelive as vl
from voicebridge.core.accounting import Accounting
from voicebridge.core.audio import Resampler
from voicebridge.core.guard import OutboundGuard

__all__ = ["Uplink", "UplinkConfig"]


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    #: caller audio held while no session is configured (a reconnect), at most
    max_buffered_ms: int = 10_000


class Uplink:
    """Caller audio for one call: resampler, hold-until-configured buffer, appends."""

    __slots__ = (
        "_accounting",
        "_buffered",
        "_guard",
        "_limit",
        "_out",
        "_resampler",
        "_silence_b64",
        "_silence_pcm",
        "acs_hz",
        "buffered_samples",
        "voicelive_in_hz",
    )

    def __init__(
        self,
        guard: OutboundGuard,
        voicelive_out: list[str],
        accounting: Accounting,
        *,
        acs_hz: int,
        voicelive_in_hz: int,
        config: UplinkConfig | None = None,
    ) -> None:
        config = config or UplinkConfig()
        self._guard = guard
        self._out = voicelive_out  # the bridge's Voice Live outbox (wire text)
        self._accounting = accounting
        self.voicelive_in_hz = voicelive_in_hz
        self._limit = config.max_buffered_ms * voicelive_in_hz // 1000  # samples
        self._buffered: deque[tuple[str, int]] = deque()  # (b64, samples)
        self.buffered_samples = 0
        self.set_acs_rate(acs_hz)

    def set_acs_rate(self, acs_hz: int) -> None:
        """The ACS stream's rate (before any audio arrived)."""
        self.acs_hz = acs_hz
        self._resampler = Resampler(in_hz=acs_hz, out_hz=self.voicelive_in_hz)
        self._silence_pcm = bytes(acs_hz // 50 * 2)  # ACS sends 20 ms frames
        self._silence_b64 = binascii.b2a_base64(self._silence_pcm, newline=False).decode()

    def caller_audio(self, frame: acs.AudioData) -> None:
        """One ACS audio frame (20 ms): resample and append (or hold)."""
        c = self._accounting.counters
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
        resampler = self._resampler
        if not resampler.passthrough:
            out = resampler.feed(pcm)
            if not out:
                return
            b64 = pybase64.b64encode_as_string(out)
            samples = len(out) >> 1
        else:
            samples = len(pcm) >> 1
        self._append(b64, samples)

    def _append(self, b64: str, samples: int) -> None:
        if not self._guard.session_configured:
            self._hold(b64, samples)
            return
        self._out.extend(self._guard.append(b64))
        accounting = self._accounting
        accounting.counters.voicelive_samples_appended += samples
        accounting.appended_per_session[-1] += samples

    def _hold(self, b64: str, samples: int) -> None:
        """Hold caller audio until ``session.update`` is out (bounded; oldest dropped)."""
        self._buffered.append((b64, samples))
        self.buffered_samples += samples
        while self.buffered_samples > self._limit and self._buffered:
            _, n = self._buffered.popleft()
            self.buffered_samples -= n
            self._accounting.counters.caller_samples_buffered_dropped += n

    def release(self) -> None:
        """``session.update`` is queued: send the held audio, in order."""
        if not self._guard.session_configured:  # refused: it stays held
            return
        buffered = self._buffered
        while buffered:
            b64, n = buffered.popleft()
            self._append(b64, n)
        self.buffered_samples = 0

    def requeue(self, messages: list[str]) -> None:
        """``messages`` were not sent: their caller audio goes back to the buffer,
        ahead of anything held since."""
        accounting = self._accounting
        audio = [b64 for b64 in map(vl.append_audio, messages) if b64 is not None]
        for b64 in reversed(audio):
            samples = len(binascii.a2b_base64(b64)) >> 1
            accounting.counters.voicelive_samples_appended -= samples
            if accounting.appended_per_session:
                accounting.appended_per_session[-1] -= samples
            self._buffered.appendleft((b64, samples))
            self.buffered_samples += samples

    def flush(self) -> None:
        """The call is over: the resampler's last samples are appended (or held)."""
        if not self._resampler.passthrough:
            tail = self._resampler.flush()
            if tail:
                self._append(pybase64.b64encode_as_string(tail), len(tail) >> 1)
