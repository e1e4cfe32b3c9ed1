"""The Voice Live codec: server frames in, client wire text out (protocols.md §7, §8).

Wire spellings live here (design.md §4): every event type name the bridge sends is a
constant below (:data:`SESSION_UPDATE`, :data:`RESPONSE_CREATE`, ...), imported by the
guard and the bridge.

Server frames arrive as the WebSocket's bytes: :func:`loads` reads one (orjson) and
:func:`classify` turns the events the bridge acts on into small frozen dataclasses;
:func:`parse` does both. Everything else becomes :class:`Other`. A frame that is not
a JSON object, or a known type missing a field the bridge needs, raises
:class:`~voicebridge.errors.VoiceLiveEventError`. ``expires_at`` is read as epoch
seconds (a float), or None when the frame has no number there.

Client events are built as plain dicts; the outbound guard checks and fixes them and
serialises each one once, with ``json.dumps`` — exactly the text the SDK's
``send(dict)`` writes — so what leaves the core is wire-ready text. Audio appends,
50 a second per call, have their wire text built directly (:func:`append_json`), and
:func:`append_audio` reads the audio back out of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from voicebridge.errors import VoiceLiveEventError

__all__ = [
    "ACTIVE_RESPONSE_ERROR",
    "APPEND",
    "ITEM_CREATE",
    "REALTIME_MODEL_PREFIXES",
    "RESPONSE_CANCEL",
    "RESPONSE_CREATE",
    "SESSION_UPDATE",
    "TRANSCRIPTION_MODELS",
    "AudioDelta",
    "AudioDone",
    "Error",
    "InputCommitted",
    "ItemTruncated",
    "Other",
    "ResponseCreated",
    "ResponseDone",
    "ServerEvent",
    "SessionCreated",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "TranscriptDelta",
    "TranscriptDone",
    "TranscriptionCompleted",
    "append_audio",
    "append_json",
    "build_session_config",
    "classify",
    "greeting_pre_generated",
    "input_audio_append",
    "loads",
    "message_item_create",
    "model_family",
    "parse",
    "response_cancel",
    "response_create",
    "session_update",
    "transcription_models",
    "voice_config",
]

# --------------------------------------------------------------------------- type names

#: Client event types (what the bridge sends).
SESSION_UPDATE = "session.update"
RESPONSE_CREATE = "response.create"
RESPONSE_CANCEL = "response.cancel"
ITEM_CREATE = "conversation.item.create"
#: The type of the one event sent 50 times a second per call (the fast paths key on it).
APPEND = "input_audio_buffer.append"

# --------------------------------------------------------------------------- server events


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str
    conversation_id: str | None
    agent: Mapping[str, Any] | None
    voice: Any
    expires_at: float | None  # epoch seconds
    #: where the conversation id was found (``session.conversation_id``,
    #: ``session.agent.conversation_id`` or ``session.agent.thread_id``), None if nowhere
    conversation_id_field: str | None = None


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    session_id: str
    voice: Any
    expires_at: float | None  # epoch seconds


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptionCompleted:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class Usage:
    """``response.done``'s ``response.usage`` (token counts; 0 where the service left a
    field out)."""

    input_text: int = 0
    input_audio: int = 0
    input_cached: int = 0
    output_text: int = 0
    output_audio: int = 0

    @property
    def total(self) -> int:
        return self.input_text + self.input_audio + self.output_text + self.output_audio


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    reason: str | None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """``response.function_call_arguments.done``: the model calls a function tool."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it (maybe not valid JSON)


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    delta: str  # base64 PCM16LE at the session's output rate, exactly as on the wire


@dataclass(frozen=True, slots=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    response_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class Error:
    type: str
    code: str
    message: str
    param: str | None
    event_id: str | None


@dataclass(frozen=True, slots=True)
class Other:
    type: str


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | TranscriptionCompleted
    | ResponseCreated
    | ResponseDone
    | FunctionCall
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | ItemTruncated
    | Error
    | Other
)


