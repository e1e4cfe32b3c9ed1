"""Token usage on every response.done, by the documented formula (emulator/usage.py), as the
SDK parses it, and the per-session and per-call running totals."""

from __future__ import annotations

from typing import Any

import numpy as np
from azure.ai.voicelive.models import (
    CachedTokenDetails,
    InputTokenDetails,
    OutputTokenDetails,
    ServerEventResponseDone,
    TokenUsage,
)

from tests.unit.sim.emulator.client import (
    Factory,
    b64,
    only_session,
    tone,
    until,
    update,
    vl_connect,
)
from voicebridge.sim.emulator import (
    CALL_ID_HEADER,
    audio_tokens_for,
    load_prompts,
    prompt_pcm,
    text_tokens,
)
from voicebridge.sim.emulator.usage import audio_tokens, sum_totals

INSTRUCTIONS = "Be brief."  # 9 characters: 3 text tokens


def as_dict(usage: TokenUsage) -> dict[str, Any]:
    return dict(usage.as_dict())


async def test_every_response_done_reports_usage_by_the_formula(emulators: Factory) -> None:
    emulator = await emulators(speed=20)
    greeting = load_prompts().prompts[load_prompts().greeting]
    answer = load_prompts().prompts[load_prompts().answer_cycle[0]]
    async with vl_connect(emulator) as conn:
        await update(conn, instructions=INSTRUCTIONS)
        await conn.response.create()
        first = (await until(conn, "response.done"))[-1]
        turn = np.concatenate([tone(0.6), np.zeros(24_000, dtype=np.int16)])
        await conn.input_audio_buffer.append(audio=b64(turn))  # a 0.6 s caller turn
        second = (await until(conn, "response.done"))[-1]
    assert isinstance(first, ServerEventResponseDone)
    assert isinstance(second, ServerEventResponseDone)
    usage = first.response.usage
    assert isinstance(usage, TokenUsage)
    assert isinstance(usage.input_token_details, InputTokenDetails)
    assert isinstance(usage.input_token_details.cached_tokens_details, CachedTokenDetails)
    assert isinstance(usage.output_token_details, OutputTokenDetails)
    greeting_audio = audio_tokens_for(len(prompt_pcm(greeting.name, 24_000)), 24_000)
    assert greeting_audio == 25  # 58 906 samples = 2.454 s
    # First response: input is the instructions only; nothing cached.
    assert (usage.input_tokens, usage.input_token_details.text_tokens) == (3, 3)
    assert usage.input_token_details.audio_tokens == 0
    assert usage.input_token_details.cached_tokens == 0
    assert usage.output_token_details.audio_tokens == greeting_audio
    assert usage.output_token_details.text_tokens == text_tokens(greeting.text)
    assert usage.output_tokens == greeting_audio + text_tokens(greeting.text)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # Second: the context now holds the greeting's audio and the caller's 0.6 s turn;
    # the instructions were in the first response's input, so they are cached.
    usage = second.response.usage
    assert usage.input_token_details.audio_tokens == greeting_audio + audio_tokens(0.6)
    assert usage.input_token_details.text_tokens == 3
    details = usage.input_token_details.cached_tokens_details
    assert (details.text_tokens, details.audio_tokens, details.image_tokens) == (3, 0, 0)
    assert usage.input_token_details.cached_tokens == 3
    assert usage.output_token_details.text_tokens == text_tokens(answer.text)
    session = only_session(emulator)
    assert session.usage_totals == sum_totals([as_dict(first.response.usage), as_dict(usage)])
    assert session.usage_totals["responses"] == 2
    assert session.responses[1]["usage"] == as_dict(usage)


async def test_usage_counts_text_items_tools_and_a_cancelled_response(emulators: Factory) -> None:
    emulator = await emulators(speed=4)
    tools = [{"type": "function", "name": "end_call", "parameters": {}}]
    headers = {CALL_ID_HEADER: "call-usage"}
    async with vl_connect(emulator, headers=headers) as conn:
        await update(conn, tools=tools)
        text = "The caller pressed the keys: 42"
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
        await until(conn, "response.audio.delta")
        await conn.send({"type": "response.cancel"})
        cancelled = (await until(conn, "response.done"))[-1]
    usage = cancelled.response.usage
    assert cancelled.response.status == "cancelled"
    tools_json = '[{"name":"end_call","parameters":{},"type":"function"}]'
    assert usage.input_token_details.text_tokens == text_tokens(text) + text_tokens(tools_json)
    record = only_session(emulator).responses[0]
    sent = audio_tokens_for(record["samples_sent"], 24_000)
    assert 0 < sent < audio_tokens_for(record["samples_total"], 24_000)
    assert usage.output_token_details.audio_tokens == sent
    assert emulator.usage_for_call("call-usage") == only_session(emulator).usage_totals
    assert emulator.usage_for_call("another-call")["responses"] == 0


async def test_committed_turns_without_vad_count_their_own_audio(emulators: Factory) -> None:
    """Without turn detection each commit is a turn of the audio since the previous one
    (or a clear): 1 s, then 1 s after 0.5 s cleared, is 20 audio tokens, not 10 + 25."""
    emulator = await emulators(speed=20)
    async with vl_connect(emulator) as conn:
        await update(conn, turn_detection=None)
        await conn.input_audio_buffer.append(audio=b64(tone(1.0)))
        await conn.send({"type": "input_audio_buffer.commit"})
        await conn.input_audio_buffer.append(audio=b64(tone(0.5)))
        await conn.send({"type": "input_audio_buffer.clear"})
        await conn.input_audio_buffer.append(audio=b64(tone(1.0)))
        await conn.send({"type": "input_audio_buffer.commit"})
        await conn.response.create()
        done = (await until(conn, "response.done"))[-1]
    assert done.response.usage.input_token_details.audio_tokens == 20
