"""Clients of the emulator for its tests: the real SDK (``vl_connect``) and helpers."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import numpy as np
import soxr
from azure.ai.voicelive.aio import VoiceLiveConnection, connect
from azure.ai.voicelive.models import (
    ServerEvent,
    ServerEventSessionCreated,
    ServerEventSessionUpdated,
)
from azure.core.credentials import AccessToken, AzureKeyCredential

from voicebridge.sim.emulator import (
    EmulatedSession,
    VoiceLiveEmulator,
)
from voicebridge.sim.wav import read_wav

KEY = "emulator-key"


WHISPER = {"model": "whisper-1"}


Factory = Callable[..., Awaitable[VoiceLiveEmulator]]


class FakeTokenCredential:
    """An async token credential: the SDK sends ``Authorization: Bearer <token>``."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-entra-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    # With these the SDK's isinstance(..., AsyncTokenCredential) protocol check passes.
    async def __aenter__(self) -> FakeTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def vl_connect(emulator: VoiceLiveEmulator, key: str = KEY, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "gpt-realtime")
    return connect(credential=AzureKeyCredential(key), endpoint=emulator.endpoint, **kwargs)


async def update(conn: VoiceLiveConnection, **session: Any) -> ServerEventSessionUpdated:
    """Send session.update (dict form) and return the session.updated after session.created."""
    await conn.send({"type": "session.update", "session": session})
    created = await conn.recv()
    assert isinstance(created, ServerEventSessionCreated)
    updated = await conn.recv()
    assert isinstance(updated, ServerEventSessionUpdated), updated
    return updated


async def until(conn: VoiceLiveConnection, *types: str) -> list[ServerEvent]:
    """Receive events up to and including the first one of ``types`` (5 s at most)."""
    seen: list[ServerEvent] = []
    async with asyncio.timeout(5.0):
        while True:
            event = await conn.recv()
            seen.append(event)
            if event.type in types:
                return seen


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")


def tone(seconds: float, rate: int = 24_000, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def only_session(emulator: VoiceLiveEmulator) -> EmulatedSession:
    assert len(emulator.sessions) == 1
    return emulator.sessions[0]


def caller_at_24k() -> tuple[np.ndarray, list[dict[str, Any]]]:
    data = resources.files("voicebridge.sim") / "data"
    pcm16k, rate = read_wav((data / "caller.wav").read_bytes())
    assert rate == 16_000
    y = soxr.resample(pcm16k.astype(np.float32) / 32768.0, 16_000, 24_000, quality="VHQ")
    pcm = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    return pcm, json.loads((data / "caller.json").read_text())