def _str(ev: Mapping[str, Any], key: str) -> str:
    value = ev.get(key)
    if not isinstance(value, str):
        raise VoiceLiveEventError(f"{ev.get('type')}: {key!r} must be a string")
    return value


def _opt_str(ev: Mapping[str, Any], key: str) -> str | None:
    value = ev.get(key)
    return value if isinstance(value, str) else None


def _int(ev: Mapping[str, Any], key: str) -> int:
    value = ev.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VoiceLiveEventError(f"{ev.get('type')}: {key!r} must be a number")
    return int(value)


def _obj(ev: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = ev.get(key)
    if not isinstance(value, Mapping):
        raise VoiceLiveEventError(f"{ev.get('type')}: {key!r} must be an object")
    return value


def _session(ev: Mapping[str, Any]) -> Mapping[str, Any]:
    return _obj(ev, "session")


def _epoch(session: Mapping[str, Any]) -> float | None:
    """``expires_at`` as epoch seconds (the wire sends a number), None if it is not one."""
    value = session.get("expires_at")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _session_created(ev: Mapping[str, Any]) -> SessionCreated:
    s = _session(ev)
    agent = s.get("agent")
    agent_map = agent if isinstance(agent, Mapping) else None
    conv, field = _opt_str(s, "conversation_id"), "session.conversation_id"
    for key in ("conversation_id", "thread_id"):
        if conv is None and agent_map is not None:
            conv, field = _opt_str(agent_map, key), f"session.agent.{key}"
    return SessionCreated(
        session_id=_opt_str(s, "id") or "",
        conversation_id=conv,
        agent=agent_map,
        voice=s.get("voice"),
        expires_at=_epoch(s),
        conversation_id_field=field if conv is not None else None,
    )


def _session_updated(ev: Mapping[str, Any]) -> SessionUpdated:
    s = _session(ev)
    return SessionUpdated(
        session_id=_opt_str(s, "id") or "", voice=s.get("voice"), expires_at=_epoch(s)
    )


def _response_done(ev: Mapping[str, Any]) -> ResponseDone:
    r = _obj(ev, "response")
    details = r.get("status_details")
    reason = details.get("reason") if isinstance(details, Mapping) else None
    return ResponseDone(
        response_id=_str(r, "id"),
        status=_opt_str(r, "status") or "unknown",
        reason=reason if isinstance(reason, str) else None,
        usage=_usage(r.get("usage")),
    )


def _count(obj: Any, key: str) -> int:
    value = obj.get(key) if isinstance(obj, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: Any) -> Usage | None:
    """``response.usage`` (SDK ``ResponseUsage``); None if absent. A malformed count
    reads 0: usage is for accounting, never a reason to drop the event."""
    if not isinstance(usage, Mapping):
        return None
    inp, out = usage.get("input_token_details"), usage.get("output_token_details")
    input_text, input_audio = _count(inp, "text_tokens"), _count(inp, "audio_tokens")
    if not isinstance(inp, Mapping):  # no breakdown: count it all as text
        input_text = _count(usage, "input_tokens")
    output_text, output_audio = _count(out, "text_tokens"), _count(out, "audio_tokens")
    if not isinstance(out, Mapping):
        output_text = _count(usage, "output_tokens")
    return Usage(
        input_text=input_text,
        input_audio=input_audio,
        input_cached=_count(inp, "cached_tokens"),
        output_text=output_text,
        output_audio=output_audio,
    )


def _error(ev: Mapping[str, Any]) -> Error:
    e = ev.get("error")
    if not isinstance(e, Mapping):
        return Error(type="error", code="unknown", message=str(e), param=None, event_id=None)
    return Error(
        type=str(e.get("type") or "error"),
        code=str(e.get("code") or "unknown"),
        message=str(e.get("message") or ""),
        param=_opt_str(e, "param"),
        event_id=_opt_str(e, "event_id"),
    )


_CLASSIFIERS: dict[str, Callable[[Mapping[str, Any]], ServerEvent]] = {
    "session.created": _session_created,
    "session.updated": _session_updated,
    "input_audio_buffer.speech_started": lambda ev: SpeechStarted(
        audio_start_ms=_int(ev, "audio_start_ms"), item_id=_opt_str(ev, "item_id") or ""
    ),
    "input_audio_buffer.speech_stopped": lambda ev: SpeechStopped(
        audio_end_ms=_int(ev, "audio_end_ms"), item_id=_opt_str(ev, "item_id") or ""
    ),
    "input_audio_buffer.committed": lambda ev: InputCommitted(
        item_id=_opt_str(ev, "item_id") or ""
    ),
    "conversation.item.input_audio_transcription.completed": lambda ev: TranscriptionCompleted(
        item_id=_opt_str(ev, "item_id") or "", transcript=_str(ev, "transcript")
    ),
    "response.created": lambda ev: ResponseCreated(response_id=_str(_obj(ev, "response"), "id")),
    "response.done": _response_done,
    "response.function_call_arguments.done": lambda ev: FunctionCall(
        response_id=_opt_str(ev, "response_id") or "",
        item_id=_opt_str(ev, "item_id") or "",
        call_id=_str(ev, "call_id"),
        name=_str(ev, "name"),
        arguments=_opt_str(ev, "arguments") or "",
    ),
    "response.audio.delta": lambda ev: AudioDelta(
        response_id=_str(ev, "response_id"),
        item_id=_opt_str(ev, "item_id") or "",
        delta=_str(ev, "delta"),
    ),
    "response.audio.done": lambda ev: AudioDone(
        response_id=_str(ev, "response_id"), item_id=_opt_str(ev, "item_id") or ""
    ),
    "response.audio_transcript.delta": lambda ev: TranscriptDelta(
        response_id=_str(ev, "response_id"), delta=_str(ev, "delta")
    ),
    "response.audio_transcript.done": lambda ev: TranscriptDone(
        response_id=_str(ev, "response_id"),
        item_id=_opt_str(ev, "item_id") or "",
        transcript=_str(ev, "transcript"),
    ),
    "conversation.item.truncated": lambda ev: ItemTruncated(
        item_id=_str(ev, "item_id"), audio_end_ms=_int(ev, "audio_end_ms")
    ),
    "error": _error,
}


def loads(frame: bytes | str) -> Mapping[str, Any]:
    """One server frame as a mapping, or raise the event error (``unreadable frame``):
    a frame that is not a JSON object at all. orjson: 3x ``json.loads`` on a 150 ms
    audio delta (measured)."""
    try:
        event = orjson.loads(frame)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise VoiceLiveEventError(f"unreadable frame: {type(exc).__name__}") from None
    if not isinstance(event, dict):
        raise VoiceLiveEventError(f"unreadable frame: a JSON {type(event).__name__}")
    return event


def parse(frame: bytes | str) -> ServerEvent:
    """:func:`loads` then :func:`classify`: one wire frame to the event the bridge acts on."""
    return classify(loads(frame))


def classify(ev: Mapping[str, Any]) -> ServerEvent:
    """Turn one server event into the dataclass the bridge acts on.

    Unknown or uninteresting types give :class:`Other`. A known type that lacks a
    needed field raises :class:`~voicebridge.errors.VoiceLiveEventError`.
    """
    etype = ev.get("type")
    if not isinstance(etype, str):
        raise VoiceLiveEventError("event without a string 'type'")
    classifier = _CLASSIFIERS.get(etype)
    if classifier is None:
        return Other(type=etype)
    return classifier(ev)


# --------------------------------------------------------------------------- model rules

#: Model-name prefixes of the multimodal realtime family (``gpt-realtime``,
#: ``gpt-realtime-mini``, ``gpt-4o-realtime-*``, ``gpt-4o-mini-realtime-*``).
REALTIME_MODEL_PREFIXES = ("gpt-realtime", "gpt-4o-realtime", "gpt-4o-mini-realtime")

#: Input transcription models per family (voice-live-how-to "Audio input transcription";
#: the 2026-07-15 API reference, RealtimeAudioInputTranscriptionSettings). The first of
#: each tuple is the default: ``whisper-1`` as in Microsoft's gpt-realtime telephony
#: sample; ``azure-speech`` for "all non-multimodal models and agents".
TRANSCRIPTION_MODELS: dict[str, tuple[str, ...]] = {
    "realtime": (
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-diarize",
        "mai-transcribe",
        "mai-transcribe-2",
    ),
    "other": ("azure-speech", "mai-transcribe", "mai-transcribe-2"),
}


def model_family(mode: str, model: str | None) -> str:
    """``"realtime"`` for a gpt-realtime-family model in model mode, else ``"other"``
    (agents and the non-multimodal models)."""
    if mode == "model" and model and model.lower().startswith(REALTIME_MODEL_PREFIXES):
        return "realtime"
    return "other"


def transcription_models(mode: str, model: str | None) -> tuple[str, ...]:
    """The input transcription models Voice Live supports with this mode and model;
    the first is the default."""
    return TRANSCRIPTION_MODELS[model_family(mode, model)]


# --------------------------------------------------------------------------- client events


def session_update(session: Mapping[str, Any]) -> dict[str, Any]:
    """``session.update`` with the *whole* configuration. Microsoft's sources disagree on
    whether an update merges (API reference) or replaces (auto-truncation how-to); the
    bridge sends everything it configures in its one update, so either reading gives the
    same session."""
    return {"type": SESSION_UPDATE, "session": dict(session)}


#: The error a ``response.create`` with ``cancel_previous`` false gets while the service
#: already has a response in progress (the OpenAI-compatible code).
ACTIVE_RESPONSE_ERROR = "conversation_already_has_active_response"


def input_audio_append(b64: str) -> dict[str, Any]:
    """``input_audio_buffer.append`` carrying base64 PCM16 at the session input rate."""
    return {"type": APPEND, "audio": b64}


_APPEND_JSON_HEAD = '{"type": "' + APPEND + '", "audio": "'
_APPEND_JSON_TAIL = '"}'


def append_json(b64: str) -> str:
    """The wire text of :func:`input_audio_append`, byte for byte what ``json.dumps``
    (and so the SDK's ``send``) writes — base64 needs no JSON escaping, so the audio
    is passed through instead of being scanned by the encoder again (5.9 -> 0.15 us
    per 20 ms append, measured)."""
    return _APPEND_JSON_HEAD + b64 + _APPEND_JSON_TAIL


def append_audio(text: str) -> str | None:
    """The base64 audio of an :func:`append_json` text; None for any other message."""
    if text.startswith(_APPEND_JSON_HEAD) and text.endswith(_APPEND_JSON_TAIL):
        return text[len(_APPEND_JSON_HEAD) : -len(_APPEND_JSON_TAIL)]
    return None


def response_create(*, instructions: str | None = None) -> dict[str, Any]:
    """A ``response.create`` (the model answers the conversation so far).

    ``cancel_previous`` is false: the service's default (true, SDK
    ``ResponseCreateParams``) would cut short a response the server started a moment
    before this arrived (the race between the bridge's nudge and a server-side
    response); with false such a request is refused instead and the server's
    response plays out."""
    response: dict[str, Any] = {"cancel_previous": False}
    if instructions is not None:
        response["instructions"] = instructions
    return {"type": RESPONSE_CREATE, "response": response}


def greeting_pre_generated(text: str) -> dict[str, Any]:
    """A ``response.create`` that speaks ``text`` verbatim (proactive greeting, §7);
    ``cancel_previous`` false as in :func:`response_create`."""
    return {
        "type": RESPONSE_CREATE,
        "response": {
            "cancel_previous": False,
            "pre_generated_assistant_message": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
            },
        },
    }


