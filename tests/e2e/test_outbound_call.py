"""Outbound calls end to end (real SDKs against the fakes): POST /api/calls, createCall on
the fake ACS, its callee answers and talks, the agent greets with the context's name; no
answer, busy and a refused createCall end with their outcomes; the profile's limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SPEED
from voicebridge.core.context import BEGIN
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.outbound import SIM_API_KEY, OutboundPlan, run_outbound_call
from voicebridge.sim.simulate import (
    EMULATOR_KEY,
    SimOptions,
    SimResult,
    fake_acs_settings,
    running_bridge,
)

pytestmark = pytest.mark.e2e

CONTEXT = {"name": "Ada Lovelace", "reason": "her appointment tomorrow at ten"}


async def outbound(tmp_path: Path, caller: Path, plan: OutboundPlan, **settings: Any) -> SimResult:
    options = SimOptions(out=tmp_path, caller_audio=caller, speed=SPEED, settings=settings)
    return await run_outbound_call(options, plan)


def received(result: SimResult, kind: str) -> list[dict[str, Any]]:
    assert result.emulator is not None
    return [m for s in result.emulator.sessions for m in s.received if m.get("type") == kind]


async def test_an_outbound_call_is_answered_and_the_agent_greets_with_the_name(
    tmp_path: Path, short_caller: Path
) -> None:
    result = await outbound(tmp_path, short_caller, OutboundPlan(context=CONTEXT))
    report = result.report
    assert report["outcome"] == "callee_hung_up", report["outcome"]
    assert (report["profile"], report["direction"]) == ("default", "outbound")
    assert report["outbound"]["status"]["status"] == "ended"
    assert report["outbound"]["status"]["outcome"] == "callee_hung_up"
    # the context reached Voice Live through the guard: in the instructions, as plain lines
    instructions = received(result, "session.update")[0]["session"]["instructions"]
    assert BEGIN in instructions and "name: Ada Lovelace" in instructions
    assert "reason: her appointment tomorrow at ten" in instructions
    assert report["outbound"]["context_delivered"] == {"where": "instructions", "all_values": True}
    # the agent spoke first: its greeting (our response.create), heard before the callee spoke
    assert report["guard"]["sent_by_type"]["response.create"] >= 1
    assert report["responses"][0]["prompt"] == "greeting"
    assert report["audio"]["conserved"], report["audio"]["checks"]
    # createCall: from the profile's number to the callee, with bidirectional media
    create = result.call.create_request
    assert create is not None and create["sourceCallerIdNumber"]["value"] == "+18005550100"
    assert create["mediaStreamingOptions"]["enableBidirectional"] is True
    assert result.call.direction == "outbound" and result.call.target == "+15551230001"
    assert result.log_path is not None
    first = result.log_path.read_text().splitlines()[0]
    assert '"event": "outbound_call"' in first and '"profile": "default"' in first


AGENT_PROFILES = """
reminders:
  numbers: ["+18005550150"]
  AGENT_NAME: reminder-agent
  PROJECT_NAME: contoso
  VOICELIVE_BEARER_TOKEN: emulator-accepts-any-token
  outbound:
    first_speaker: callee
"""


async def test_an_agent_gets_the_context_as_a_system_item_and_waits_for_hello(
    tmp_path: Path, short_caller: Path
) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(AGENT_PROFILES)
    plan = OutboundPlan(profile="reminders", context=CONTEXT)
    result = await outbound(tmp_path, short_caller, plan, profiles_file=str(profiles))
    report = result.report
    assert report["outcome"] == "callee_hung_up" and report["profile"] == "reminders"
    session = result.emulator.sessions[0] if result.emulator else None
    assert session is not None and session.query.get("agent-name") == "reminder-agent"
    assert "instructions" not in received(result, "session.update")[0]["session"]
    items = received(result, "conversation.item.create")
    system = [i for i in items if i["item"].get("role") == "system"]
    assert len(system) == 1 and "name: Ada Lovelace" in system[0]["item"]["content"][0]["text"]
    assert report["outbound"]["context_delivered"] == {"where": "system_item", "all_values": True}
    # callee first: the bridge asks for no greeting; the first agent audio the callee
    # hears answers what the callee said
    assert "response.create" not in report["guard"]["sent_by_type"]
    turn = report["turns"][0]
    assert turn["first_agent_audio_s"] is not None
    assert turn["first_agent_audio_s"] > turn["user_speech_end_s"]
    heard = result.call.heard[: int(turn["user_speech_end_s"] * 16000)]
    assert int(abs(heard.astype("int32")).max(initial=0)) < 64  # silence until then
    assert result.call.create_request is not None
    assert result.call.create_request["sourceCallerIdNumber"]["value"] == "+18005550150"


@pytest.mark.parametrize(
    ("fault", "outcome", "failure"),
    [
        ("acs-callee-busy", "busy", "486/560486: "),
        ("acs-callee-no-answer", "no_answer", "480/560480: "),
        ("acs-create-fail", "failed", "createCall refused: HTTP 403: "),
    ],
)
async def test_unanswered_calls_end_with_their_outcome(
    tmp_path: Path, short_caller: Path, fault: str, outcome: str, failure: str
) -> None:
    plan = OutboundPlan(callee_faults={fault: None})
    result = await outbound(tmp_path, short_caller, plan)
    status = result.report["outbound"]["status"]
    assert result.report["outcome"] == status["outcome"] == outcome
    assert status["status"] == "ended" and status["failure"].startswith(failure)
    assert result.emulator is not None and result.emulator.sessions == []  # no media, no agent
    assert 'result="accepted"' in result.metrics_text
    assert f'voicebridge_calls_total{{outcome="{outcome}"}} 1' in result.metrics_text


LIMITED = """
default:
  numbers: ["+18005550100"]
  outbound:
    max_concurrent: 1
