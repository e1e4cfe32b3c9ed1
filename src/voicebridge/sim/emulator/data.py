"""The emulator's shipped data (``sim/data``): the agent prompts and the caller's script."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from voicebridge.sim.wav import read_wav, resample

PROMPT_RATE_HZ = 24_000


@dataclass(frozen=True)
class PromptAudio:
    """One shipped agent prompt: 24 kHz PCM16 samples and the exact transcript."""

    name: str
    role: str
    text: str
    pcm: np.ndarray


@dataclass(frozen=True)
class PromptSet:
    prompts: dict[str, PromptAudio]
    greeting: str
    answer_cycle: tuple[str, ...]


def _data_dir() -> Any:
    return resources.files("voicebridge.sim") / "data"


@functools.cache
def load_prompts() -> PromptSet:
    """The shipped prompts (``sim/data/prompts.json`` and its WAVs), loaded once."""
    data = _data_dir()
    manifest = json.loads((data / "prompts.json").read_text())
    prompts: dict[str, PromptAudio] = {}
    for entry in manifest["prompts"]:
        pcm, rate = read_wav((data / entry["file"]).read_bytes())
        if rate != PROMPT_RATE_HZ:
            raise ValueError(f"{entry['file']}: {rate} Hz, expected {PROMPT_RATE_HZ}")
        prompts[entry["name"]] = PromptAudio(entry["name"], entry["role"], entry["text"], pcm)
    greeting = next(p.name for p in prompts.values() if p.role == "greeting")
    return PromptSet(prompts, greeting, tuple(manifest["answer_cycle"]))


@functools.cache
def prompt_pcm(name: str, rate_hz: int) -> np.ndarray:
    """A prompt's samples at ``rate_hz`` (soxr VHQ when it is not the native 24 kHz)."""
    return resample(load_prompts().prompts[name].pcm, PROMPT_RATE_HZ, rate_hz, how="soxr-vhq")


@functools.cache
def caller_texts() -> tuple[str, ...]:
    """Segment texts of the shipped ``caller.json``, in order (empty if it is missing)."""
    try:
        segments = json.loads((_data_dir() / "caller.json").read_text())
    except (FileNotFoundError, ValueError):
        return ()
    return tuple(str(s["text"]) for s in segments)
