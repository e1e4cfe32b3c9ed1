"""The shipped prompts (``voicebridge/assets/<name>.wav``: apology, goodbye) at a rate.

Production code: the service image ships ``assets/`` but not ``sim/``; WAVs are read by
:mod:`voicebridge.wavfile`, the reader the simulator's helper shares.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from voicebridge.core.audio import Resampler
from voicebridge.wavfile import read_wav_frames

__all__ = ["prompt_pcm"]


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
