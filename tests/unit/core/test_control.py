"""Call control in the core: tool calls and their one response, keypad entries, the
silent-caller watchdog, token usage."""

from __future__ import annotations

from typing import Any

from tests.unit.core.helpers import counters, make, sent, start_session, vl_in
from voicebridge.core import acs, events
from voicebridge.core import voicelive as vl
from voicebridge.core.bridge import CallBridge, Control, Greeting, Reprompt
from voicebridge.core.control import DtmfCollector, DtmfConfig, NoInput, NoInputConfig


def quiet() -> CallBridge:
    b = make(greeting=Greeting(mode="none"))
    start_session(b)
    return b


def function_call(b: CallBridge, name: str, arguments: str, now: float = 1.0) -> None:
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}}, now)
    vl_in(
        b,
        {
            "type": "response.function_call_arguments.done",
            "response_id": "r1",
            "item_id": "fc1",
            "output_index": 0,
            "call_id": "call_1",
            "name": name,
            "arguments": arguments,
        },
        now,
    )


def done(b: CallBridge, rid: str = "r1", now: float = 1.2, **usage: Any) -> None:
    response: dict[str, Any] = {"id": rid, "status": "completed"}
    if usage:
        response["usage"] = usage
    vl_in(b, {"type": "response.done", "response": response}, now)


def test_a_tool_result_gets_one_response_after_the_calling_response_is_done() -> None:
    b = quiet()
    function_call(b, "transfer_to_human", '{"reason": "billing"}')
    requested = [e for e in b.events_received() if isinstance(e, events.ToolRequested)]
    assert requested == [
        events.ToolRequested(
            call_id="call_1", tool="transfer_to_human", arguments={"reason": "billing"}, error=None
        )
    ]
    b.tool_result("call_1", "transfer failed: busy", ok=False)
    # the calling response is still active: the output goes, the response.create waits
    assert sent(b) == [vl.function_call_output("call_1", "transfer failed: busy")]
    done(b)
    assert [m["type"] for m in sent(b)] == ["response.create"]
    b.poll(2.0)  # nothing more: exactly one
    assert sent(b) == []
    assert counters(b)["tool_calls"] == 1 and counters(b)["tool_errors"] == 1


def test_bad_tool_arguments_are_reported_not_raised() -> None:
    b = quiet()
    function_call(b, "end_call", "{not json")
    (req,) = [e for e in b.events_received() if isinstance(e, events.ToolRequested)]
    assert req.arguments is None and req.error is not None and "JSON" in req.error


def test_a_result_without_a_response_sends_none() -> None:
    b = quiet()
    function_call(b, "end_call", "{}")
    done(b)
    b.tool_result("call_1", "ending the call", respond=False)
    b.poll(2.0)
    assert [m["type"] for m in sent(b)] == ["conversation.item.create"]


def test_keypad_entry_interrupts_and_becomes_one_user_turn_without_the_digits_in_events() -> None:
    b = quiet()
    vl_in(b, {"type": "response.created", "response": {"id": "r1"}}, 1.0)
    for key in "1234#":
        b.receive_acs(acs.dtmf_message(key))
    got = b.events_received()
    assert sum(isinstance(e, events.BargeIn) for e in got) == 5  # each key stops the agent
    assert "1234" not in repr(got)
    assert events.Dtmf(kind="submitted", length=4) in got
    done(b, now=1.3)
    messages = sent(b)
    item = next(m for m in messages if m["type"] == "conversation.item.create")
    assert "1234" in item["item"]["content"][0]["text"]
    assert messages[-1]["type"] == "response.create"
    assert counters(b)["dtmf_submitted"] == 1


def test_keypad_collector_rules() -> None:
    c = DtmfCollector(
        DtmfConfig(inter_digit_timeout_s=3.0, max_digits=4, actions={"0": "transfer"})
    )
    assert c.press("0", 0.0).action == "transfer"  # an action key on an empty entry
    assert c.press("1", 1.0).kind == "collecting"
    assert c.press("0", 1.1).kind == "collecting"  # not an action inside an entry
    assert c.press("*", 1.2).kind == "cleared" and c.pending == 0
    assert c.press("x", 1.3).kind == "ignored"
    for key in "987":
        c.press(key, 2.0)
    assert c.poll(4.9) is None
    timed_out = c.poll(5.0)
    assert timed_out is not None and timed_out.digits == "987"
    results = [c.press(k, 6.0) for k in "1234"]  # the maximum length submits
    assert results[-1].kind == "submitted" and results[-1].digits == "1234"
    assert c.press("#", 7.0).kind == "ignored"  # nothing to submit


def test_silent_caller_is_reprompted_twice_then_given_up() -> None:
    b = make(
        greeting=Greeting(mode="none"),
        control=Control(
            no_input=NoInputConfig(reprompt_s=8.0, max_reprompts=2),
            reprompt=Reprompt(text="Are you still there?"),
        ),
    )
    start_session(b)
    b.poll(7.9)
    assert sent(b) == []
    b.poll(8.1)
    assert sent(b) == [vl.greeting_pre_generated("Are you still there?")]
    vl_in(b, {"type": "response.created", "response": {"id": "p1"}}, 8.2)
    b.poll(20.0)  # a response is active: not silence
    done(b, "p1", now=20.1)
    b.poll(28.0)
    assert sent(b) == []
    b.poll(28.2)
    assert len(sent(b)) == 1  # the second re-prompt
    vl_in(b, {"type": "response.created", "response": {"id": "p2"}}, 28.25)
    done(b, "p2", now=28.3)
    b.poll(36.4)
    got = b.events_received()
    assert events.NoInput(action="give_up", count=2) in got and b.giving_up
    assert counters(b)["no_input_reprompts"] == 2


