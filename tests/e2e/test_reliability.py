"""Faults injected into the emulators, and what the caller experiences.

Each test runs a whole call through the real SDKs with one or more faults from
``voicebridge.sim.faults`` and asserts the caller's side (gap length, apology, clean
hang-up), the sample accounting, and that nothing leaked (no task left running, no
call left registered, every emulated session closed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import agent_energy
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.ports import free_port
from voicebridge.sim.simulate import (
    EMULATOR_KEY,
    SimOptions,
    SimResult,
    fake_acs_settings,
    read_wav,
    run_call,
    running_bridge,
    shipped,
    write_wav,
)

pytestmark = pytest.mark.e2e

# The core's timers run on the media clock and scale with the speed-up; the relay's
# wall-clock ones (connect timeout, reconnect budget and grace) are shortened per test.
SPEED = 5.0


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Every test must leave no asyncio task behind."""
    before = set(asyncio.all_tasks())
    yield
    for _ in range(50):
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        left = [t for t in left if t is not asyncio.current_task()]
        if not left:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"tasks left running: {[t.get_name() for t in left]}")


async def call_with(tmp_path: Path, *faults: str, **kw: Any) -> SimResult:
    """One call with ``faults``; by default the first 12 s of the shipped caller (the
    greeting, one caller turn at 4.3-7.7 s and its answer at ~8.5-11.5 s)."""
    kw.setdefault("caller_audio", short_caller(tmp_path))
    kw.setdefault("speed", SPEED)
    result = await run_call(SimOptions(out=tmp_path, faults=list(faults), **kw))
    assert result.service_stats is not None and result.service_stats["active_calls"] == 0
    if result.emulator is not None:
        assert all(s.closed.is_set() for s in result.emulator.sessions)
    return result


def ok(result: SimResult) -> dict[str, Any]:
    report = result.report
    assert report["audio"]["conserved"], report["audio"]["checks"]
    return report


# --------------------------------------------------------------------------- Voice Live drops


@pytest.mark.parametrize("fault", ["voicelive-drop=9", "voicelive-close=9"])
async def test_model_mode_reconnects_and_replays_the_conversation(
    tmp_path: Path, fault: str
) -> None:
    result = await call_with(tmp_path, fault)
    report = ok(result)
    assert report["outcome"] == "caller_hung_up"
    (reconnect,) = report["reconnects"]
    assert reconnect["reason"] == "voicelive_closed" and reconnect["conversation_kept"]
    assert 8.5 < reconnect["at_s"] < 10.5 and reconnect["gap_ms"] < 1500
    _, second = result.emulator.sessions  # type: ignore[union-attr]
    replayed = [m for m in second.received if m.get("type") == "conversation.item.create"]
    # the greeting and the first caller turn (its answer was still being spoken)
    assert [m["item"]["role"] for m in replayed] == ["assistant", "user"]
    assert second.received[0]["type"] == "session.update"  # the guard's rule, again
    assert report["guard"]["sent_by_type"]["response.create"] == 1  # no second greeting


async def test_agent_mode_resumes_the_same_conversation(tmp_path: Path) -> None:
    agent = {
        "voicelive_api_key": None,
        "voicelive_bearer_token": "token",
        "voicelive_model": None,
        "agent_name": "support",
        "project_name": "proj",
    }
    result = await call_with(tmp_path, "voicelive-drop=6", settings=agent)
    report = ok(result)
    (reconnect,) = report["reconnects"]
    assert reconnect["conversation_kept"] is True
    first, second = result.emulator.sessions  # type: ignore[union-attr]
    assert "conversation-id" not in first.query
    assert second.query["conversation-id"] == first.conversation_id
    assert second.resumed and report["voicelive"]["conversation_id"] == first.conversation_id
    assert not [m for m in second.received if m.get("type") == "conversation.item.create"]


