"""What a client may configure and send: the session defaults, the checks a
``session.update`` goes through, the transcription pairing rule and the text-field limits.

Two exceptions carry a refusal to the session: :class:`Rejected` (answered with an
``error`` event, the session goes on) and :class:`Violation` (``message_creation_failed``:
the session stalls and closes, see the package docstring).
"""

from __future__ import annotations

from typing import Any

APPEND = "input_audio_buffer.append"  # the one client event sent 50 times a second
#: ``output_audio_format`` -> sample rate of ``response.audio.delta`` (§7; no rate field exists)
OUTPUT_RATES = {"pcm16": 24_000, "pcm16_16000hz": 16_000, "pcm16-16000hz": 16_000}
INPUT_RATES = (16_000, 24_000)

#: Input transcription models the service supports (voice-live-how-to "Audio input
#: transcription"): with the gpt-realtime family, and with every other model and agents.
#: The emulator keeps its own copy of the rule, so a bridge that gets it wrong fails here.
REALTIME_TRANSCRIPTION = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-diarize",
        "mai-transcribe",
        "mai-transcribe-2",
    }
)
OTHER_TRANSCRIPTION = frozenset({"azure-speech", "mai-transcribe", "mai-transcribe-2"})


def supported_transcription_models(agent: str | None, model: str | None) -> list[str]:
    """Sorted transcription models for an agent session or a ``model`` session."""
    realtime = agent is None and (model or "").lower().startswith(
        ("gpt-realtime", "gpt-4o-realtime", "gpt-4o-mini-realtime")
    )
    return sorted(REALTIME_TRANSCRIPTION if realtime else OTHER_TRANSCRIPTION)


def default_config() -> dict[str, Any]:
    """The session configuration before (and under) any ``session.update``."""
    return {
        "modalities": ["text", "audio"],
        "instructions": "",
        "voice": {"type": "azure-standard", "name": "en-US-AvaMultilingualNeural"},
        "input_audio_format": "pcm16",
        "input_audio_sampling_rate": 24_000,
        "output_audio_format": "pcm16",
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
            "auto_truncate": False,
        },
        "input_audio_transcription": None,
        "tools": [],
        "tool_choice": "auto",
        "temperature": 0.8,
        "max_response_output_tokens": "inf",
    }


class Violation(Exception):
    """A client message carries text the emulated service cannot turn into a message."""


class Rejected(Exception):
    """A client message is invalid; answered with an ``error`` event, the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def audio_rates(config: dict[str, Any]) -> tuple[int, int]:
    """``(input rate, output rate)`` of a complete configuration; :class:`Rejected` for
    audio settings or a ``turn_detection`` the emulator does not take."""
    in_rate = config.get("input_audio_sampling_rate")
    if in_rate not in INPUT_RATES:
        raise Rejected(
            "invalid_value",
            f"Unsupported input_audio_sampling_rate {in_rate!r}"
            " (the emulator takes 16000 or 24000).",
            "session.input_audio_sampling_rate",
        )
    if config.get("input_audio_format") != "pcm16":
        raise Rejected(
            "invalid_value",
            "The emulator only takes pcm16 input audio.",
            "session.input_audio_format",
        )
    out_format = config.get("output_audio_format")
    if out_format not in OUTPUT_RATES:
        raise Rejected(
            "invalid_value",
            f"Unsupported output_audio_format {out_format!r}.",
            "session.output_audio_format",
        )
    td = config.get("turn_detection")
    if td is not None and not isinstance(td, dict):
        raise Rejected(
            "invalid_value",
            "turn_detection must be an object or null.",
            "session.turn_detection",
        )
    return int(in_rate), OUTPUT_RATES[out_format]


def check_texts(event: dict[str, Any], max_chars: int) -> None:
    """Raise :class:`Violation` if a text field the service turns into a message is unusable."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise Violation(f"{where} is {type(value).__name__}, not a string")
        if len(value) > max_chars:
            raise Violation(f"{where} has {len(value)} characters (limit {max_chars})")

    def check_parts(parts: Any, where: str) -> None:
        for i, part in enumerate(parts if isinstance(parts, list) else []):
            if isinstance(part, dict) and "text" in part:
                check(part["text"], f"{where}.content[{i}].text")

    kind = event.get("type")
    if kind == "session.update":
        session = event.get("session")
        if isinstance(session, dict) and "instructions" in session:
            check(session["instructions"], "session.instructions")
    elif kind == "response.create":
        if "additional_instructions" in event:
            check(event["additional_instructions"], "additional_instructions")
        response = event.get("response")
        if isinstance(response, dict):
            if "instructions" in response:
                check(response["instructions"], "response.instructions")
            pre = response.get("pre_generated_assistant_message")
            if isinstance(pre, dict):
                check_parts(pre.get("content"), "response.pre_generated_assistant_message")
    elif kind == "conversation.item.create":
        item = event.get("item")
        if isinstance(item, dict):
            check_parts(item.get("content"), "item")
            if "output" in item:
                check(item["output"], "item.output")
