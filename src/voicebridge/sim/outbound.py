"""``voicebridge simulate --outbound``: a whole outbound call offline, through the real SDKs.

The same parts as an inbound simulation (:mod:`voicebridge.sim.simulate`: the Voice Live
emulator, the fake ACS, the bridge on uvicorn, all on loopback), but the call starts at
the bridge's own API: ``POST /api/calls`` with an API key and a ``context``. The bridge
calls ``createCall`` on the fake ACS from the profile's number; the fake's callee rings,
answers (``CallConnected``), and plays the caller recording over the media socket — the
callee is the "caller" of the recording. The agent greets (the context's name is in the
``session.update`` instructions in model mode, or the first ``system`` item in agent mode:
:attr:`OutboundPlan` and ``report["outbound"]`` say which the emulator received), the
conversation runs as an inbound one, and the callee hangs up after its audio
(``callee_hung_up``). ``callee_faults`` (``acs-callee-busy``, ``acs-callee-no-answer``,
``acs-create-fail``) make it end ``busy``, ``no_answer`` or ``failed`` instead.

:func:`run_outbound_call` returns a :class:`~voicebridge.sim.simulate.SimResult` whose
report is an inbound call's plus ``outbound``: the request, the answer, the status the
bridge's ``GET /api/calls/{id}`` gave at the end, and what the emulator received of the
context.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from voicebridge.core.context import BEGIN
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs, FakeCall
from voicebridge.sim.faults import parse_faults
from voicebridge.sim.simulate import (
    EMULATOR_KEY,
    SimOptions,
    SimResult,
    build_report,
    fake_acs_settings,
    load_caller,
    running_bridge,
)

#: The bridge's API key in the simulation (OUTBOUND_API_KEYS).
SIM_API_KEY = "simulated-outbound-api-key"
#: The default profile's number: the caller id of the simulated call.
SIM_CALLER_ID = "+18005550100"


@dataclass
class OutboundPlan:
    """What to ask the bridge for, and what the fake callee does."""

    to: str = "+15551230001"
    profile: str = "default"
    context: dict[str, str] = field(
        default_factory=lambda: {"name": "Ada Lovelace", "reason": "her appointment tomorrow"}
    )
    #: acs-* faults of the callee's number (acs-callee-busy, acs-callee-no-answer, ...)
    callee_faults: dict[str, Any] = field(default_factory=dict)
    ring_s: float = 2.0


async def run_outbound_call(options: SimOptions, plan: OutboundPlan | None = None) -> SimResult:
    """Place one call through ``POST /api/calls`` and follow it to its end."""
    plan = plan or OutboundPlan()
    say = options.progress or (lambda _msg: None)
    callee_pcm, segments = load_caller(options)
    faults = parse_faults(options.faults)
    emulator = VoiceLiveEmulator(
        api_key=EMULATOR_KEY, speed=options.speed, faults=faults.voicelive, **options.emulator
    )
    await emulator.start()
    acs = FakeAcs(acs_rate=options.acs_rate, speed=options.speed, faults=faults.acs)
    await acs.start()
    acs.callee_audio = callee_pcm.tobytes()
    acs.expect_outbound(plan.to, faults=plan.callee_faults, ring_s=plan.ring_s)
    log_dir = (
        (options.out / "logs")
        if options.out
        else Path(os.environ.get("TMPDIR", "/tmp")) / "voicebridge-sim-logs"
    )
    overrides: dict[str, Any] = {
        "voicelive_endpoint": emulator.endpoint,
        "voicelive_api_key": EMULATOR_KEY,
        "voicelive_model": "gpt-realtime",
        **fake_acs_settings(acs),
        "acs_audio_rate": options.acs_rate,
        "voicelive_audio_rate": options.voicelive_rate,
        "log_dir": str(log_dir),
        "outbound_api_keys": SIM_API_KEY,
        "phone_numbers": SIM_CALLER_ID,
        **options.settings,
    }
    try:
        async with running_bridge(overrides, speed=options.speed) as (app, base_url):
            say(f"bridge on {base_url}; POST /api/calls to {plan.to} (profile {plan.profile})")
            request = {"to": plan.to, "profile": plan.profile, "context": plan.context}
            headers = {"Authorization": f"Bearer {SIM_API_KEY}"}
            async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
                answer = await client.post("/api/calls", json=request)
                if answer.status_code != 202:
                    raise RuntimeError(f"POST /api/calls: HTTP {answer.status_code}: {answer.text}")
                call_id = str(answer.json()["id"])
                say(f"call {call_id}: {answer.json()['status']}")
                call = await acs.wait_outbound_call(1, timeout=10.0)
                audio_s = len(callee_pcm) / options.acs_rate
                await _follow(call, client, call_id, options, audio_s, say)
                summary = await _summary(app.state.ctx, call_id)
                status = (await client.get(f"/api/calls/{call_id}")).json()
                metrics_text = (await client.get("/metrics")).text
            service_stats = app.state.ctx.stats.snapshot(app.state.ctx.registry.active)
    finally:
        await acs.stop()
        await emulator.stop()
    report = build_report(options, call, summary, emulator, callee_pcm, segments)
    report["outbound"] = {
        "request": request,
        "answer": {"status_code": answer.status_code, **answer.json()},
        "status": status,
        "callee_end_reason": call.end_reason,
        "context_delivered": context_delivered(emulator, plan.context),
    }
    logs = sorted(log_dir.glob(f"*{call_id}*.jsonl")) if log_dir.exists() else []
    return SimResult(
        report,
        call,
        summary,
        emulator,
        acs,
        callee_pcm,
        logs[-1] if logs else None,
        service_stats,
        metrics_text,
    )


async def _follow(
    call: FakeCall,
    client: httpx.AsyncClient,
    call_id: str,
    options: SimOptions,
    audio_s: float,
    say: Any,
) -> None:
    """Wait for the fake's end of the call, printing the bridge's status as it changes."""
    timeout = options.timeout_s or (audio_s / options.speed + 60.0)
    ended = asyncio.create_task(call.wait_ended(timeout))
    shown, started = "dialling", time.monotonic()
    while not ended.done():
        await asyncio.wait({ended}, timeout=max(0.25, 1.0 / options.speed))
        state = (await client.get(f"/api/calls/{call_id}")).json().get("status")
        if state != shown:
            shown = state
            say(f"call {call_id}: {state} ({time.monotonic() - started:.1f} s)")
    ended.result()


async def _summary(ctx: Any, call_id: str) -> dict[str, Any] | None:
    """The bridge's own end-of-call summary of ``call_id`` (it may end just after ACS)."""
    for _ in range(200):
        for summary in ctx.registry.finished:
            if summary.get("id") == call_id:
                return dict(summary)
        await asyncio.sleep(0.025)
    return None


def context_delivered(emulator: VoiceLiveEmulator, context: dict[str, str]) -> dict[str, Any]:
    """Where the emulator received the context: the first session.update's instructions
    (model mode) or a system message item (agent mode), and whether every value was in it."""
    for session in emulator.sessions:
        for message in session.received:
            kind = message.get("type")
            text = ""
            if kind == "session.update":
                text = str((message.get("session") or {}).get("instructions") or "")
                where = "instructions"
            elif kind == "conversation.item.create":
                item = message.get("item") or {}
                if item.get("role") == "system":
                    text = " ".join(str(c.get("text", "")) for c in item.get("content") or [])
                where = "system_item"
            if BEGIN in text:
                found = all(f"{k}: {v}" in text for k, v in context.items())
                return {"where": where, "all_values": found}
    return {"where": None, "all_values": False}
