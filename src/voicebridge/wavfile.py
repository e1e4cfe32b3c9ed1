"""Reading a PCM WAV file with the standard library: the one reader behind the service's
prompts (:mod:`voicebridge.relay.prompts`) and the simulator's WAV helper
(:mod:`voicebridge.sim.wav`). Light on purpose: importing it loads no SDK."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from typing import IO

__all__ = ["WavFrames", "read_wav_frames"]


@dataclass(frozen=True, slots=True)
class WavFrames:
    """The raw contents of a PCM WAV file."""

    frames: bytes  # little-endian samples, channels interleaved
    rate: int
    channels: int
    sample_width: int  # bytes per sample


def read_wav_frames(fh: IO[bytes]) -> WavFrames:
    """Everything in the WAV file open as ``fh``, as stored."""
    with wave.open(fh) as wav:
        return WavFrames(
            frames=wav.readframes(wav.getnframes()),
            rate=wav.getframerate(),
            channels=wav.getnchannels(),
            sample_width=wav.getsampwidth(),
        )
