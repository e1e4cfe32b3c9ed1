"""The shipped prompts (``voicebridge/assets/<name>.wav``: apology, goodbye) at a rate.

Production code: the service image ships ``assets/`` but not ``sim/``, so this module
reads WAVs with the standard library only. (``voicebridge.sim.wav`` keeps its own
reader: importing this module runs ``voicebridge.relay``'s ``__init__``, which would load
the Voice Live SDK and starlette into the emulator and fake ACS processes.)
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import IO

from voicebridge.core.audio import Resampler

__all__ = ["WavFrames", "prompt_pcm", "read_wav_frames"]


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


@cache
def prompt_pcm(name: str, rate: int) -> bytes:
    """A shipped prompt (``assets/<name>.wav``, mono PCM16) as PCM16 at ``rate``,
    resampled by the core's resampler."""
    ref = resources.files("voicebridge") / "assets" / f"{name}.wav"
    with ref.open("rb") as fh:
        wav = read_wav_frames(fh)
    if wav.rate == rate:
        return wav.frames
    rs = Resampler(in_hz=wav.rate, out_hz=rate)
    return rs.feed(wav.frames) + rs.flush()
