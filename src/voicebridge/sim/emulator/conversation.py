"""The conversation a session keeps: what the caller said (transcripts, from the shipped
script or given segments), the items the client created (user text, function calls and
their outputs), what the rule table decides from them, and token usage.

:class:`ConversationState` sits between :class:`~.connection.SessionConnection` and
:class:`~.responses.ResponseStreaming`: responses ask it what to say (:meth:`_decide`)
and what to report as usage (:meth:`_begin_usage` / :meth:`_finish_usage`).
"""

from __future__ import annotations

from typing import Any

from voicebridge.sim.emulator.config import Rejected
from voicebridge.sim.emulator.connection import SessionConnection
from voicebridge.sim.emulator.tools import (
    CallerInput,
    Decision,
    ToolOutput,
    ToolRule,
    callable_tools,
    decide,
    default_rules,
)
from voicebridge.sim.emulator.usage import (
    Tokens,
    UsageMeter,
    add_usage,
    empty_totals,
    text_tokens,
    tools_tokens,
)

#: A caller turn this close (s) to a segment counts as overlapping it (VAD onset/offset
#: and the bridge's resampler shift the emulator's times a little from the script's).
SEGMENT_SLACK_S = 0.25


class ConversationState(SessionConnection):
    """Conversation records of a session (see the module docstring).

    ``tool_calls``: one dict per function call emitted, ``{"name", "call_id", "arguments"
    (the JSON text sent), "at_s" (media seconds since the session started), "audio_s"
    (input-audio time), "response_id", "item_id", "rule"}``. ``tool_outputs``: one per
    ``function_call_output`` item accepted, ``{"call_id", "name" (of its call), "output",
    "item_id", "at_s", "audio_s"}``. ``user_texts``: one per user ``message`` item with
    text (``input_text``) the client created, ``{"text", "item_id", "at_s", "audio_s"}``.
    ``usage_totals``: the sum of every ``response.usage`` this session reported (the same
    shape, plus ``responses``). ``audio_base_s``: input audio of the earlier sessions of
    the same call (or resumed conversation), where this session's audio time starts on
    the caller's time line.
    """

    responses: list[dict[str, Any]]  # ResponseStreaming's records

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        emu = self._emu
        self.tool_calls: list[dict[str, Any]] = []
        self.tool_outputs: list[dict[str, Any]] = []
        self.user_texts: list[dict[str, Any]] = []
        self.usage_totals: dict[str, Any] = empty_totals()
        self._line_key = self.call_id or self.conversation_id  # the caller's time line
        self.audio_base_s = emu._audio_base.get(self._line_key, 0.0)
        # A resumed conversation keeps its context and its calls.
        self._meter: UsageMeter = emu._meters.setdefault(self.conversation_id, UsageMeter())
        self._calls: dict[str, str] = emu._calls.setdefault(self.conversation_id, {})
        self._pending_inputs: list[CallerInput] = []
        self._pending_outputs: list[ToolOutput] = []
        self._turn_end_s = 0.0  # session audio time at which the last caller turn ended

    # --- what the caller said ------------------------------------------------------------
    def _turn_text(self, start_s: float, end_s: float) -> str | None:
        """The transcript of a caller turn (session audio times): with ``caller_segments``
        the segment it overlaps, else the next text of the shipped script. The turn starts
        no earlier than the previous one ended (a commit without VAD reports the start of
        the session's audio)."""
        start_s = min(max(start_s, self._turn_end_s), end_s)
        self._turn_end_s = end_s
        self._save_audio_base()
        self._meter.add_audio_s(end_s - start_s)
        if self._emu.caller_segments is None:
            return next(self._transcripts, None)
        return self._segment_text(self.audio_base_s + start_s, self.audio_base_s + end_s)

    def _segment_text(self, start_s: float, end_s: float) -> str | None:
        """The unused segment overlapping ``[start_s, end_s]`` (caller time) the most; a
        turn overlapping only used segments (a pause splitting one) gets None; a turn
        overlapping none takes the next unused segment in order (times that do not line
        up: as without segments)."""
        segments = self._emu.caller_segments or []
        used = self._emu._segments_used.setdefault(self._line_key, set())
        best, best_overlap, overlaps_any = None, 0.0, False
        for i, seg in enumerate(segments):
            overlap = min(end_s, seg["end_s"] + SEGMENT_SLACK_S) - max(
                start_s, seg["start_s"] - SEGMENT_SLACK_S
            )
            if overlap <= 0:
                continue
            overlaps_any = True
            if i not in used and overlap > best_overlap:
                best, best_overlap = i, overlap
        if best is None and not overlaps_any:
            best = next((i for i in range(len(segments)) if i not in used), None)
        if best is None:
            return None
        used.add(best)
        text = segments[best].get("text")
        return text if isinstance(text, str) else None

    def _heard(self, transcript: str) -> None:
        """A finished caller turn's transcript: an input the next response may answer."""
        self._pending_inputs.append(CallerInput("said", transcript))

    def _save_audio_base(self) -> None:
        """Where the next session of this call starts on the caller's time line."""
        self._emu._audio_base[self._line_key] = self.audio_base_s + self._audio_s

    # --- items the client created --------------------------------------------------------
    def _take_item(self, item: dict[str, Any], item_id: str) -> None:
        """Check and record a ``conversation.item.create`` item (before it is echoed)."""
        kind = item.get("type", "message")
        if kind == "function_call_output":
            self._take_output(item, item_id)
        elif kind == "function_call":
            fname, call_id = item.get("name"), item.get("call_id")
            if isinstance(call_id, str):
                self._calls[call_id] = fname if isinstance(fname, str) else ""
            self._meter.add_text(f"{fname or ''}{item.get('arguments') or ''}")
        elif kind == "message":
            self._take_message(item, item_id)

    def _take_output(self, item: dict[str, Any], item_id: str) -> None:
        """A ``function_call_output``: stored, and answered by the next response.

        One whose ``call_id`` no ``function_call`` of the conversation has is refused
        (:class:`Rejected`; inferred: OpenAI documents that the server checks it, the
        message is the OpenAI Responses API's, the code the emulator's)."""
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or call_id not in self._calls:
            raise Rejected(
                "invalid_call_id",
                f"No tool call found for function call output with call_id {call_id!r}.",
                "item.call_id",
            )
        output = item.get("output")
        text = output if isinstance(output, str) else ""
        name = self._calls[call_id]
        self.tool_outputs.append(
            {"call_id": call_id, "name": name, "output": text, "item_id": item_id} | self._now()
        )
        self._pending_outputs.append(ToolOutput(name, text))
        self._meter.add_text(text)

    def _take_message(self, item: dict[str, Any], item_id: str) -> None:
        """A message item: its text joins the context; a user's text parts are inputs.
        An assistant message before this session's first response and first audio is
        history being replayed: the inputs before it were answered."""
        role = item.get("role")
        if role == "assistant" and not self.responses and self._audio_s == 0:
            self._pending_inputs.clear()
        parts = item.get("content")
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                continue
            text = part["text"]
            self._meter.add_text(text)
            if role == "user" and part.get("type") in ("input_text", "text"):
                self.user_texts.append({"text": text, "item_id": item_id} | self._now())
                self._pending_inputs.append(CallerInput("text", text))

    def _now(self) -> dict[str, float]:
        return {"at_s": self.media_s(), "audio_s": round(self._audio_s, 3)}

    # --- what a response does ------------------------------------------------------------
    def _rules(self, tools: Any) -> tuple[ToolRule, ...]:
        """The table in force: the emulator's ``tool_rules``; else the shipped one when
        the response has tools, else none (so nothing changes without tools)."""
        if self._emu.tool_rules is not None:
            return self._emu.tool_rules
        return default_rules() if tools else ()

    def _tools(self, params: dict[str, Any]) -> tuple[Any, Any]:
        """``(tools, tool_choice)`` of a response: its own, else the session's."""
        tools = params["tools"] if "tools" in params else self.config.get("tools")
        choice = params.get("tool_choice", self.config.get("tool_choice", "auto"))
        return tools, choice

    def _decide(self, params: dict[str, Any]) -> Decision | None:
        """The rule decision for a response beginning now (its inputs are used up)."""
        tools, choice = self._tools(params)
        inputs, outputs = self._pending_inputs, self._pending_outputs
        self._pending_inputs, self._pending_outputs = [], []
        rules = self._rules(tools)
        if not rules:
            return None
        return decide(rules, inputs, outputs, callable_tools(tools, choice))

    def _note_call(
        self, name: str, call_id: str, arguments: str, response_id: str, item_id: str, rule: str
    ) -> None:
        self._calls[call_id] = name
        self.tool_calls.append(
            {
                "name": name,
                "call_id": call_id,
                "arguments": arguments,
                "response_id": response_id,
                "item_id": item_id,
                "rule": rule,
            }
            | self._now()
        )

    # --- usage ---------------------------------------------------------------------------
    def _begin_usage(self, params: dict[str, Any]) -> Tokens:
        """The input of a response beginning now (:mod:`.usage`)."""
        instructions = params.get("instructions")
        if not isinstance(instructions, str):
            instructions = self.config.get("instructions")
        prefix = text_tokens(instructions) if isinstance(instructions, str) else 0
        extra = params.get("additional_instructions")
        if isinstance(extra, str):
            prefix += text_tokens(extra)
        prefix += tools_tokens(self._tools(params)[0])
        return self._meter.begin(prefix)

    def _finish_usage(
        self, given: Tokens, *, samples: int, rate_hz: int, transcript: str, calls: list[str]
    ) -> dict[str, Any]:
        """The ``usage`` of a response ending now; added to ``usage_totals``."""
        usage = self._meter.finish(
            given, out_samples=samples, rate_hz=rate_hz, transcript=transcript, calls=calls
        )
        add_usage(self.usage_totals, usage)
        return usage