"""


async def test_a_profile_limit_refuses_a_second_call_while_the_first_rings(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(LIMITED)
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=SPEED)
    acs = FakeAcs(speed=SPEED)
    await emulator.start()
    await acs.start()
    acs.expect_outbound("+15551230001", ring_s=60.0)  # rings a long while
    try:
        overrides = {
            "voicelive_endpoint": emulator.endpoint,
            "voicelive_api_key": EMULATOR_KEY,
            "voicelive_model": "gpt-realtime",
            "log_dir": str(tmp_path / "logs"),
            "profiles_file": str(profiles),
            "outbound_api_keys": SIM_API_KEY,
            **fake_acs_settings(acs),
        }
        headers = {"Authorization": f"Bearer {SIM_API_KEY}"}
        async with (
            running_bridge(overrides, speed=SPEED) as (_app, base),
            httpx.AsyncClient(base_url=base, headers=headers) as client,
        ):
            first = await client.post("/api/calls", json={"to": "+15551230001"})
            assert first.status_code == 202
            await acs.wait_outbound_call(1)
            second = await client.post("/api/calls", json={"to": "+15551230002"})
            assert second.status_code == 429 and "max_concurrent" in second.json()["error"]
            assert int(second.headers["retry-after"]) > 0
            status = (await client.get(f"/api/calls/{first.json()['id']}")).json()
            assert status["status"] == "dialling"
    finally:
        await acs.stop()
        await emulator.stop()
    assert len(acs.outbound_calls) == 1  # the refused one was never dialled


async def test_voicebridge_call_places_a_call_and_follows_it(
    tmp_path: Path, short_caller: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicebridge.cli import build_parser
    from voicebridge.dial import run as dial
    from voicebridge.sim.wav import read_wav

    pcm, _ = read_wav(short_caller)
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=SPEED)
    acs = FakeAcs(speed=SPEED)
    await emulator.start()
    await acs.start()
    acs.callee_audio = pcm.tobytes()
    acs.expect_outbound("+15551230009", faults={"acs-callee-busy": None})
    try:
        overrides = {
            "voicelive_endpoint": emulator.endpoint,
            "voicelive_api_key": EMULATOR_KEY,
            "voicelive_model": "gpt-realtime",
            "log_dir": str(tmp_path / "logs"),
            "phone_numbers": "+18005550100",
            "outbound_api_keys": SIM_API_KEY,
            **fake_acs_settings(acs),
        }
        async with running_bridge(overrides, speed=SPEED) as (_app, base):
            common = ["--url", base, "--api-key", SIM_API_KEY, "--poll", "0.2"]
            answered = build_parser(["call"]).parse_args(
                ["call", "+15551230001", "--context", '{"name": "Ada"}', *common]
            )
            assert await asyncio.to_thread(dial, answered) == 0
            busy = build_parser(["call"]).parse_args(["call", "+15551230009", *common])
            assert await asyncio.to_thread(dial, busy) == 1
            refused = build_parser(["call"]).parse_args(
                ["call", "+15551230001", "--url", base, "--api-key", "wrong-key-0123456789"]
            )
            assert await asyncio.to_thread(dial, refused) == 2
    finally:
        await acs.stop()
        await emulator.stop()
    out = capsys.readouterr().out
    assert ": dialling (profile default)" in out and ": connected" in out
    assert "outcome callee_hung_up" in out
    assert "outcome busy (486/560486: " in out
    assert "refused: HTTP 401: unauthorized" in out
