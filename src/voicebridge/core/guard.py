"""The outbound guard: the only way a message reaches Voice Live.

Voice Live closes sessions that send it something it cannot build a message from
(reported as ``message_creation_failed``, then a ~5 s stall and a disconnect). The
guard makes that impossible by construction (design.md §3):

1. ``session.update`` goes first; anything before it is refused (``before_session_update``).
2. Text content (instructions, message text, greeting, tool output) is coerced to a
   plain string — scalars via ``str``, mappings and sequences via compact JSON,
   ``None`` to ``""`` — and capped at ``max_text_bytes`` UTF-8 bytes with an explicit
   :data:`TRUNCATION_MARKER`.
3. Every serialised message stays under ``max_message_bytes``: audio appends above
   it are split at sample boundaries (never dropped); anything else is refused
   (``too_large``).
4. At most one ``response.create`` per user turn, never while a response is
   requested or active; ``response.cancel`` only while one is active: the guard
   asks :meth:`ResponseState.allows <voicebridge.core.responses.ResponseState.allows>`
   and, once the message passed every check, applies the trigger.

A refused message raises :class:`~voicebridge.errors.GuardRejected`, is counted in
``blocked[reason]`` and is never sent. :meth:`OutboundGuard.check` returns the wire
text of the messages to send, in order: each message is serialised once, here, and
the size cap measures that text (``json.dumps``, what the SDK's ``send`` would write).
Audio appends skip the encoder (:func:`~voicebridge.core.voicelive.append_json`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voicebridge.core.responses import ResponseState, Trigger
from voicebridge.core.voicelive import (
    APPEND,
    ITEM_CREATE,
    RESPONSE_CANCEL,
    RESPONSE_CREATE,
    SESSION_UPDATE,
    append_json,
)
from voicebridge.errors import GuardRejected

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_TEXT_BYTES",
    "TRUNCATION_MARKER",
    "GuardLimits",
    "OutboundGuard",
    "cap_text",
    "to_text",
]

TRUNCATION_MARKER = " …[truncated]"

DEFAULT_MAX_TEXT_BYTES = 8 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """The guard's caps, as one piece of a bridge's configuration."""

    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


#: The client events that are response triggers (checked against the response state).
_TRIGGERS = {RESPONSE_CREATE: Trigger.REQUEST, RESPONSE_CANCEL: Trigger.CANCEL}

# The wire text of an append around its audio (as json.dumps, and so the SDK, writes it).
_APPEND_OVERHEAD = len(append_json(""))


def to_text(value: Any) -> tuple[str, bool]:
    """``value`` as a plain string, and whether it had to be coerced."""
    if isinstance(value, str):
        return value, False
    if value is None:
        return "", True
    if isinstance(value, bool | int | float):
        return str(value), True
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace"), True
    if isinstance(value, Mapping | Sequence | set | frozenset):
        try:
            return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False), True
        except (TypeError, ValueError, RecursionError):
            return str(value), True
    return str(value), True


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def cap_text(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, marker included."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text, False
    marker = TRUNCATION_MARKER.encode("utf-8")
    keep = max(0, max_bytes - len(marker))
    head = raw[:keep].decode("utf-8", errors="ignore")  # never split a character
    return head + TRUNCATION_MARKER, True


class OutboundGuard:
    """Checks, fixes and counts every message for one Voice Live session."""

    def __init__(
        self,
        responses: ResponseState,
        *,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if max_message_bytes < _APPEND_OVERHEAD + 8:
            raise ValueError("max_message_bytes is too small to carry any audio")
        self.responses = responses
        self.max_text_bytes = max_text_bytes
        self.max_message_bytes = max_message_bytes
        self.session_configured = False
        self.sent_by_type: Counter[str] = Counter()
        self.blocked: Counter[str] = Counter()
        self.coerced = 0
        self.truncated = 0
        self.split = 0

    def new_session(self) -> None:
        """A new connection: ``session.update`` must go first again."""
        self.session_configured = False

    def _refuse(self, reason: str, detail: str = "") -> GuardRejected:
        self.blocked[reason] += 1
        return GuardRejected(reason, detail)

    def append(self, b64: str) -> list[str]:
        """Fast path for audio: the wire text of ``input_audio_buffer.append`` message(s)
        for ``b64``."""
        if not self.session_configured:
            raise self._refuse("before_session_update", APPEND)
        limit = self.max_message_bytes - _APPEND_OVERHEAD
        if len(b64) <= limit:
            self.sent_by_type[APPEND] += 1
            return [append_json(b64)]
        # 8 base64 chars = 6 bytes = 3 whole PCM16 samples: cut on that grid.
        step = limit - limit % 8
        parts = [append_json(b64[i : i + step]) for i in range(0, len(b64), step)]
        self.split += 1
        self.sent_by_type[APPEND] += len(parts)
        return parts

    def check(self, message: Mapping[str, Any]) -> list[str]:
        """The wire text of ``message`` (possibly split), or raise ``GuardRejected``."""
        mtype = message.get("type")
        if not isinstance(mtype, str):
            raise self._refuse("no_type")
        if mtype == APPEND:
            audio = message.get("audio")
            if not isinstance(audio, str):
                raise self._refuse("bad_audio", "audio must be base64 text")
            return self.append(audio)
        if mtype != SESSION_UPDATE and not self.session_configured:
            raise self._refuse("before_session_update", mtype)
        trigger = _TRIGGERS.get(mtype)
        if trigger is not None:
            refusal = self.responses.allows(trigger)
            if refusal:
                raise self._refuse(refusal, f"turn {self.responses.turn}")

        text = json.dumps(self._fix_text(mtype, message))  # the one serialisation
        if len(text) > self.max_message_bytes:
            raise self._refuse("too_large", f"{mtype} is {len(text)} bytes")

        if mtype == SESSION_UPDATE:
            self.session_configured = True
        elif trigger is not None:
            self.responses.handle(trigger)
        self.sent_by_type[mtype] += 1
        return [text]

    # ------------------------------------------------------------------ text fields

    def _text(self, value: Any) -> str:
        text, coerced = to_text(value)
        text, truncated = cap_text(text, self.max_text_bytes)
        self.coerced += coerced
        self.truncated += truncated
        return text

    def _fix_text(self, mtype: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``message`` whose text-bearing fields are capped plain strings."""
        out = dict(message)
        if mtype == SESSION_UPDATE:
            session = out.get("session")
            if isinstance(session, Mapping):
                out["session"] = self._fix_fields(session, ("instructions",))
        elif mtype == RESPONSE_CREATE:
            if "additional_instructions" in out:
                out["additional_instructions"] = self._text(out["additional_instructions"])
            response = out.get("response")
            if isinstance(response, Mapping):
                response = self._fix_fields(response, ("instructions",))
                pre = response.get("pre_generated_assistant_message")
                if isinstance(pre, Mapping):
                    response["pre_generated_assistant_message"] = self._fix_item(pre)
                items = response.get("input_items")
                if isinstance(items, list):
                    response["input_items"] = [
                        self._fix_item(i) if isinstance(i, Mapping) else i for i in items
                    ]
                out["response"] = response
        elif mtype == ITEM_CREATE:
            item = out.get("item")
            if isinstance(item, Mapping):
                out["item"] = self._fix_item(item)
        return out

    def _fix_fields(self, obj: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
        fixed = dict(obj)
        for name in names:
            if name in fixed and fixed[name] is not None:
                fixed[name] = self._text(fixed[name])
        return fixed

    def _fix_item(self, item: Mapping[str, Any]) -> dict[str, Any]:
        fixed = dict(item)
        if "output" in fixed:  # function_call_output
            fixed["output"] = self._text(fixed["output"])
        content = fixed.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, Mapping):
                    part = dict(part)
                    for key in ("text", "transcript"):
                        if key in part:
                            part[key] = self._text(part[key])
                parts.append(part)
            fixed["content"] = parts
        elif content is not None:  # a bare value where a list of parts belongs
            fixed["content"] = [{"type": "text", "text": self._text(content)}]
        return fixed

    def counters(self) -> dict[str, Any]:
        return {
            "sent_by_type": dict(self.sent_by_type),
            "blocked": dict(self.blocked),
            "coerced": self.coerced,
            "truncated": self.truncated,
            "split": self.split,
        }
