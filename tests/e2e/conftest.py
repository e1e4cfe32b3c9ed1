"""Shared helpers for whole simulated calls over loopback sockets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicebridge.sim.simulate import shipped
from voicebridge.sim.wav import read_wav, write_wav

#: Fast enough for CI, slow enough that a loaded machine keeps the media clock.
SPEED = 5.0


@pytest.fixture
def short_caller(tmp_path: Path) -> Path:
    """The first 12 s of the shipped caller: one turn, answered, then silence."""
    pcm, rate = read_wav(shipped("caller.wav"))
    path = tmp_path / "short-caller.wav"
    write_wav(path, np.asarray(pcm[: 12 * rate]), rate)
    return path


def agent_energy(heard: np.ndarray) -> float:
    """Fraction of 20 ms blocks of ``heard`` that carry sound."""
    block = 320
    n = len(heard) // block
    rms = np.sqrt(np.mean(heard[: n * block].astype(np.float64).reshape(n, block) ** 2, axis=1))
    return float(np.mean(rms > 200)) if n else 0.0
