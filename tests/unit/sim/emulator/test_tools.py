"""Function tools through the real SDK: calls emitted as the service does, function call
outputs, the rule table (shipped and given), agent-owned tools and the CLI options."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from azure.ai.voicelive.aio import VoiceLiveConnection, connect
from azure.ai.voicelive.models import (
    ResponseFunctionCallItem,
    ResponseMessageItem,
    ServerEvent,
    ServerEventConversationItemCreated,
    ServerEventError,
    ServerEventResponseAudioDelta,
    ServerEventResponseDone,
    ServerEventResponseFunctionCallArgumentsDelta,
    ServerEventResponseFunctionCallArgumentsDone,
    ServerEventResponseOutputItemAdded,
    ServerEventResponseOutputItemDone,
)

from tests.unit.sim.emulator.client import (
    WHISPER,
    Factory,
    FakeTokenCredential,
    b64,
    only_session,
    tone,
    until,
    update,
    vl_connect,
)
from voicebridge.sim.emulator import build_emulator, configure, load_prompts, load_rules, prompt_pcm
from voicebridge.sim.emulator.speech import synth_pcm

TOOLS = [
    {
        "type": "function",
        "name": "transfer_to_human",
        "description": "Transfer the caller to a person.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    },
    {
        "type": "function",
        "name": "end_call",
        "description": "End the call after saying goodbye.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    },
]
APOLOGY = "Sorry, I couldn't connect you. Can I help with something else?"
# One caller turn: 0.6 s of "speech" then enough silence to end it (0.0-0.6 s).
TURN = np.concatenate([tone(0.6), np.zeros(24_000, dtype=np.int16)])


def said(text: str) -> list[dict[str, Any]]:
    """A caller script whose one segment is the turn of ``TURN``."""
    return [{"start_s": 0.0, "end_s": 0.6, "text": text}]


async def say_text(conn: VoiceLiveConnection, text: str) -> None:
    """A user text item (as the bridge writes keypad digits), then response.create."""
    await conn.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )
    await conn.response.create()


async def send_output(conn: VoiceLiveConnection, call_id: str, output: str) -> None:
    await conn.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }
    )


def of_response(events: list[ServerEvent]) -> list[ServerEvent]:
    """The events from the last response.created on."""
    start = max(i for i, e in enumerate(events) if e.type == "response.created")
    return events[start:]


async def test_a_function_call_is_emitted_as_the_service_does(emulators: Factory) -> None:
    emulator = await emulators(speed=20, caller_segments=said("Can I talk to a person?"))
    async with vl_connect(emulator) as conn:
        await update(conn, tools=TOOLS, tool_choice="auto", input_audio_transcription=WHISPER)
        await conn.input_audio_buffer.append(audio=b64(TURN))
        events = await until(conn, "response.done")
    heard = [e for e in events if e.type.endswith("transcription.completed")]
    assert [e.transcript for e in heard] == ["Can I talk to a person?"]
    response = of_response(events)
    types = [e.type for e in response]
    deltas = types.count("response.function_call_arguments.delta")
    assert deltas >= 1
    assert types == [
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    added, created = response[1], response[2]
    assert isinstance(added, ServerEventResponseOutputItemAdded)
    assert isinstance(added.item, ResponseFunctionCallItem)
    assert (added.item.status, added.item.arguments, added.output_index) == ("in_progress", "", 0)
    assert isinstance(created, ServerEventConversationItemCreated)
    assert isinstance(created.item, ResponseFunctionCallItem)
    parts = [e for e in response if isinstance(e, ServerEventResponseFunctionCallArgumentsDelta)]
    done = next(e for e in response if isinstance(e, ServerEventResponseFunctionCallArgumentsDone))
    assert "".join(p.delta for p in parts) == done.arguments
    assert json.loads(done.arguments) == {"reason": "caller asked for a person"}
    assert done.name == "transfer_to_human" and done.call_id == added.item.call_id
    assert (done.response_id, done.item_id, done.output_index) == (
        response[0].response.id,
        added.item.id,
        0,
    )
    assert all(p.call_id == done.call_id and p.item_id == done.item_id for p in parts)
    item_done = response[-2]
    assert isinstance(item_done, ServerEventResponseOutputItemDone)
    assert isinstance(item_done.item, ResponseFunctionCallItem)
    assert (item_done.item.status, item_done.item.arguments) == ("completed", done.arguments)
    final = response[-1]
    assert isinstance(final, ServerEventResponseDone)
    assert final.response.status == "completed"
    [out] = final.response.output
    assert isinstance(out, ResponseFunctionCallItem)
    assert (out.status, out.call_id, out.name) == ("completed", done.call_id, "transfer_to_human")
    session = only_session(emulator)
    [call] = session.tool_calls
    assert {k: call[k] for k in ("name", "call_id", "arguments")} == {
        "name": "transfer_to_human",
        "call_id": done.call_id,
        "arguments": done.arguments,
    }
    assert call["at_s"] >= 0 and call["rule"] == "ask-for-a-person"
    assert session.responses[0]["tool_call"]["call_id"] == done.call_id


async def test_a_farewell_is_said_then_end_call_follows_in_the_same_response(
    emulators: Factory,
) -> None:
    emulator = await emulators(speed=20, caller_segments=said("Thanks, that's all. Bye!"))
    async with vl_connect(emulator) as conn:
        await update(conn, tools=TOOLS)
        await conn.input_audio_buffer.append(audio=b64(TURN))
        events = of_response(await until(conn, "response.done"))
    audio = b"".join(e.delta for e in events if isinstance(e, ServerEventResponseAudioDelta))
    goodbye = load_prompts().prompts["goodbye"]
    assert len(audio) // 2 == len(prompt_pcm("goodbye", 24_000))
    transcript = next(e for e in events if e.type == "response.audio_transcript.done")
    assert transcript.transcript == goodbye.text
    types = [e.type for e in events]
    assert types.index("response.audio.done") < types.index("response.output_item.added", 2)
    call = next(e for e in events if isinstance(e, ServerEventResponseFunctionCallArgumentsDone))
    assert (call.name, call.output_index) == ("end_call", 1)
    final = events[-1]
    assert isinstance(final, ServerEventResponseDone)
    message, function = final.response.output
    assert isinstance(message, ResponseMessageItem) and message.status == "completed"
    assert isinstance(function, ResponseFunctionCallItem) and function.name == "end_call"
    record = only_session(emulator).responses[0]
    assert (record["prompt"], record["rule"], record["tool_call"]["name"]) == (
        "goodbye",
        "farewell",
        "end_call",
    )


@pytest.mark.parametrize(
    ("tools", "choice", "text", "expected"),
    [
        # end_call not declared: the farewell is said, nothing is called
        (TOOLS[:1], "auto", "Goodbye", "You're welcome. Have a great day. Goodbye!"),
        # tools declared but tool_choice none: the person rule has nothing to say
        (TOOLS, "none", "Get me an operator", load_prompts().prompts["greeting"].text),
        # a named tool only: end_call may not be called
        (TOOLS, {"type": "function", "name": "transfer_to_human"}, "bye", None),
    ],
    ids=["undeclared", "tool-choice-none", "named-choice"],
)
async def test_only_tools_the_response_may_call_are_called(
    emulators: Factory, tools: list[Any], choice: Any, text: str, expected: str | None
) -> None:
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn, tools=tools, tool_choice=choice)
        await say_text(conn, text)
        events = await until(conn, "response.done")
    assert not [e for e in events if e.type.startswith("response.function_call")]
    transcript = next(e for e in events if e.type == "response.audio_transcript.done")
    assert transcript.transcript == (expected or load_prompts().prompts["goodbye"].text)
    assert only_session(emulator).tool_calls == []


async def test_without_tools_or_rules_nothing_changes(emulators: Factory) -> None:
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn)
        await say_text(conn, "I want a person, goodbye")
        events = await until(conn, "response.done")
    assert not [e for e in events if e.type.startswith("response.function_call")]
    assert only_session(emulator).responses[0]["prompt"] == load_prompts().greeting


async def start_transfer(conn: VoiceLiveConnection) -> str:
    """Ask for an operator by text; returns the call id of the transfer call."""
    await say_text(conn, "Operator, please.")
    events = await until(conn, "response.done")
    done = next(e for e in events if isinstance(e, ServerEventResponseFunctionCallArgumentsDone))
    assert done.name == "transfer_to_human"
    return done.call_id


@pytest.mark.parametrize(
    ("output", "expected"),
    [("transfer failed: busy", APOLOGY), ('{"status": "ringing"}', "One moment.")],
)
async def test_a_function_call_output_is_answered_by_the_after_output_rules(
    emulators: Factory, output: str, expected: str
) -> None:
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn, tools=TOOLS)
        call_id = await start_transfer(conn)
        await send_output(conn, "call_nobody", "ok")
        error = (await until(conn, "error"))[-1]
        assert isinstance(error, ServerEventError)
        assert (error.error.code, error.error.param) == ("invalid_call_id", "item.call_id")
        await send_output(conn, call_id, output)
        created = (await until(conn, "conversation.item.created"))[-1]
        assert created.item.type == "function_call_output"
        await conn.response.create()
        events = of_response(await until(conn, "response.done"))
    transcript = next(e for e in events if e.type == "response.audio_transcript.done")
    assert transcript.transcript == expected
    audio = b"".join(e.delta for e in events if isinstance(e, ServerEventResponseAudioDelta))
    assert np.array_equal(np.frombuffer(audio, "<i2"), synth_pcm(expected, 24_000))
    assert not [e for e in events if e.type.startswith("response.function_call")]
    session = only_session(emulator)
    [stored] = session.tool_outputs
    assert (stored["call_id"], stored["name"], stored["output"]) == (
        call_id,
        "transfer_to_human",
        output,
    )
    assert session.responses[-1]["prompt"] == "synth"
    assert [e["code"] for e in session.errors_sent] == ["invalid_call_id"]


async def test_after_end_call_output_the_response_is_empty(emulators: Factory) -> None:
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn, tools=TOOLS)
        await say_text(conn, "goodbye")
        events = await until(conn, "response.done")
        done = next(
            e for e in events if isinstance(e, ServerEventResponseFunctionCallArgumentsDone)
        )
        await send_output(conn, done.call_id, "hung up")
        await conn.response.create()
        events = of_response(await until(conn, "response.done"))
    assert [e.type for e in events] == ["response.created", "response.done"]
    assert events[-1].response.status == "completed" and events[-1].response.output == []


async def test_a_tool_reply_while_a_response_is_active_cancels_it(emulators: Factory) -> None:
    """cancel_previous (default true) as before: the running answer is cancelled and the
    new response answers the function call output."""
    emulator = await emulators(speed=4)
    async with vl_connect(emulator) as conn:
        await update(conn, tools=TOOLS)
        call_id = await start_transfer(conn)
        await conn.response.create()  # an ordinary answer, streaming
        await until(conn, "response.audio.delta")
        await send_output(conn, call_id, "failed: no agent available")
        await conn.response.create()
        cancelled = (await until(conn, "response.done"))[-1]
        answered = of_response(await until(conn, "response.done"))
    assert cancelled.response.status == "cancelled"
    assert cancelled.response.status_details.reason == "client_cancelled"
    transcript = next(e for e in answered if e.type == "response.audio_transcript.done")
    assert transcript.transcript == APOLOGY


async def test_keyed_digits_are_acknowledged_and_user_texts_recorded(emulators: Factory) -> None:
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn, tools=TOOLS)
        await say_text(conn, "The caller pressed the keys: 1234#")
        events = await until(conn, "response.done")
    transcript = next(e for e in events if e.type == "response.audio_transcript.done")
    assert transcript.transcript == "Thanks, I have your number."
    assert not [e for e in events if e.type.startswith("response.function_call")]
    session = only_session(emulator)
    assert [t["text"] for t in session.user_texts] == ["The caller pressed the keys: 1234#"]
    assert session.responses[0]["rule"] == "keyed-digits"


async def test_agent_tools_come_from_the_agent_definition(emulators: Factory) -> None:
    emulator = await emulators(speed=20, agents={"bot": {"tools": TOOLS}})
    agent = {"agent_name": "bot", "project_name": "proj"}
    async with connect(credential=FakeTokenCredential(), endpoint=emulator.endpoint, **agent) as c:
        await update(c)  # the bridge declares nothing in agent mode
        await say_text(c, "a human please")
        events = await until(c, "response.done")
    done = next(e for e in events if isinstance(e, ServerEventResponseFunctionCallArgumentsDone))
    assert done.name == "transfer_to_human"


async def test_a_given_rule_table_applies_without_tools_and_waits(emulators: Factory) -> None:
    rules = [
        {
            "name": "refund",
            "when": {"said": "refund"},
            "say": "Let me look that up.",
            "call": {"name": "lookup_order", "arguments": {"kind": "refund"}},
            "wait_ms": 400,
        },
        {"when": {"text": "^hello$"}, "say": "Hi there."},
    ]
    emulator = await emulators(speed=4, tool_rules=rules, caller_segments=said("I want a refund"))
    lookup = {"type": "function", "name": "lookup_order", "parameters": {}}
    async with vl_connect(emulator) as conn:
        await update(conn, tools=[lookup])
        await conn.input_audio_buffer.append(audio=b64(TURN))
        arrivals: dict[str, float] = {}
        events = []
        async with asyncio.timeout(5):
            while not events or events[-1].type != "response.done":
                events.append(await conn.recv())
                arrivals.setdefault(events[-1].type, time.monotonic())
    async with vl_connect(emulator) as conn:
        await update(conn)  # no tools: the given table's lines still apply
        await say_text(conn, "hello")
        greeted = await until(conn, "response.done")
    first, second = emulator.sessions
    [call] = first.tool_calls
    assert (call["name"], json.loads(call["arguments"])) == ("lookup_order", {"kind": "refund"})
    # wait_ms 400 at speed 4: 0.1 s between the spoken line and the call
    waited = arrivals["response.function_call_arguments.delta"] - arrivals["response.audio.done"]
    assert waited >= 0.09
    transcript = next(e for e in greeted if e.type == "response.audio_transcript.done")
    assert transcript.transcript == "Hi there."
    assert second.tool_calls == []


@pytest.mark.parametrize(
    "table",
    [
        {"rules": [{"when": {}}]},
        [{"when": {"said": "(unclosed"}}],
        [{"when": {"said": "x", "output": "y"}}],
        [{"when": {"said": "x"}, "call": {"arguments": {}}}],
        [{"when": {"said": "x"}, "wait_ms": -1}],
        [{"when": {"said": "x"}, "sing": "la"}],
        {"rules": "nope"},
        {"rulez": []},
    ],
)
def test_bad_rule_tables_are_refused(table: Any) -> None:
    with pytest.raises(ValueError):
        load_rules(table)


def test_the_cli_reads_a_rule_table_and_a_caller_script(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"when": {"text": "x"}, "say": "y"}]}))
    (tmp_path / "call.json").write_text(json.dumps(said("operator")))
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        ["--tool-rules", str(rules), "--caller-script", str(tmp_path / "call.wav")]
    )
    emulator = build_emulator(args)
    assert emulator.tool_rules is not None and emulator.tool_rules[0].say == "y"
    assert emulator.caller_segments is not None
    assert emulator.caller_segments[0]["text"] == "operator"
    args = parser.parse_args(["--caller-script", str(tmp_path / "missing.wav")])
    with pytest.raises(ValueError, match=r"missing\.json"):
        build_emulator(args)
