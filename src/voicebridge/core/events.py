"""What the core tells the adapter: small frozen dataclasses (websockets' ``events_received``).

:meth:`CallBridge.events_received() <voicebridge.core.bridge.CallBridge.events_received>`
hands these over in the order they happened. The adapter dispatches on their types
(``match``); the conversation log writes each as one JSONL line with
:func:`as_record` — ``{<fields>, "event": NAME}``, the same keys and names the log
had before the events were typed, so readers of the log do not change.

Each class's :attr:`name` is its name in the log. None of them carries audio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "AcsMalformed",
    "AcsMetadata",
    "AcsRateChanged",
    "AcsRateMismatch",
    "AcsSocketReplaced",
    "AgentTranscript",
    "AgentTruncated",
    "BargeIn",
    "BridgeEvent",
    "CallerSpeechStopped",
    "Dtmf",
    "GuardBlocked",
    "HistoryReplayed",
    "NoInput",
    "ReplaceReason",
    "ResponseEnded",
    "ResponseNudged",
    "ResponseStarted",
    "ServerTool",
    "SessionLost",
    "SessionReady",
    "SessionStarted",
    "ToolAnswered",
    "ToolRequested",
    "TurnAnomaly",
    "UserTranscript",
    "VoiceLiveError",
    "VoiceLiveMalformed",
    "as_record",
]


class ReplaceReason(StrEnum):
    """Why the Voice Live session is replaced (the call goes on, with a new session).

    The values are the strings logs, reports and spans have always carried
    (``voicelive_reconnecting`` lines, ``reconnects[].reason``).
    """

    #: The adapter's: the socket closed, or a run of frames that are not JSON objects.
    VOICELIVE_CLOSED = "voicelive_closed"
    #: The core's (:meth:`VoiceLiveSession.poll <voicebridge.core.session.VoiceLiveSession.poll>`):
    #: no ``session.updated`` in time.
    SESSION_UPDATE_TIMEOUT = "session_update_timeout"
    #: The core's: a committed turn got no response, even after one nudge.
    RESPONSE_TIMEOUT = "response_timeout"
    #: The core's: a response is active but the service went quiet.
    RESPONSE_STALLED = "response_stalled"
    #: The core's: ``expires_at`` is near (replaced at a quiet moment if there is one).
    SESSION_EXPIRING = "session_expiring"


# --------------------------------------------------------------------------- ACS side


@dataclass(frozen=True, slots=True)
class AcsMalformed:
    """An ACS media message the codec could not read (counted, never raised)."""

    name: ClassVar[str] = "acs_malformed"
    error: str


@dataclass(frozen=True, slots=True)
class AcsMetadata:
    """ACS announced the stream's format."""

    name: ClassVar[str] = "acs_metadata"
    sample_rate: int
    length: int


@dataclass(frozen=True, slots=True)
class AcsRateChanged:
    """The stream's rate differs from the configured one before any audio: adopted."""

    name: ClassVar[str] = "acs_rate_changed"
    expected: int
    got: int


@dataclass(frozen=True, slots=True)
class AcsRateMismatch:
    """The stream's rate changed after audio had arrived: ignored, reported."""

    name: ClassVar[str] = "acs_rate_mismatch"
    expected: int
    got: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A keypad key, as :class:`~voicebridge.core.control.DtmfCollector` took it: ``kind``
    is ``collecting``, ``cleared``, ``submitted``, ``action`` or ``ignored``. Never the
    digits (callers type card and account numbers): only the entry's ``length``."""

    name: ClassVar[str] = "dtmf"
    kind: str
    length: int
    action: str = ""


@dataclass(frozen=True, slots=True)
class AcsSocketReplaced:
    """A new media socket replaced the old one: pacing restarted."""

    name: ClassVar[str] = "acs_socket_replaced"


# --------------------------------------------------------------------------- Voice Live session


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """``session.created``: a session is open; ``session.update`` is queued."""

    name: ClassVar[str] = "session_created"
    session_id: str
    conversation_id: str | None
    #: where the conversation id was found (see ``voicelive.SessionCreated``)
    conversation_id_field: str | None
    agent: Mapping[str, Any] | None
    voice: Any
    expires_at: float | None  # epoch seconds


@dataclass(frozen=True, slots=True)
class SessionReady:
    """``session.updated``: the session confirmed its configuration (a reconnect is over)."""

    name: ClassVar[str] = "session_updated"
    session_id: str
    voice: Any


@dataclass(frozen=True, slots=True)
class HistoryReplayed:
    """Model mode: the conversation so far was replayed into a new session."""

    name: ClassVar[str] = "history_replayed"
    items: int