def function_call_output(call_id: str, output: Any) -> dict[str, Any]:
    """``conversation.item.create`` with a tool's result (the guard coerces ``output``
    to a string and caps its size)."""
    return {
        "type": ITEM_CREATE,
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def function_tool(name: str, description: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """One function tool of ``session.update``'s ``tools``."""
    return {
        "type": "function",
        "name": name,
        "description": description,
        "parameters": dict(parameters),
    }


def response_cancel() -> dict[str, Any]:
    return {"type": RESPONSE_CANCEL}


def message_item_create(role: str, text: Any) -> dict[str, Any]:
    """``conversation.item.create`` for a message (the guard coerces ``text`` to a string)."""
    part_type = "input_text" if role in ("user", "system") else "text"
    return {
        "type": ITEM_CREATE,
        "item": {"type": "message", "role": role, "content": [{"type": part_type, "text": text}]},
    }


def build_session_config(
    *,
    input_hz: int,
    output_hz: int,
    voice: str | Mapping[str, Any] | None,
    instructions: str | None = None,
    vad_type: str | None = "azure_semantic_vad",
    silence_duration_ms: int = 500,
    interrupt_response: bool = True,
    auto_truncate: bool = True,
    noise_suppression: bool | None = True,
    echo_cancellation: bool | None = True,
    transcription_model: str | None = "whisper-1",
    transcription_language: str | None = None,
    interim_response: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``session`` object of the bridge's one ``session.update`` (§7).

    ``input_hz`` is 16000 or 24000; ``output_hz`` picks ``pcm16`` (24 kHz) or
    ``pcm16_16000hz``. ``voice`` is an Azure voice name (``*Neural`` or containing a
    dash), an OpenAI voice name, or a full voice object.

    None leaves a field out of the update (agent mode sends only what the operator
    configured: the agent's stored configuration owns the rest); ``False`` for noise
    suppression or echo cancellation sends an explicit ``null`` (off).
    """
    if input_hz not in (16000, 24000):
        raise ValueError(f"input rate must be 16000 or 24000, not {input_hz}")
    if output_hz not in (16000, 24000):
        raise ValueError(f"output rate must be 16000 or 24000, not {output_hz}")
    session: dict[str, Any] = {
        "modalities": ["text", "audio"],
        "input_audio_format": "pcm16",
        "input_audio_sampling_rate": input_hz,
        "output_audio_format": "pcm16" if output_hz == 24000 else "pcm16_16000hz",
    }
    if vad_type is not None:
        session["turn_detection"] = {
            "type": vad_type,
            "silence_duration_ms": silence_duration_ms,
            "create_response": True,
            "interrupt_response": interrupt_response,
            "auto_truncate": auto_truncate,
        }
    if voice is not None:
        session["voice"] = voice_config(voice)
    if instructions:
        session["instructions"] = instructions
    if noise_suppression is not None:
        session["input_audio_noise_reduction"] = (
            {"type": "azure_deep_noise_suppression"} if noise_suppression else None
        )
    if echo_cancellation is not None:
        session["input_audio_echo_cancellation"] = (
            {"type": "server_echo_cancellation"} if echo_cancellation else None
        )
    if transcription_model:
        transcription: dict[str, Any] = {"model": transcription_model}
        if transcription_language:
            transcription["language"] = transcription_language
        session["input_audio_transcription"] = transcription
    if interim_response:
        session["interim_response"] = dict(interim_response)
    return session


_OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)


def voice_config(voice: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """The wire form of a voice: OpenAI names stay plain strings, Azure names become
    ``{"type": "azure-standard", "name": ...}``, objects pass through."""
    if isinstance(voice, Mapping):
        return dict(voice)
    if voice.lower() in _OPENAI_VOICES:
        return voice
    return {"type": "azure-standard", "name": voice}
