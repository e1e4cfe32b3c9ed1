"""The simulator's one WAV helper: read and write mono PCM16 WAV files, and resample.

It serves the emulator (shipped prompts), the fake ACS's CLI (the caller's recording, the
``heard.wav`` it writes), ``voicebridge simulate`` (caller audio in, ``caller.wav`` and
``heard.wav`` out) and the tests. Only ``sim/``, ``tools/`` and tests may import it: the
production image does not ship ``sim/``.

Three resamplers, one per use, so nothing any fake sends changes (:func:`resample`):
``"bridge"`` is the production streaming resampler, what the bridge itself applies;
``"soxr"`` and ``"soxr-vhq"`` are soxr, the quality reference, on int16 samples (its default
quality) or on floats at very high quality.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from voicebridge.wavfile import read_wav_frames

#: How :func:`resample` converts: see the module docstring.
Resampling = Literal["bridge", "soxr", "soxr-vhq"]


def read_wav(source: Any, *, mix_down: bool = False) -> tuple[npt.NDArray[np.int16], int]:
    """``(int16 samples, sample rate)`` of a 16-bit PCM WAV.

    ``source`` is a path (``str`` or :class:`~pathlib.Path`), a package resource (anything
    with ``open("rb")``) or the bytes of a file. A WAV with more than one channel is refused
    (``ValueError``) unless ``mix_down``: then the channels are averaged, rounded.
    """
    name = "WAV data" if isinstance(source, bytes | bytearray) else str(source)
    with _open(source) as fh:
        stored = read_wav_frames(fh)
    width, channels, rate, frames = (
        stored.sample_width,
        stored.channels,
        stored.rate,
        stored.frames,
    )
    if width != 2:
        raise ValueError(f"{name}: expected 16-bit PCM, got {8 * width}-bit")
    samples = np.frombuffer(frames, dtype="<i2")
    if channels > 1:
        if not mix_down:
            raise ValueError(f"{name}: expected mono, got {channels} channels")
        samples = samples.reshape(-1, channels).mean(axis=1).round().astype("<i2")
    return samples.astype(np.int16), rate


def _open(source: Any) -> Any:
    if isinstance(source, bytes | bytearray):
        return io.BytesIO(source)
    if isinstance(source, str | Path):
        return open(source, "rb")
    return source.open("rb")


def write_wav(path: str | Path, pcm: npt.ArrayLike, rate: int) -> None:
    """Write mono PCM16 samples to a WAV file at ``rate``."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


def resample(
    pcm: npt.NDArray[np.int16], in_hz: int, out_hz: int, *, how: Resampling
) -> npt.NDArray[np.int16]:
    """``pcm`` (int16) at ``out_hz``; ``pcm`` itself when the rates are equal or it is empty.

    ``how``: ``"bridge"`` streams it through :class:`voicebridge.core.audio.Resampler` (fed at
    once, then flushed: ``ceil(n * out / in)`` samples, aligned); ``"soxr"`` is
    ``soxr.resample`` on the int16 samples; ``"soxr-vhq"`` is soxr's VHQ on floats in
    [-1, 1), rounded and clipped back to int16.
    """
    if in_hz == out_hz or len(pcm) == 0:
        return pcm
    if how == "bridge":
        from voicebridge.core.audio import Resampler

        rs = Resampler(in_hz=in_hz, out_hz=out_hz)
        return np.frombuffer(rs.feed(pcm.tobytes()) + rs.flush(), dtype="<i2").astype(np.int16)
    import soxr  # only when a soxr conversion is actually needed

    if how == "soxr":
        return np.asarray(soxr.resample(pcm, in_hz, out_hz), dtype=np.int16)
    y: npt.NDArray[np.float64] = soxr.resample(
        pcm.astype(np.float32) / 32768.0, in_hz, out_hz, quality="VHQ"
    )
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