async def test_failed_reconnect_apologises_and_hangs_up(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await call_with(
        tmp_path,
        "voicelive-drop=3",
        "voicelive-stall-reconnect",
        settings={"voicelive_reconnect_budget_s": 1.0, "voicelive_connect_timeout_s": 0.5},
    )
    report = ok(result)
    assert report["outcome"] == "apology_hangup"
    assert result.call.end_reason == "bridge_hung_up"
    assert report["audio"]["prompt_samples_sent"] > 16000
    assert time.monotonic() - started < 15


async def test_stalled_handshake_apologises_within_the_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await call_with(
        tmp_path,
        "voicelive-stall-handshake",
        speed=1.0,
        settings={"voicelive_connect_timeout_s": 1.0},
        timeout_s=20,
    )
    report = ok(result)
    assert report["outcome"] == "apology_hangup" and result.call.end_reason == "bridge_hung_up"
    first_heard = result.call.first_audio_heard_s[0]
    assert 0.9 < first_heard < 2.0  # the apology starts right after the 1 s timeout
    assert time.monotonic() - started < 12


# --------------------------------------------------------------------------- Voice Live misbehaves


async def test_stalled_response_reconnects(tmp_path: Path) -> None:
    """A response that goes silent past RESPONSE_STALL_TIMEOUT_S: replace the session."""
    result = await call_with(
        tmp_path, "voicelive-stall-response=30", settings={"response_stall_timeout_s": 3.0}
    )
    report = ok(result)
    assert [r["reason"] for r in report["reconnects"]] == ["response_stalled"]
    assert report["outcome"] == "caller_hung_up"


async def test_short_stall_is_waited_out(tmp_path: Path) -> None:
    result = await call_with(tmp_path, "voicelive-stall-response=2")
    report = ok(result)
    assert report["reconnects"] == [] and report["outcome"] == "caller_hung_up"


async def test_malformed_events_are_counted_and_the_call_goes_on(tmp_path: Path) -> None:
    result = await call_with(tmp_path, "voicelive-malformed")
    report = ok(result)
    assert report["outcome"] == "caller_hung_up" and report["reconnects"] == []
    assert result.bridge_summary is not None
    assert result.bridge_summary["report"]["counters"]["voicelive_malformed"] >= 4
    assert report["turns"][0]["first_agent_audio_s"] is not None


async def test_error_events_are_logged_and_the_call_goes_on(tmp_path: Path) -> None:
    result = await call_with(tmp_path, "voicelive-error=rate_limit_exceeded")
    report = ok(result)
    assert result.bridge_summary["report"]["counters"]["voicelive_errors"] == {  # type: ignore[index]
        "rate_limit_exceeded": 1
    }
    assert report["outcome"] == "caller_hung_up" and report["reconnects"] == []
    lines = result.log_path.read_text().splitlines()  # type: ignore[union-attr]
    assert any('"code": "rate_limit_exceeded"' in line for line in lines)


async def test_message_creation_failed_stall_and_close_is_survived(tmp_path: Path) -> None:
    result = await call_with(
        tmp_path, "voicelive-error=message_creation_failed", emulator={"stall_s": 1.0}
    )
    report = ok(result)
    assert [r["reason"] for r in report["reconnects"]] == ["voicelive_closed"]
    assert report["outcome"] == "caller_hung_up"
    assert report["turns"][0]["first_agent_audio_s"] is not None


async def test_delayed_events_only_delay(tmp_path: Path) -> None:
    result = await call_with(tmp_path, "voicelive-delay=300")
    report = ok(result)
    latencies = [t["response_latency_ms"] for t in report["turns"]]
    assert all(lat is not None and lat > 900 for lat in latencies), latencies


async def test_expiring_sessions_are_replaced_before_they_end(tmp_path: Path) -> None:
    # the whole caller: sessions live 20 s of call time (4 s real at 5x)
    result = await call_with(tmp_path, "voicelive-expire=20", caller_audio=None)
    report = ok(result)
    reasons = [r["reason"] for r in report["reconnects"]]
    assert reasons and set(reasons) == {"session_expiring"}
    assert all(r["gap_ms"] < 1000 and r["conversation_kept"] for r in report["reconnects"])
    # replaced before the service closed them: no session ended with 1001
    assert all(s.close_code != 1001 for s in result.emulator.sessions)  # type: ignore[union-attr]


async def test_missing_session_updated_triggers_a_reconnect(tmp_path: Path) -> None:
    result = await call_with(tmp_path, "voicelive-no-session-updated")
    report = ok(result)
    assert [r["reason"] for r in report["reconnects"]] == ["session_update_timeout"]
    assert report["turns"][0]["first_agent_audio_s"] is not None


async def test_unanswered_turn_is_nudged_once(tmp_path: Path) -> None:
    result = await call_with(tmp_path, "voicelive-no-response")
    report = ok(result)
    assert report["reconnects"] == []
    assert report["guard"]["sent_by_type"]["response.create"] == 2  # greeting + the nudge
    first = report["turns"][0]
    assert first["first_agent_audio_s"] is not None and first["response_latency_ms"] < 6000


# --------------------------------------------------------------------------- ACS side


async def test_dropped_media_socket_ends_the_call_cleanly(tmp_path: Path) -> None:
    result = await call_with(
        tmp_path, "acs-drop=6", settings={"acs_reconnect_grace_s": 0.5}, timeout_s=30
    )
    report = ok(result)
    assert report["outcome"] == "media_lost"
    assert result.call.end_reason == "media_dropped"


async def test_reconnected_media_socket_carries_on(tmp_path: Path) -> None:
    result = await call_with(tmp_path, "acs-reconnect=6")
    report = ok(result)
    assert report["outcome"] == "caller_hung_up" and report["media_sockets"] == 2
    assert result.call.media_sockets == 2
    assert report["turns"][0]["first_agent_audio_s"] is not None


@pytest.mark.parametrize(
    "fault",
    ["acs-duplicate-callbacks", "acs-reorder-callbacks", "acs-disconnect-first", "acs-close-first"],
)
async def test_callbacks_in_any_order_are_idempotent(tmp_path: Path, fault: str) -> None:
    result = await call_with(tmp_path, fault)
    report = ok(result)
    assert report["outcome"] == "caller_hung_up" and report["errors"] == []


def short_caller(tmp_path: Path) -> Path:
    pcm, rate = read_wav(shipped("caller.wav"))
    path = tmp_path / "short.wav"
    write_wav(path, np.asarray(pcm[: 12 * rate]), rate)
    return path


# --------------------------------------------------------------------------- drain


async def test_drain_lets_the_call_finish_then_says_goodbye(tmp_path: Path) -> None:
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=1.0)
    acs = FakeAcs(speed=1.0)
    await emulator.start()
    await acs.start()
    pcm, _ = read_wav(shipped("caller.wav"))
    try:
        overrides = {
            "voicelive_endpoint": emulator.endpoint,
            "voicelive_api_key": EMULATOR_KEY,
            "voicelive_model": "gpt-realtime",
            "log_dir": str(tmp_path),
            **fake_acs_settings(acs),
        }
        async with running_bridge(overrides) as (app, base):
            call = await acs.place_call(
                webhook_url=f"{base}/api/incoming-call", caller_pcm=pcm.tobytes()
            )
            await asyncio.wait_for(call.media_connected.wait(), 5)
            ctx = app.state.ctx
            drain = asyncio.create_task(ctx.drain(1.5))
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{base}/readyz")).status_code == 503
                assert (await client.get(f"{base}/healthz")).status_code == 200
                r = await client.post(
                    f"{base}/api/incoming-call",
                    json=[
                        {
                            "id": "late",
                            "eventType": "Microsoft.Communication.IncomingCall",
                            "data": {"incomingCallContext": "x"},
                        }
                    ],
                )
                assert r.status_code == 503  # Event Grid retries: another replica answers
            assert not call.ended.is_set()  # the live call goes on during the grace
            await asyncio.wait_for(drain, 30)
            await call.wait_ended(10)
            assert call.end_reason == "bridge_hung_up"
            assert ctx.registry.active == 0
            summary = ctx.registry.finished[-1]
            assert summary["outcome"] == "drained"
            assert summary["report"]["counters"]["prompt_samples_sent"] > 16000  # goodbye
            assert agent_energy(call.heard) > 0.0
    finally:
        await acs.stop()
        await emulator.stop()


