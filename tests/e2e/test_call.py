"""Whole calls: fake ACS -> bridge (real Call Automation SDK) -> emulator (real Voice Live SDK)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import SPEED, agent_energy
from voicebridge.sim.simulate import SimOptions, run_call, write_outputs

pytestmark = pytest.mark.e2e


async def test_a_whole_call_with_greeting_turns_and_barge_in(tmp_path: Path) -> None:
    result = await run_call(SimOptions(speed=SPEED, out=tmp_path))
    write_outputs(result, tmp_path)
    report = result.report

    # the caller ends with "Thanks, goodbye.": the agent says goodbye, calls end_call and
    # the bridge hangs up once that goodbye has been heard
    assert report["outcome"] == "agent_hung_up"
    assert result.call.end_reason == "bridge_hung_up" and result.call.queued_samples == 0
    assert report["audio"]["conserved"], report["audio"]["checks"]
    assert report["errors"] == []

    # one greeting, asked for once; every caller turn answered
    statuses = [(r["prompt"], r["status"]) for r in report["responses"]]
    assert statuses[0] == ("greeting", "completed")
    assert report["guard"]["sent_by_type"]["response.create"] == 1
    assert report["voicelive"]["received_by_type"]["response.create"] == 1
    answered = [t for t in report["turns"] if t["first_agent_audio_s"] is not None]
    assert len(answered) >= 2

    # the barge-in: StopAudio while the long answer played, the answer cancelled and truncated
    during = [b for b in report["barge_ins"] if b["during_playback"]]
    assert len(during) == 1 and during[0]["stop_latency_ms"] is not None
    assert ("answer_long", "cancelled") in statuses
    assert report["audio"]["samples_dropped_by_barge_in"] > 0
    events = [line for line in (tmp_path / "transcript.jsonl").read_text().splitlines()]
    assert any('"truncated"' in e for e in events)
    assert any('"agent_transcript"' in e for e in events)
    assert any('"user_transcript"' in e for e in events)

    # the process-wide stats add up the call
    stats = result.service_stats
    assert stats is not None and stats["calls_by_outcome"] == {"agent_hung_up": 1}
    assert stats["calls_not_conserved"] == 0 and stats["counters"]["barge_ins"] >= 1
    assert stats["relay_latency_ms"]["inbound"]["count"] > 1000
    assert stats["loop_lag_ms"]["count"] > 0

    # the caller really heard the agent
    assert agent_energy(result.call.heard) > 0.2
    for name in ("caller.wav", "heard.wav", "report.json", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize(("acs_rate", "vl_rate"), [(16000, 16000), (24000, 24000), (24000, 16000)])
async def test_rate_modes_conserve_audio(
    tmp_path: Path, short_caller: Path, acs_rate: int, vl_rate: int
) -> None:
    result = await run_call(
        SimOptions(
            caller_audio=short_caller,
            speed=SPEED,
            acs_rate=acs_rate,
            voicelive_rate=vl_rate,
            out=tmp_path,
        )
    )
    report = result.report
    assert report["audio"]["conserved"], report["audio"]["checks"]
    assert result.call.acs_rate == acs_rate
    session = result.emulator.sessions[-1] if result.emulator else None
    assert session is not None and session.input_rate == vl_rate and session.output_rate == vl_rate
    assert agent_energy(result.call.heard[: len(result.call.heard)]) > 0.1
