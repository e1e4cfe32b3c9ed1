"""Turn detection: an energy VAD over 20 ms blocks, timed by the audio fed (no clock).

``threshold`` 0.5 -> -45 dBFS, linear in dB (0 -> -65, 1 -> -25); ``speech_started``
after :data:`VAD_ONSET_MS` of loud blocks, ``speech_stopped`` after ``silence_duration_ms``
of quiet ones. Loudness is decided on exact sums of squares (see :func:`loud_energy`), so
the decision is the RMS comparison a plain implementation would make.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

VAD_BLOCK_MS = 20
VAD_ONSET_MS = 100  # speech energy needed before speech_started


class AppendedAudio:
    """Appended PCM16 samples. With the fast path one object serves every session that
    appends the same text (:mod:`.fastpath`), so what the VAD needs is computed once."""

    __slots__ = ("_cumulative", "samples")

    def __init__(self, pcm: bytes) -> None:
        self.samples = np.frombuffer(pcm, dtype="<i2")  # read-only
        self._cumulative: np.ndarray | None = None

    def cumulative_energy(self) -> np.ndarray:
        """Item ``i``: the sum of squares of the first ``i`` samples. Exact (integers
        below 2**53 in float64), so differences are exact block energies and decide
        exactly as the RMS of the block's samples would."""
        if self._cumulative is None:
            squares = self.samples.astype(np.float64) ** 2
            self._cumulative = np.concatenate(([0.0], np.cumsum(squares)))
        return self._cumulative


class EnergyVad:
    """Energy VAD over 20 ms blocks, timed by the audio fed (no clock).

    ``feed(audio)`` returns ``("speech_started", onset_ms)`` / ``("speech_stopped",
    offset_ms)`` events; times count from ``base_ms``, the audio already received at
    creation (so a rate change mid-session keeps one time line). A block is loud when its
    RMS exceeds the threshold; blocks run across appends (the bridge's first append is
    not a whole block), so what is carried over is its sample count and energy.
    """

    def __init__(
        self, rate_hz: int, *, threshold_dbfs: float, silence_ms: int, base_ms: float = 0.0
    ) -> None:
        self.block = rate_hz * VAD_BLOCK_MS // 1000
        self.threshold = 10 ** (threshold_dbfs / 20.0) * 32768.0  # RMS in sample units
        self._loud_energy = loud_energy(self.block, self.threshold)
        self.silence_blocks = max(1, math.ceil(silence_ms / VAD_BLOCK_MS))
        self.onset_blocks = VAD_ONSET_MS // VAD_BLOCK_MS
        self.base_ms = base_ms
        self._carry_samples = 0  # of the block under way
        self._carry_energy = 0.0  # their sum of squares
        self.blocks_seen = 0
        self.speaking = False
        self.run = 0  # consecutive loud blocks (idle) or quiet blocks (speaking)

    def feed(self, audio: AppendedAudio) -> list[tuple[str, float]]:
        cumulative = audio.cumulative_energy()
        n, block = len(cumulative) - 1, self.block
        end = block - self._carry_samples  # where the block under way ends in ``audio``
        if end > n:
            self._carry_samples += n
            self._carry_energy += cumulative[n]
            return []
        energies = [self._carry_energy + cumulative[end]]
        while end + block <= n:
            energies.append(cumulative[end + block] - cumulative[end])
            end += block
        self._carry_samples = n - end
        self._carry_energy = cumulative[n] - cumulative[end]
        return self._blocks(energies)

    def _blocks(self, energies: list[Any]) -> list[tuple[str, float]]:
        """Advance over completed blocks with these sums of squares."""
        events: list[tuple[str, float]] = []
        for energy in energies:
            is_loud = energy >= self._loud_energy
            self.blocks_seen += 1
            if self.speaking:
                self.run = 0 if is_loud else self.run + 1
                if self.run >= self.silence_blocks:
                    self.speaking, self.run = False, 0
                    events.append(("speech_stopped", self._ms(self.silence_blocks)))
            else:
                self.run = self.run + 1 if is_loud else 0
                if self.run >= self.onset_blocks:
                    self.speaking, self.run = True, 0
                    events.append(("speech_started", self._ms(self.onset_blocks)))
        return events

    def _ms(self, blocks_back: int) -> float:
        """Audio time at the start of the block ``blocks_back`` blocks before the current end."""
        return self.base_ms + (self.blocks_seen - blocks_back) * VAD_BLOCK_MS


def loud_energy(block: int, threshold: float) -> int:
    """The least sum of squares of a ``block``-sample block whose RMS,
    ``sqrt(mean(x**2))`` in float64, exceeds ``threshold`` (sums of squares of int16
    samples are exact integers in float64, so ``energy >= this`` is that decision)."""
    lo, hi = 0, block * 32768**2 + 1  # RMS(lo) <= threshold < RMS(hi)
    if np.sqrt(np.float64(hi) / block) <= threshold:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.sqrt(np.float64(mid) / block) > threshold:
            hi = mid
        else:
            lo = mid
    return hi


def threshold_dbfs(threshold: Any) -> float:
    """Map the service's 0..1 ``threshold`` onto an energy level (0.5 -> -45 dBFS).

    -45 dBFS keeps the quiet onsets of the shipped caller's fricatives ("Th-") inside the turn
    while digital silence and dithered silence stay far below it.
    """
    t = float(threshold) if isinstance(threshold, int | float) else 0.5
    return -65.0 + 40.0 * min(max(t, 0.0), 1.0)
