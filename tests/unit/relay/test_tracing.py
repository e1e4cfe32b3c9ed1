"""The relay's spans, driven by the core's typed events (a recording Telemetry, no OTel)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voicebridge.calls import Call, ConversationLog
from voicebridge.clock import RealClock
from voicebridge.config import Settings
from voicebridge.core.events import (
    BargeIn,
    BridgeEvent,
    GuardBlocked,
    ReplaceReason,
    ResponseEnded,
    ResponseStarted,
    SessionReady,
    SessionStarted,
    VoiceLiveError,
)
from voicebridge.relay import CallServices, MediaRelay, PendingReconnect
from voicebridge.stats import ServiceStats
from voicebridge.telemetry import Telemetry


class Span:
    def __init__(self, name: str, parent: Any, attributes: dict[str, Any]) -> None:
        self.name, self.parent = name, parent
        self.attributes = dict(attributes)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.failed: str | None = None
        self.ended = 0

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, **attributes: Any) -> None:
        self.events.append((name, attributes))

    def fail(self, description: str) -> None:
        self.failed = description

    def end(self) -> None:
        self.ended += 1


class Recorder(Telemetry):
    enabled = True

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def start(self, name: str, parent: Any = None, **attributes: Any) -> Span:
        span = Span(name, parent, attributes)
        self.spans.append(span)
        return span


@pytest.fixture
async def relay(tmp_path: Any) -> AsyncIterator[MediaRelay]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint="https://res.services.ai.azure.com",
        voicelive_model="gpt-realtime",
        voicelive_api_key="k",
        acs_connection_string="endpoint=https://acs.communication.azure.com/;accesskey=eA==",
        public_base_url="https://bridge.example.com",
        acs_jwt_validation=False,
    )

    async def unused(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("no I/O in these tests")

    services = CallServices(
        settings=settings,
        stats=ServiceStats(),
        telemetry=Recorder(),
        clock=RealClock(),
        open_session=unused,
        hang_up=unused,
        call_state=unused,
        transfer=unused,
    )
    call = Call(
        id="c1",
        callback_token="1.k0.callback.mac",
        media_token="1.k0.media.mac",
        correlation_id="corr-1",
        server_call_id="",
        caller="",
        log=ConversationLog(tmp_path, "c1"),
    )
    call.span = services.telemetry.start("call")
    yield MediaRelay(services, call, websocket=None)  # type: ignore[arg-type]
    call.log.close()


def feed(relay: MediaRelay, *events: BridgeEvent) -> None:
    for event in events:
        relay.on_event(event)


async def test_one_span_per_response_with_its_barge_in(relay: MediaRelay) -> None:
    rec: Recorder = relay.services.telemetry  # type: ignore[assignment]
    call_span = relay.call.span
    feed(
        relay,
        SessionStarted("sess_1", "conv_1", "session.conversation_id", None, None, None),
        ResponseStarted("r1", turn=0),
        ResponseEnded("r1", status="completed", reason=None),
        ResponseStarted("r2", turn=1),
        BargeIn(dropped_samples=480, response_id="r2"),
        ResponseEnded("r2", status="cancelled", reason="turn_detected"),
        BargeIn(dropped_samples=0, response_id=None),
        VoiceLiveError("error", "rate_limit", "quote me", param=None, event_id=None),
        GuardBlocked("response.create", "response_active"),
        ResponseStarted("r3", turn=2),
    )
    r1, r2, r3 = [s for s in rec.spans if s.name == "voicelive.response"]
    assert r1.parent is call_span and r1.attributes["voicebridge.response_id"] == "r1"
    assert r1.attributes["voicebridge.response.status"] == "completed" and r1.ended == 1
    assert r2.events == [("barge_in", {"dropped_samples": 480})]
    assert r2.attributes["voicebridge.response.reason"] == "turn_detected" and r2.ended == 1
    assert r3.ended == 0
    assert ("barge_in", {"dropped_samples": 0}) in call_span.events
    error = next(e for e in call_span.events if e[0] == "voicelive_error")
    assert error[1]["code"] == "rate_limit" and "quote me" not in str(error)  # no message text
    blocked = next(e for e in call_span.events if e[0] == "guard_blocked")
    assert blocked[1] == {"code": None, "type": "response.create", "reason": "response_active"}
    assert call_span.attributes["voicebridge.session_id"] == "sess_1"
    assert relay.call.conversation_id == "conv_1"
    relay.tracing.end()  # the call ended mid-response
    assert r3.ended == 1 and r3.attributes["voicebridge.response.status"] == "unfinished"
    assert call_span.ended == 0  # the call span is the registry's to end


async def test_a_reconnect_span_closes_when_the_new_session_is_confirmed(relay: MediaRelay) -> None:
    rec: Recorder = relay.services.telemetry  # type: ignore[assignment]
    relay.tracing.reconnect_span = rec.start("voicelive.reconnect", relay.call.span)
    relay.pending_reconnect = PendingReconnect(
        at_s=1.0,
        reason=ReplaceReason.VOICELIVE_CLOSED,
        attempts=2,
        lost_at=relay.clock.real_now() - 0.5,
        old_conversation=None,
    )
    feed(relay, SessionReady("sess_2", voice=None))
    (span,) = [s for s in rec.spans if s.name == "voicelive.reconnect"]
    assert span.ended == 1 and relay.tracing.reconnect_span is None
    assert span.attributes["voicebridge.reconnect.result"] == "reconnected"
    assert span.attributes["voicebridge.reconnect.attempts"] == 2
    assert span.attributes["voicebridge.reconnect.gap_ms"] >= 500
    assert relay.services.stats.counters["voicelive_reconnects"] == 1


async def test_tracing_off_touches_nothing(relay: MediaRelay) -> None:
    relay.tracing.enabled = False
    rec: Recorder = relay.services.telemetry  # type: ignore[assignment]
    before = len(rec.spans)
    feed(relay, ResponseStarted("r1", turn=0))
    assert len(rec.spans) == before


async def test_the_conversation_log_keeps_its_lines(relay: MediaRelay) -> None:
    """Typed events are written as the log always read: fields, then "event": name."""
    feed(
        relay,
        ResponseStarted("r1", turn=0),
        BargeIn(dropped_samples=480, response_id="r1"),
        GuardBlocked("response.create", "response_active"),
    )
    relay.call.log.close()
    lines = [json.loads(line) for line in relay.call.log.path.read_text().splitlines()]
    assert [list(line)[2:] for line in lines] == [
        ["response_id", "turn", "event"],
        ["dropped_samples", "response_id", "event"],
        ["type", "reason", "event"],
    ]
    assert [line["event"] for line in lines] == ["response_created", "barge_in", "guard_blocked"]
    assert lines[1]["dropped_samples"] == 480 and lines[2]["reason"] == "response_active"