@dataclass(frozen=True, slots=True)
class SessionLost:
    """The adapter reported the session gone (:meth:`CallBridge.voicelive_lost`)."""

    name: ClassVar[str] = "voicelive_lost"
    session_id: str | None


@dataclass(frozen=True, slots=True)
class VoiceLiveMalformed:
    """A Voice Live frame or event the codec could not use (counted, never raised)."""

    name: ClassVar[str] = "voicelive_malformed"
    error: str


@dataclass(frozen=True, slots=True)
class VoiceLiveError:
    """An ``error`` event from the service. ``message`` may quote conversation content."""

    name: ClassVar[str] = "voicelive_error"
    type: str
    code: str
    message: str
    param: str | None
    event_id: str | None


@dataclass(frozen=True, slots=True)
class GuardBlocked:
    """The outbound guard refused a message (it was not sent)."""

    name: ClassVar[str] = "guard_blocked"
    type: str | None
    reason: str


# --------------------------------------------------------------------------- responses and turns


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """``response.created``."""

    name: ClassVar[str] = "response_created"
    response_id: str
    turn: int


@dataclass(frozen=True, slots=True)
class ResponseEnded:
    """``response.done``, with the service's status and reason."""

    name: ClassVar[str] = "response_done"
    response_id: str
    status: str
    reason: str | None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ResponseNudged:
    """A committed turn got no response in time: one ``response.create`` of ours."""

    name: ClassVar[str] = "response_nudged"
    sent: bool
    turn: int


@dataclass(frozen=True, slots=True)
class TurnAnomaly:
    """A server fact the response state has no transition for (counted)."""

    name: ClassVar[str] = "turn_anomaly"
    error: str


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller spoke over the agent: StopAudio queued, agent audio dropped."""

    name: ClassVar[str] = "barge_in"
    dropped_samples: int
    response_id: str | None


@dataclass(frozen=True, slots=True)
class UserTranscript:
    name: ClassVar[str] = "user_transcript"
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class AgentTranscript:
    name: ClassVar[str] = "agent_transcript"
    response_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class CallerSpeechStopped:
    """``input_audio_buffer.speech_stopped``."""

    name: ClassVar[str] = "speech_stopped"
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class AgentTruncated:
    """``conversation.item.truncated``: the agent's item was cut where the caller stopped
    hearing it."""

    name: ClassVar[str] = "truncated"
    item_id: str
    audio_end_ms: int


# --------------------------------------------------------------------------- call control


@dataclass(frozen=True, slots=True)
class ToolRequested:
    """The model called a function tool (``response.function_call_arguments.done``):
    ``arguments`` parsed, or ``error`` (plain text the model gets back as the result)."""

    name: ClassVar[str] = "tool_requested"
    call_id: str
    tool: str
    arguments: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ToolAnswered:
    """A tool's result went back to Voice Live (``respond``: a response follows)."""

    name: ClassVar[str] = "tool_answered"
    call_id: str
    tool: str
    ok: bool
    respond: bool


@dataclass(frozen=True, slots=True)
class ServerTool:
    """The service ran a tool itself (agent mode: an MCP call, a Foundry agent call):
    the event type only (arguments and results may carry conversation content)."""

    name: ClassVar[str] = "server_tool"
    type: str


@dataclass(frozen=True, slots=True)
class NoInput:
    """The caller said and keyed nothing for ``NO_INPUT_REPROMPT_S`` after the agent's
    last audio: ``reprompt`` (the ``count``-th) or ``give_up`` (goodbye and hang-up)."""

    name: ClassVar[str] = "no_input"
    action: str
    count: int


BridgeEvent = (
    AcsMalformed
    | AcsMetadata
    | AcsRateChanged
    | AcsRateMismatch
    | Dtmf
    | AcsSocketReplaced
    | SessionStarted
    | SessionReady
    | HistoryReplayed
    | SessionLost
    | VoiceLiveMalformed
    | VoiceLiveError
    | GuardBlocked
    | ResponseStarted
    | ResponseEnded
    | ResponseNudged
    | TurnAnomaly
    | BargeIn
    | UserTranscript
    | AgentTranscript
    | CallerSpeechStopped
    | AgentTruncated
    | ToolRequested
    | ToolAnswered
    | ServerTool
    | NoInput
)


def as_record(event: BridgeEvent) -> dict[str, Any]:
    """``event`` as a conversation-log record: its fields, then ``"event": NAME``."""
    record = {f.name: getattr(event, f.name) for f in fields(event)}
    record["event"] = event.name
    return record