async def test_sigterm_drains_voicebridge_serve(tmp_path: Path) -> None:
    """The real `voicebridge serve` process: SIGTERM → not ready, the call finishes
    (goodbye after DRAIN_GRACE_S), then the process exits 0."""
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY)
    acs = FakeAcs()
    await emulator.start()
    await acs.start()
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "VOICELIVE_ENDPOINT": emulator.endpoint,
        "VOICELIVE_API_KEY": EMULATOR_KEY,
        "VOICELIVE_MODEL": "gpt-realtime",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "LOG_DIR": str(tmp_path / "logs"),
        "DRAIN_GRACE_S": "2",
        **{k.upper(): str(v) for k, v in fake_acs_settings(acs).items()},
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then awaits
        [sys.executable, "-m", "voicebridge", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    if (await client.get(f"{base}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            pcm, _ = read_wav(shipped("caller.wav"))
            call = await acs.place_call(
                webhook_url=f"{base}/api/incoming-call", caller_pcm=pcm.tobytes()
            )
            await asyncio.wait_for(call.media_connected.wait(), 5)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert (await client.get(f"{base}/readyz")).status_code == 503
            assert proc.poll() is None and not call.ended.is_set()
        await call.wait_ended(15)
        assert call.end_reason == "bridge_hung_up"
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        logs = list((tmp_path / "logs").glob("*.jsonl"))
        events = [json.loads(line) for line in logs[0].read_text().splitlines()]
        assert events[-1]["event"] == "call_ended" and events[-1]["outcome"] == "drained"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        await acs.stop()
        await emulator.stop()
