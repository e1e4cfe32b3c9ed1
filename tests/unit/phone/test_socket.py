"""PhoneSocket against a fake starlette WebSocket: what reaches the core, what is the
page's own, what is counted and dropped; the side channel's messages."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from starlette.websockets import WebSocket

from voicebridge.calls import CallOutcome, CallRegistry
from voicebridge.core import acs
from voicebridge.core.events import (
    AgentTranscript,
    BargeIn,
    CallerSpeechStopped,
    Dtmf,
    ResponseEnded,
    ResponseStarted,
    SessionReady,
    UserTranscript,
    VoiceLiveError,
)
from voicebridge.phone.socket import MAX_FRAME_CHARS, PhoneSocket, page_message


class FakeWebSocket:
    def __init__(self, inbox: list[dict[str, Any]]) -> None:
        self.inbox = inbox
        self.sent: list[str] = []
        self.closed: tuple[int, str | None] | None = None
        self.fail_sends = False

    async def receive(self) -> dict[str, Any]:
        return self.inbox.pop(0) if self.inbox else {"type": "websocket.disconnect", "code": 1006}

    async def send_text(self, data: str) -> None:
        if self.fail_sends:
            raise RuntimeError("closed")
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)


def text(data: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": data}


@pytest.fixture
def call(tmp_path: Path) -> Iterator[Any]:
    call = CallRegistry(log_dir=str(tmp_path)).new_call(
        correlation_id="phone-x", server_call_id="", caller="phone"
    )
    yield call
    call.log.close()


def socket_of(call: Any, inbox: list[dict[str, Any]]) -> tuple[PhoneSocket, FakeWebSocket]:
    fake = FakeWebSocket(inbox)
    return PhoneSocket(cast(WebSocket, fake), call, Counter()), fake


async def test_acs_messages_reach_the_core_and_the_pages_own_do_not(call: Any) -> None:
    audio = acs.audio_data_message("AAAA")
    keypad = acs.dtmf_message("5")
    junk = '{"kind":"Nonsense"}'
    sock, _ = socket_of(
        call,
        [
            text(acs.audio_metadata_message(sample_rate=16000)),
            text('{"kind":"phone.unknown"}'),
            text('{"kind":"phone.broken'),  # not JSON
            text("x" * (MAX_FRAME_CHARS + 1)),  # oversized
            {"type": "websocket.receive", "bytes": b"\x00" * (MAX_FRAME_CHARS + 1)},
            text(audio),
            text(keypad),
            text(junk),  # the core counts what it cannot use, like any ACS frame
            text("not json"),
        ],
    )
    got = [(await sock.receive()).get("text") for _ in range(5)]
    assert got[1:] == [audio, keypad, junk, "not json"]
    assert sock.counters == Counter(phone_unknown_kinds=1, phone_malformed=1, phone_oversized=2)
    assert not call.disconnected.is_set()


async def test_the_hang_up_message_ends_the_call_as_the_caller_hanging_up(call: Any) -> None:
    sock, _ = socket_of(
        call, [text('{"kind":"phone.hangup"}'), text(acs.audio_data_message("AAAA"))]
    )
    await sock.receive()
    assert call.disconnected.is_set() and call.outcome is CallOutcome.CALLER_HUNG_UP


@pytest.mark.parametrize("code", [1000, 1001, 1005, 1006])
async def test_a_closed_socket_is_the_caller_gone(call: Any, code: int) -> None:
    sock, _ = socket_of(call, [{"type": "websocket.disconnect", "code": code}])
    message = await sock.receive()
    assert message["type"] == "websocket.disconnect"  # the relay's pump sees it too
    assert call.outcome is CallOutcome.CALLER_HUNG_UP and call.disconnected.is_set()
    assert sock.close_code == code


async def test_an_outcome_set_before_stands(call: Any) -> None:
    call.outcome = CallOutcome.AGENT_HUNG_UP
    sock, _ = socket_of(call, [{"type": "websocket.disconnect", "code": 1000}])
    await sock.receive()
    assert call.outcome is CallOutcome.AGENT_HUNG_UP


async def test_sends_never_raise_and_stop_after_close(call: Any) -> None:
    sock, fake = socket_of(call, [])
    await sock.send_text("a")
    fake.fail_sends = True
    await sock.send_text("b")  # the page went away: no exception into the pacer
    fake.fail_sends = False
    await sock.send_text("c")
    assert fake.sent == ["a"]


async def test_finish_says_why_then_closes(call: Any) -> None:
    sock, fake = socket_of(call, [])
    sock.side.on_event(UserTranscript(item_id="i", text="hello"))
    await sock.finish(CallOutcome.AGENT_HUNG_UP)
    assert [orjson.loads(m)["kind"] for m in fake.sent] == ["phone.transcript", "phone.ended"]
    assert orjson.loads(fake.sent[-1])["outcome"] == "agent_hung_up"
    assert fake.closed == (1000, "agent_hung_up")


async def test_the_side_channel_sends_in_order_from_its_own_task(call: Any) -> None:
    sock, fake = socket_of(call, [])
    task = asyncio.create_task(sock.side.run())
    for n in range(3):
        sock.side.send({"kind": "phone.turn", "state": str(n)})
    await asyncio.sleep(0.01)
    task.cancel()
    assert [orjson.loads(m)["state"] for m in fake.sent] == ["0", "1", "2"]


def test_page_messages_carry_transcripts_and_turns_never_digits() -> None:
    assert page_message(UserTranscript(item_id="i", text="hi")) == {
        "kind": "phone.transcript",
        "role": "user",
        "text": "hi",
    }
    agent = page_message(AgentTranscript(response_id="r", item_id="i", text="hello"))
    assert agent is not None and agent["role"] == "agent"
    states = [
        page_message(e)
        for e in (
            SessionReady(session_id="s", voice=None),
            BargeIn(dropped_samples=5, response_id="r"),
            CallerSpeechStopped(audio_end_ms=1200),
            ResponseStarted(response_id="r", turn=1),
            ResponseEnded(response_id="r", status="completed", reason=None),
        )
    ]
    assert [m["state"] for m in states if m] == [
        "listening",
        "caller_speaking",
        "thinking",
        "responding",
        "listening",
    ]
    key = page_message(Dtmf(kind="submitted", length=4))
    assert key == {"kind": "phone.turn", "state": "keypad", "dtmf": "submitted", "length": 4}
    assert page_message(Dtmf(kind="ignored", length=0)) is None
    error = VoiceLiveError(type="t", code="c", message="m", param=None, event_id=None)
    assert page_message(error) is None
