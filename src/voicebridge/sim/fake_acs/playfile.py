"""Playing a file (``FileSource``) in the fake's media plane: what ``:play`` with
``playSources: [{"kind": "file", "file": {"uri": ...}}]`` fetches and accepts (§2.3).

The fake GETs each URI and accepts only a RIFF WAV of PCM16 mono at 16 kHz (the format ACS
documents for prompt files); anything else fails the play with ``PlayFailed`` and a message
saying what was wrong. The decoding here is pure; the REST layer (:mod:`.rest`) fetches, posts
the callbacks and mixes the audio into what the caller hears.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from typing import Any

import aiohttp
import numpy as np

from voicebridge.sim.wav import resample
from voicebridge.wavfile import read_wav_frames

#: The one file format a play accepts: RIFF WAV, PCM16, mono, 16 kHz.
FILE_RATE = 16000
# resultInformation of a PlayFailed for a file (§3): 8535 bad format, 8536 not downloadable.
SUBCODE_BAD_FORMAT = 8535
SUBCODE_NOT_DOWNLOADED = 8536


class PlayFileError(Exception):
    """A file that cannot be played: ``subcode`` for ``resultInformation``, the message."""

    def __init__(self, subcode: int, message: str) -> None:
        super().__init__(message)
        self.subcode = subcode


def file_uris(sources: Sequence[Any]) -> list[str] | None:
    """The ``file.uri`` of every source when any source is a file (None: no file source).

    A file source without a string ``uri`` yields ``""`` (its fetch then fails).
    """
    if not any(isinstance(s, dict) and str(s.get("kind", "")).lower() == "file" for s in sources):
        return None
    uris: list[str] = []
    for source in sources:
        if isinstance(source, dict) and str(source.get("kind", "")).lower() == "file":
            uri = (source.get("file") or {}).get("uri")
            uris.append(uri if isinstance(uri, str) else "")
    return uris


def decode_wav(body: bytes, uri: str) -> bytes:
    """The PCM16LE samples of ``body``, which must be a RIFF WAV, PCM16, mono, 16 kHz;
    :class:`PlayFileError` (bad format) otherwise."""
    if body[:4] != b"RIFF" or body[8:12] != b"WAVE":
        raise PlayFileError(SUBCODE_BAD_FORMAT, f"{uri}: not a RIFF WAVE file")
    try:
        stored = read_wav_frames(io.BytesIO(body))
    except (wave.Error, EOFError) as exc:  # e.g. "unknown format: 3" (float), truncated
        raise PlayFileError(SUBCODE_BAD_FORMAT, f"{uri}: not a PCM WAV ({exc})") from None
    problems = []
    if stored.sample_width != 2:
        problems.append(f"{8 * stored.sample_width}-bit (need 16-bit)")
    if stored.channels != 1:
        problems.append(f"{stored.channels} channels (need mono)")
    if stored.rate != FILE_RATE:
        problems.append(f"{stored.rate} Hz (need {FILE_RATE} Hz)")
    if problems:
        raise PlayFileError(
            SUBCODE_BAD_FORMAT, f"{uri}: unsupported WAV format: {', '.join(problems)}"
        )
    return stored.frames[: len(stored.frames) // 2 * 2]


async def fetch_pcm(session: aiohttp.ClientSession, uri: str, rate: int) -> bytes:
    """GET ``uri`` and decode it (:func:`decode_wav`), resampled (soxr) to the call's
    ``rate``; :class:`PlayFileError` when it cannot be downloaded or played."""
    try:
        async with session.get(uri) as resp:
            if resp.status != 200:
                raise PlayFileError(
                    SUBCODE_NOT_DOWNLOADED, f"{uri}: download failed with HTTP {resp.status}"
                )
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        message = f"{uri}: download failed: {type(exc).__name__}: {exc}"
        raise PlayFileError(SUBCODE_NOT_DOWNLOADED, message) from None
    pcm = decode_wav(body, uri)
    if rate == FILE_RATE:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
    return resample(samples, FILE_RATE, rate, how="soxr").astype("<i2").tobytes()
