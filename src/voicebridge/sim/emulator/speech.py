"""Audio for lines the rule table says (:mod:`.tools`): a shipped prompt when one fits,
else a deterministic speech-like stand-in of about the length the line would take.

The stand-in is one voiced burst per word: a 150-190 Hz harmonic tone (five harmonics,
falling 1/k) under a Hann envelope, ``SYNTH_MS_PER_CHAR`` per character (the shipped
espeak prompts run at 14-17 characters a second), at least ``SYNTH_MIN_WORD_MS``, with
``SYNTH_GAP_MS`` of silence between words and ``SYNTH_EDGE_MS`` at either end. Its RMS is
near the shipped prompts' (about -19 dBFS): loud for the VAD of a listener, nothing
recognisable. No randomness: the same line gives the same samples at a given rate.
"""

from __future__ import annotations

import functools

import numpy as np

from voicebridge.sim.emulator.data import load_prompts, prompt_pcm

SYNTH_MS_PER_CHAR = 65
SYNTH_MIN_WORD_MS = 160
SYNTH_GAP_MS = 60
SYNTH_EDGE_MS = 20
SYNTH_PEAK = 0.35  # of full scale


def prompt_for_text(text: str) -> str | None:
    """The shipped prompt whose transcript is exactly ``text``, if any."""
    for prompt in load_prompts().prompts.values():
        if prompt.text == text:
            return prompt.name
    return None


def line_pcm(text: str, prompt: str | None, rate_hz: int) -> tuple[str, np.ndarray]:
    """``(audio source, samples)`` for a spoken line: the named prompt, else the shipped
    prompt with this exact text, else :func:`synth_pcm`. The source is the prompt's name
    or ``"synth"``."""
    name = prompt or prompt_for_text(text)
    if name is not None:
        if name not in load_prompts().prompts:
            raise KeyError(f"no shipped prompt {name!r}")
        return name, prompt_pcm(name, rate_hz)
    return "synth", synth_pcm(text, rate_hz)


@functools.cache
def synth_pcm(text: str, rate_hz: int) -> np.ndarray:
    """The stand-in audio of ``text`` at ``rate_hz`` (see the module docstring)."""
    words = text.split() or [text]
    edge = np.zeros(rate_hz * SYNTH_EDGE_MS // 1000, dtype=np.int16)
    gap = np.zeros(rate_hz * SYNTH_GAP_MS // 1000, dtype=np.int16)
    parts = [edge]
    for i, word in enumerate(words):
        ms = max(SYNTH_MIN_WORD_MS, SYNTH_MS_PER_CHAR * len(word))
        n = rate_hz * ms // 1000
        t = np.arange(n) / rate_hz
        f0 = 150.0 + 20.0 * (i % 3)
        wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        burst = np.hanning(n) * wave / np.abs(wave).max()
        parts.append(np.round(burst * SYNTH_PEAK * 32767).astype(np.int16))
        parts.append(gap if i < len(words) - 1 else edge)
    pcm = np.concatenate(parts)
    pcm.setflags(write=False)
    return pcm
