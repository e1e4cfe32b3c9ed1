"""Token usage: the ``usage`` of every ``response.done``, computed by a fixed formula.

The real service reports usage for billing (the SDK's ``TokenUsage``: "A VoiceLive API
session will maintain a conversation context ... output from previous turns (text and
audio tokens) will become the input for later turns"). Its exact counts are not
documented; the emulator's are *inferred* and deterministic, so a test can recompute them:

* ``audio_tokens(seconds) = ceil(10 x seconds)`` (gpt-realtime counts roughly 10 audio
  tokens a second); ``text_tokens(text) = ceil(len(text) / 4)``.
* The **context** grows with the conversation: each caller turn adds the audio tokens of
  its speech (``speech_stopped - speech_started``; without VAD, the audio committed since
  the previous turn or clear); each item the client creates adds the text tokens of its
  text parts (a ``function_call`` item: its name and arguments; a ``function_call_output``:
  its output); each response adds what it output (audio tokens and function calls' name +
  arguments, not the transcript). Truncation does not shrink it. A resumed conversation
  (agent mode, same conversation id) keeps its context; a new session otherwise starts empty.
* A response's **input** is the context when it begins, plus the text tokens of the
  instructions in force (the response's ``instructions`` or else the session's, plus
  ``additional_instructions``) and of the declared tools (``json.dumps`` of the list,
  ``sort_keys``, compact separators), as text and audio tokens.
* **Cached** tokens are the input the previous response (of the conversation) already
  had, per kind: ``cached text = min(previous input text, input text)``, audio alike;
  ``cached_tokens`` is their sum. The first response has none.
* **Output**: ``audio_tokens`` of the audio sent (a cancelled response: what was sent);
  ``text_tokens`` of the transcript sent plus each function call's name + arguments.
* ``total_tokens = input_tokens + output_tokens``; image tokens are always 0.

A response dropped before it began (never shown to the client) reports nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

AUDIO_TOKENS_PER_S = 10


def audio_tokens(seconds: float) -> int:
    """``ceil(10 x seconds)`` (rounded to 1e-6 first, so 0.3 s is 3 tokens, not 4)."""
    return max(0, math.ceil(round(seconds * AUDIO_TOKENS_PER_S, 6)))


def audio_tokens_for(samples: int, rate_hz: int) -> int:
    """Audio tokens of ``samples`` samples at ``rate_hz`` (exact integer arithmetic)."""
    return -(-samples * AUDIO_TOKENS_PER_S // rate_hz) if samples > 0 else 0


def text_tokens(text: str) -> int:
    """``ceil(len(text) / 4)``."""
    return -(-len(text) // 4)


def tools_tokens(tools: Any) -> int:
    """Text tokens of a tool declaration list (none when it is empty or absent)."""
    if not tools:
        return 0
    return text_tokens(json.dumps(tools, sort_keys=True, separators=(",", ":")))


@dataclass
class Tokens:
    """A text/audio token pair."""

    text: int = 0
    audio: int = 0

    @property
    def total(self) -> int:
        return self.text + self.audio


@dataclass
class UsageMeter:
    """One conversation's context and the input of its last response (for cached tokens)."""

    context: Tokens = field(default_factory=Tokens)
    previous_input: Tokens | None = None

    def add_text(self, text: str) -> None:
        self.context.text += text_tokens(text)

    def add_audio_s(self, seconds: float) -> None:
        self.context.audio += audio_tokens(seconds)

    def begin(self, prefix_text_tokens: int) -> Tokens:
        """The input of a response beginning now; ``prefix_text_tokens``: its instructions
        and tools."""
        return Tokens(self.context.text + prefix_text_tokens, self.context.audio)

    def finish(
        self, given: Tokens, *, out_samples: int, rate_hz: int, transcript: str, calls: list[str]
    ) -> dict[str, Any]:
        """The ``usage`` of a response whose input was ``given`` (from :meth:`begin`) and
        whose output was ``out_samples`` of audio, ``transcript`` and ``calls`` (each a
        function's name + arguments). The output joins the context; ``given`` is
        remembered for the next response's cached tokens."""
        prev = self.previous_input
        cached = Tokens()
        if prev is not None:
            cached = Tokens(min(prev.text, given.text), min(prev.audio, given.audio))
        call_tokens = sum(text_tokens(c) for c in calls)
        out = Tokens(text_tokens(transcript) + call_tokens, audio_tokens_for(out_samples, rate_hz))
        self.previous_input = given
        self.context.audio += out.audio
        self.context.text += call_tokens
        return usage_object(given, cached, out)


def usage_object(given: Tokens, cached: Tokens, out: Tokens) -> dict[str, Any]:
    """``response.usage`` with the SDK's field names (``TokenUsage``, ``InputTokenDetails``,
    ``CachedTokenDetails``, ``OutputTokenDetails``)."""
    return {
        "total_tokens": given.total + out.total,
        "input_tokens": given.total,
        "output_tokens": out.total,
        "input_token_details": {
            "cached_tokens": cached.total,
            "text_tokens": given.text,
            "audio_tokens": given.audio,
            "image_tokens": 0,
            "cached_tokens_details": {
                "text_tokens": cached.text,
                "audio_tokens": cached.audio,
                "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": out.text, "audio_tokens": out.audio},
    }


def empty_totals() -> dict[str, Any]:
    """Running totals before any response: a usage object of zeros and ``responses`` 0."""
    return usage_object(Tokens(), Tokens(), Tokens()) | {"responses": 0}


def add_usage(totals: dict[str, Any], usage: dict[str, Any]) -> None:
    """Add a usage object (or other totals) into ``totals``, field by field; one usage
    object counts as one response."""
    if "responses" not in usage:
        totals["responses"] = totals.get("responses", 0) + 1
    _add_fields(totals, usage)


def _add_fields(totals: dict[str, Any], usage: dict[str, Any]) -> None:
    for key, value in usage.items():
        if isinstance(value, dict):
            _add_fields(totals.setdefault(key, {}), value)
        else:
            totals[key] = totals.get(key, 0) + value


def sum_totals(many: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of running totals (e.g. of every session of one call)."""
    total = empty_totals()
    for totals in many:
        add_usage(total, totals)
    return total
