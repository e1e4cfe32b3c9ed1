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
