"""Shared fixtures for the simulator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from voicebridge.sim.emulator import VoiceLiveEmulator

EmuFactory = Callable[..., Awaitable[VoiceLiveEmulator]]


@pytest.fixture
async def emulators() -> AsyncIterator[EmuFactory]:
    """Start emulators on demand (127.0.0.1, port 0); all are stopped at teardown."""
    started: list[VoiceLiveEmulator] = []

    async def make(**kwargs: Any) -> VoiceLiveEmulator:
        emulator = VoiceLiveEmulator(**kwargs)
        started.append(emulator)
        await emulator.start("127.0.0.1", 0)
        return emulator

    yield make
    for emulator in started:
        await emulator.stop()