def test_without_a_greeting_the_silence_counts_from_session_updated() -> None:
    """A callee-first outbound call (or GREETING_MODE=none) on a media clock far from 0:
    the first poll after session.updated is no re-prompt."""
    b = make(greeting=Greeting(mode="none"), control=Control(reprompt=Reprompt(text="Hello?")))
    vl_in(b, {"type": "session.created", "session": {"id": "s1"}}, 5000.0)
    vl_in(b, {"type": "session.updated", "session": {"id": "s1"}}, 5000.1)
    sent(b)
    b.poll(5000.5)
    b.poll(5008.0)
    assert sent(b) == []
    b.poll(5008.2)
    assert sent(b) == [vl.greeting_pre_generated("Hello?")]


def test_speech_or_a_key_restarts_the_silence() -> None:
    w = NoInput(NoInputConfig(reprompt_s=8.0, max_reprompts=1))
    assert w.poll(7.0, idle=True) is None
    w.caller_active(6.0)
    assert w.poll(13.0, idle=True) is None
    assert w.poll(14.1, idle=True) == "reprompt"
    w.caller_active(15.0)  # the count restarts too
    assert w.poll(23.1, idle=True) == "reprompt"
    assert w.poll(40.0, idle=False) is None  # busy: the silence restarts
    assert w.poll(48.1, idle=True) == "give_up"
    assert w.poll(99.0, idle=True) is None  # once


def test_token_usage_is_summed_from_every_response() -> None:
    b = quiet()
    usage = {
        "total_tokens": 130,
        "input_tokens": 100,
        "output_tokens": 30,
        "input_token_details": {"text_tokens": 40, "audio_tokens": 60, "cached_tokens": 32},
        "output_token_details": {"text_tokens": 10, "audio_tokens": 20},
    }
    for rid in ("a", "b"):
        vl_in(b, {"type": "response.created", "response": {"id": rid}})
        done(b, rid, **usage)
    c = counters(b)
    assert (c["tokens_input_text"], c["tokens_input_audio"], c["tokens_input_cached"]) == (
        80,
        120,
        64,
    )
    assert (c["tokens_output_text"], c["tokens_output_audio"]) == (20, 40)
    ended = [e for e in b.events_received() if isinstance(e, events.ResponseEnded)]
    assert ended[-1].input_tokens == 100 and ended[-1].output_tokens == 30


def test_usage_with_bad_numbers_counts_zero() -> None:
    b = quiet()
    vl_in(b, {"type": "response.created", "response": {"id": "a"}})
    done(b, "a", input_tokens="many", output_tokens=-5, output_token_details=None)
    c = counters(b)
    assert c["tokens_input_text"] == 0 and c["tokens_output_text"] == 0
    assert c["voicelive_malformed"] == 0


def test_tools_the_service_runs_itself_are_reported_by_type_only() -> None:
    b = quiet()
    vl_in(b, {"type": "response.mcp_call.in_progress", "item_id": "m1", "arguments": "secret"})
    vl_in(b, {"type": "response.foundry_agent_call.completed", "output": "card 4111"})
    vl_in(b, {"type": "rate_limits.updated"})
    got = [e for e in b.events_received() if isinstance(e, events.ServerTool)]
    assert got == [
        events.ServerTool(type="response.mcp_call.in_progress"),
        events.ServerTool(type="response.foundry_agent_call.completed"),
    ]
    assert "secret" not in repr(got) and "4111" not in repr(got)


def test_keypad_digits_are_blanked_out_of_logged_transcripts() -> None:
    b = quiet()
    for i, key in enumerate("4111222233334444#"):
        b.poll(0.2 * i)  # the bridge's media clock moves on between keys
        b.receive_acs(acs.dtmf_message(key))
    vl_in(
        b,
        {
            "type": "response.audio_transcript.done",
            "response_id": "r9",
            "item_id": "a9",
            "transcript": "I have 4111 2222 3333 4444, and 4111-2222-3333-4444 again.",
        },
    )
    vl_in(
        b,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "u9",
            "transcript": "yes 4111222233334444 is right",
        },
    )
    said = [
        e
        for e in b.events_received()
        if isinstance(e, events.AgentTranscript | events.UserTranscript)
    ]
    assert [e.text for e in said] == [
        "I have [keypad], and [keypad] again.",
        "yes [keypad] is right",
    ]


def test_a_flood_of_keys_is_bounded() -> None:
    c = DtmfCollector(DtmfConfig(max_keys_per_s=10.0, max_digits=64))
    kinds = [c.press("1", 5.0).kind for _ in range(100)]  # 100 keys in one instant
    assert kinds.count("collecting") == 10 and kinds.count("ignored") == 90
    assert c.press("2", 5.5).kind == "collecting"  # half a second later: 5 more allowed
