"""A call's spans below the call span (:mod:`voicebridge.telemetry`), from the core's
typed events and the supervisor's reconnects — control events, never per audio frame.

* ``voicelive.response``: ``ResponseStarted`` → ``ResponseEnded`` (barge-ins as span
  events; responses cut by the call's end close as ``unfinished``);
* ``voicelive.reconnect``: from the loss to the new session's ``session.updated``
  (``reconnected``), a new loss (``lost_again``), the budget running out (``failed``)
  or the call's end (``call_ended``);
* the call span gets Voice Live errors and guard blocks as events (codes and reasons
  only: messages may quote conversation content) and the session / conversation ids.

``voicelive.connect`` spans are opened by the supervisor around each connect, as
children of :meth:`CallTracing.connect_parent`.
"""

from __future__ import annotations

from typing import Any

from voicebridge.calls import Call
from voicebridge.core.events import (
    BargeIn,
    BridgeEvent,
    GuardBlocked,
    ReplaceReason,
    ResponseEnded,
    ResponseStarted,
    ServerTool,
    SessionStarted,
    ToolAnswered,
    ToolRequested,
    VoiceLiveError,
)
from voicebridge.telemetry import Span, Telemetry

__all__ = ["CallTracing"]


class CallTracing:
    """The spans of one call's relay (a no-op span each when telemetry is off)."""

    def __init__(self, telemetry: Telemetry, call: Call) -> None:
        self.telemetry = telemetry
        self.call = call
        #: Span events from core events only when tracing is on (they are per response).
        self.enabled: bool = telemetry.enabled
        self._responses: dict[str, Span] = {}
        self.reconnect_span: Span | None = None

    def connect_parent(self) -> Span | None:
        """The parent of a ``voicelive.connect`` span: the open reconnect, else the call."""
        return self.reconnect_span or self.call.span

    def on_event(self, event: BridgeEvent) -> None:
        """Spans and span events from one core event (call only when :attr:`enabled`)."""
        call_span = self.call.span
        match event:
            case ResponseStarted(response_id=rid, turn=turn):
                self._responses[rid] = self.telemetry.start(
                    "voicelive.response",
                    call_span,
                    **{"voicebridge.response_id": rid, "voicebridge.turn": turn},
                )
            case ResponseEnded(response_id=rid, status=status, reason=reason):
                span = self._responses.pop(rid, None)
                if span is not None:
                    span.set_attribute("voicebridge.response.status", status)
                    span.set_attribute("voicebridge.response.reason", reason)
                    if status == "failed":
                        span.fail(f"response failed: {reason}")
                    span.end()
            case BargeIn(response_id=rid, dropped_samples=dropped):
                target = (self._responses.get(rid) if rid is not None else None) or call_span
                if target is not None:
                    target.add_event("barge_in", dropped_samples=dropped)
            # codes and reasons only: error messages may quote conversation content
            case VoiceLiveError(code=code, type=etype) if call_span is not None:
                call_span.add_event(event.name, code=code, type=etype, reason=None)
            case GuardBlocked(type=mtype, reason=reason) if call_span is not None:
                call_span.add_event(event.name, code=None, type=mtype, reason=reason)
            case ServerTool(type=etype) if call_span is not None:
                call_span.add_event(event.name, type=etype)
            case ToolRequested(tool=tool, call_id=cid) if call_span is not None:
                call_span.add_event(event.name, tool=tool, call_id=cid)
            case ToolAnswered(tool=tool, ok=ok) if call_span is not None:
                call_span.add_event(event.name, tool=tool, ok=ok)
            case SessionStarted() if call_span is not None:
                call_span.set_attribute("voicebridge.session_id", event.session_id)
                call_span.set_attribute("voicebridge.conversation_id", event.conversation_id)

    def reconnect_started(self, reason: ReplaceReason, close_code: int | None) -> None:
        """Open the reconnect span (ending one left open by an earlier loss)."""
        if self.reconnect_span is not None:  # a new loss before the last gap closed
            self.reconnect_span.set_attribute("voicebridge.reconnect.result", "lost_again")
            self.reconnect_span.end()
        self.reconnect_span = self.telemetry.start(
            "voicelive.reconnect",
            self.call.span,
            **{
                "voicebridge.reconnect.reason": str(reason),
                "voicebridge.voicelive_close_code": close_code,
            },
        )

    def reconnect_failed(self, attempts: int) -> None:
        """The budget ran out."""
        span, self.reconnect_span = self.reconnect_span, None
        if span is not None:
            span.set_attribute("voicebridge.reconnect.attempts", attempts)
            span.set_attribute("voicebridge.reconnect.result", "failed")
            span.fail("reconnect budget exhausted")
            span.end()

    def reconnected(self, entry: dict[str, Any]) -> None:
        """The new session confirmed its configuration (``entry``: the report's line)."""
        span, self.reconnect_span = self.reconnect_span, None
        if span is not None:
            span.set_attribute("voicebridge.reconnect.result", "reconnected")
            span.set_attribute("voicebridge.reconnect.gap_ms", entry["gap_ms"])
            span.set_attribute("voicebridge.reconnect.attempts", entry["attempts"])
            span.set_attribute(
                "voicebridge.reconnect.conversation_kept", entry["conversation_kept"]
            )
            span.end()

    def end(self) -> None:
        """End the spans still open when the relay stops (responses cut by the call's end)."""
        for span in self._responses.values():
            span.set_attribute("voicebridge.response.status", "unfinished")
            span.end()
        self._responses.clear()
        if self.reconnect_span is not None:
            self.reconnect_span.set_attribute("voicebridge.reconnect.result", "call_ended")
            self.reconnect_span.end()
            self.reconnect_span = None
