"""Call control end to end (real SDKs against the fakes): the silent caller, hang-up by
the agent, transfers, keypad digits, slow tools, token usage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import SPEED
from voicebridge.sim.simulate import SimOptions, SimResult, run_call
from voicebridge.sim.wav import write_wav

pytestmark = pytest.mark.e2e


def silence(tmp_path: Path, seconds: float, rate: int = 16000) -> Path:
    path = tmp_path / "silent-caller.wav"
    write_wav(path, np.zeros(int(seconds * rate), dtype=np.int16), rate)
    return path


async def call(tmp_path: Path, caller: Path, **settings: Any) -> SimResult:
    result = await run_call(
        SimOptions(out=tmp_path, caller_audio=caller, speed=SPEED, settings=settings)
    )
    assert result.report["audio"]["conserved"], result.report["audio"]["checks"]
    return result


def events_named(result: SimResult, name: str) -> list[dict[str, Any]]:
    import json

    assert result.log_path is not None
    lines = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    return [line for line in lines if line.get("event") == name]


async def test_a_silent_caller_is_reprompted_twice_then_let_go(tmp_path: Path) -> None:
    result = await call(
        tmp_path,
        silence(tmp_path, 60.0),
        no_input_reprompt_s=4.0,
        no_input_max_reprompts=2,
        no_input_prompt="Are you still there?",
    )
    assert result.report["outcome"] == "no_input"
    assert result.call.end_reason == "bridge_hung_up"  # long before the caller's 60 s
    prompts = [e["action"] for e in events_named(result, "no_input")]
    assert prompts == ["reprompt", "reprompt", "give_up"]
    assert result.report["call_control"]["no_input_reprompts"] == 2
    usage = result.report["usage"]
    assert usage is not None and "cost_usd" in usage


def scripted_caller(tmp_path: Path, *texts: str, seconds: float = 12.0) -> Path:
    """The shipped caller's first ``seconds`` (one utterance at 4.3-7.7 s, then
    silence), with a sidecar script: what the emulator "hears" it say."""
    import json

    from voicebridge.sim.simulate import read_wav, shipped

    pcm, rate = read_wav(shipped("caller.wav"))
    path = tmp_path / "scripted-caller.wav"
    write_wav(path, pcm[: int(seconds * rate)], rate)
    segments = json.loads(shipped("caller.json").read_text())
    script = [{**seg, "text": text} for seg, text in zip(segments, texts, strict=False)]
    path.with_suffix(".json").write_text(json.dumps(script))
    return path


def tool_calls(result: SimResult) -> list[str]:
    assert result.emulator is not None
    return [c["name"] for s in result.emulator.sessions for c in s.tool_calls]


async def test_the_agent_hangs_up_after_its_goodbye_is_heard_in_full(tmp_path: Path) -> None:
    caller = scripted_caller(tmp_path, "Thanks, that's all. Goodbye!", seconds=30.0)
    result = await call(tmp_path, caller)
    assert tool_calls(result) == ["end_call"]
    assert result.report["outcome"] == "agent_hung_up"
    assert result.call.end_reason == "bridge_hung_up"  # before the caller's 30 s ran out
    assert result.call.queued_samples == 0  # nothing of the goodbye was left unplayed
    last = result.report["responses"][-1]
    assert last["prompt"] == "goodbye" and last["status"] == "completed"
    assert result.report["call_control"]["tool_calls"] == 1


async def test_token_usage_is_counted_as_reported_and_exported(tmp_path: Path) -> None:
    caller = scripted_caller(tmp_path, "Where is my order?", seconds=14.0)
    result = await call(tmp_path, caller)
    assert result.emulator is not None
    reported = result.emulator.usage_for_call(result.call.call_connection_id or "")
    usage = result.report["usage"]
    inp, out = reported["input_token_details"], reported["output_token_details"]
    assert reported["responses"] >= 2  # the greeting and the answer
    assert (usage["input_text"], usage["input_audio"], usage["input_cached"]) == (
        inp["text_tokens"],
        inp["audio_tokens"],
        inp["cached_tokens"],
    )
    assert (usage["output_text"], usage["output_audio"]) == (
        out["text_tokens"],
        out["audio_tokens"],
    )
    assert usage["total"] == reported["total_tokens"] > 0
    assert usage["cost_usd"] > 0
    metrics = result.metrics_text
    audio_out = f'voicebridge_tokens_total{{direction="output",kind="audio"}} {out["audio_tokens"]}'
    assert audio_out in metrics
    assert "voicebridge_estimated_cost_usd_total" in metrics


async def scenario(tmp_path: Path, name: str) -> SimResult:
    from voicebridge.sim import scenarios

    options = scenarios.build(name, SimOptions(out=tmp_path, speed=SPEED))
    result = await run_call(options)
    assert result.report["audio"]["conserved"], result.report["audio"]["checks"]
    assert result.report["outcome"] == scenarios.SCENARIOS[name].expect
    return result


def no_overlap(result: SimResult) -> None:
    """No response.create ever met an active response: the emulator refused none and
    the guard blocked none."""
    assert result.emulator is not None
    refused = [e["code"] for s in result.emulator.sessions for e in s.errors_sent]
    assert "conversation_already_has_active_response" not in refused, refused
    assert result.report["guard"]["blocked"] == {}


async def test_transfer_accepted(tmp_path: Path) -> None:
    result = await scenario(tmp_path, "transfer")
    (transfer,) = result.call.transfers
    assert transfer["target"].endswith("+15557654321") and transfer["result"] == "accepted"
    assert transfer["source_caller_id"].endswith("+18005550100")  # the number called
    assert result.call.end_reason == "transferred"
    announced = [r for r in result.report["responses"] if r["prompt"] is not None]
    assert len(announced) >= 3  # greeting, answer, the announcement before the transfer
    no_overlap(result)


async def test_transfer_failed_and_the_call_goes_on(tmp_path: Path) -> None:
    result = await scenario(tmp_path, "transfer-failed")
    assert [t["result"] for t in result.call.transfers] == ["failed"]
    assert result.call.end_reason == "caller_hung_up"  # not the bridge: the call went on
    assert result.emulator is not None
    outputs = [o for s in result.emulator.sessions for o in s.tool_outputs]
    assert len(outputs) == 1 and "failed" in str(outputs[0]).lower()
    last = result.report["responses"][-1]  # the agent told the caller
    assert last["status"] == "completed" and last["prompt"] is not None
    assert result.report["call_control"]["tool_errors"] == 1
    no_overlap(result)


async def test_a_slow_tool_gets_a_filler_instead_of_dead_air(tmp_path: Path) -> None:
    result = await scenario(tmp_path, "slow-tool")
    assert len(events_named(result, "tool_filler")) == 1
    assert result.call.transfers[0]["result"] == "accepted"
    no_overlap(result)


async def test_keypad_digits_reach_the_agent_as_one_turn_and_never_the_logs(
    tmp_path: Path,
) -> None:
    result = await scenario(tmp_path, "dtmf")
    assert result.call.dtmf_sent == 5
    assert result.emulator is not None
    texts = [t for s in result.emulator.sessions for t in s.user_texts]
    assert len(texts) == 1 and "1234" in str(texts[0])
    assert result.report["call_control"]["dtmf_submitted"] == 1
    keys = [e["kind"] for e in events_named(result, "dtmf")]
    assert keys == ["collecting"] * 4 + ["submitted"]
    assert result.log_path is not None
    assert "1234" not in result.log_path.read_text()
    no_overlap(result)


async def test_keypad_interrupts_agent_audio(tmp_path: Path) -> None:
    """A key pressed while the agent speaks stops its audio at once, like barge-in."""
    from voicebridge.sim import scenarios

    caller = scenarios.write_caller(
        scenarios.Scenario("keys over the greeting", first_turn=False, keys="5#", seconds=12.0),
        tmp_path / "c",
    )
    script = caller.with_suffix(".json")
    script.write_text(script.read_text().replace('"start_s": 13.0', '"start_s": 1.0'))
    result = await call(tmp_path, caller)
    assert result.report["barge_ins"], "the key did not interrupt the greeting"
    assert result.report["audio"]["samples_dropped_by_barge_in"] > 0


async def test_a_keypad_action_transfers_without_the_model(tmp_path: Path) -> None:
    result = await scenario(tmp_path, "dtmf-action")
    assert result.call.transfers[0]["result"] == "accepted"
    assert result.emulator is not None
    assert [c for s in result.emulator.sessions for c in s.tool_calls] == []  # no model call
    assert result.report["call_control"]["dtmf_actions"] == 1
