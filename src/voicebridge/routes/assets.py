"""The shipped prompts as files Call Automation can play (``FileSource``).

A node that ends a call it does not hold (its owner died: :mod:`voicebridge.cluster`)
has no media socket to speak on, so it asks Call Automation to play
``{PUBLIC_BASE_URL}/assets/apology.wav``. Call Automation plays WAV files that are mono
PCM16 at 16 kHz; the shipped prompts are 24 kHz, so they are served resampled. Public:
they are the bridge's own recordings, not call data.
"""

from __future__ import annotations

import io
import wave
from functools import cache

from fastapi import APIRouter, Response

from voicebridge.relay.prompts import prompt_pcm

router = APIRouter(tags=["assets"])

#: The rate Call Automation's file playback accepts.
PLAY_RATE = 16000
PROMPTS = ("apology", "goodbye")


@cache
def prompt_wav(name: str) -> bytes:
    """``assets/<name>.wav`` as a mono PCM16 16 kHz WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(PLAY_RATE)
        w.writeframes(prompt_pcm(name, PLAY_RATE))
    return out.getvalue()


@router.get("/assets/{name}.wav")
async def asset(name: str) -> Response:
    if name not in PROMPTS:
        return Response(status_code=404)
    return Response(
        prompt_wav(name),
        media_type="audio/wav",
        headers={"cache-control": "public, max-age=3600"},
    )
