"""``voicebridge simulate``: a whole phone call on one machine, through the real SDKs.

Starts the Voice Live emulator, the fake ACS and the bridge service (uvicorn) on free
loopback ports in one event loop, rings the bridge with an Event Grid
``IncomingCall``, plays the caller recording over the media WebSocket, waits for the
call to end, and writes to ``--out``:

* ``caller.wav`` — what the caller said (at the ACS rate), ``heard.wav`` — what the
  caller heard, on the same time axis;
* ``transcript.jsonl`` — user and agent transcripts with times;
* ``report.json`` — audio conservation, turns, barge-ins, latency, guard, errors;
* ``timeline.png`` — both waveforms with turns, responses and barge-ins marked.

:func:`run_call` is the same thing as a coroutine, used by the end-to-end tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import import_module, resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from voicebridge.app import create_app
from voicebridge.config import Settings
from voicebridge.server import in_this_loop, uvicorn_options
from voicebridge.sim import scenarios
from voicebridge.sim.clock import ScaledClock
from voicebridge.sim.cluster import simulate as cluster_simulate
from voicebridge.sim.emulator import VAD_ONSET_MS, VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs, FakeCall, dtmf_from_segments
from voicebridge.sim.faults import FAULT_HELP, parse_faults
from voicebridge.sim.ports import free_socket
from voicebridge.sim.script import caller_script
from voicebridge.sim.wav import read_wav, resample, write_wav

log = logging.getLogger(__name__)

EMULATOR_KEY = "emulator-key"


@dataclass
class SimOptions:
    """Everything one simulated call can vary; defaults are ``make simulate``'s."""

    caller_audio: Path | None = None  # None: the shipped multi-turn recording
    speed: float = 1.0
    acs_rate: int = 16000
    voicelive_rate: int = 24000
    out: Path | None = Path("sim-out")
    voicelive_endpoint: str | None = None  # a real Voice Live instead of the emulator
    settings: dict[str, Any] = field(default_factory=dict)  # extra Settings overrides
    emulator: dict[str, Any] = field(default_factory=dict)  # extra VoiceLiveEmulator kwargs
    timeout_s: float | None = None
    progress: Callable[[str], None] | None = None
    faults: list[str] = field(default_factory=list)  # --fault specs (voicebridge.sim.faults)


@dataclass
class SimResult:
    report: dict[str, Any]
    call: FakeCall
    bridge_summary: dict[str, Any] | None
    emulator: VoiceLiveEmulator | None
    acs: FakeAcs
    caller_pcm: np.ndarray
    log_path: Path | None
    service_stats: dict[str, Any] | None = None
    metrics_text: str = ""  # the bridge's GET /metrics at the end of the call


# --------------------------------------------------------------------------- audio files


def shipped(name: str) -> Any:
    return resources.files("voicebridge.sim") / "data" / name


def load_caller(options: SimOptions) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The caller recording at the ACS rate, and its segments (scripted or measured)."""
    segments: list[dict[str, Any]] | None
    if options.caller_audio is None:
        pcm, rate = read_wav(shipped("caller.wav"))
        segments = json.loads(shipped("caller.json").read_text())
    else:
        pcm, rate = read_wav(options.caller_audio)
        segments = caller_script(options.caller_audio)  # the X.json beside X.wav, if any
    pcm = resample(pcm, rate, options.acs_rate, how="bridge")  # as the bridge would
    if segments is None:
        segments = speech_segments(pcm, options.acs_rate)
    return pcm, segments


def speech_segments(pcm: np.ndarray, rate: int, *, gap_s: float = 0.5) -> list[dict[str, Any]]:
    """Energy-based segments of a recording (for caller audio without a script)."""
    block = rate // 50
    n = len(pcm) // block
    if n == 0:
        return []
    rms = np.sqrt(np.mean(pcm[: n * block].astype(np.float64).reshape(n, block) ** 2, axis=1))
    active = rms > 300
    segments: list[dict[str, Any]] = []
    start = None
    quiet = 0
    for i, on in enumerate(active):
        if on:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * 0.02 >= gap_s:
                segments.append({"start_s": start * 0.02, "end_s": (i - quiet + 1) * 0.02})
                start, quiet = None, 0
    if start is not None:
        segments.append({"start_s": start * 0.02, "end_s": (n - quiet) * 0.02})
    for seg in segments:
        seg.update(text=None, barge_in=False)
    return segments


# --------------------------------------------------------------------------- running


def fake_acs_settings(acs: FakeAcs) -> dict[str, Any]:
    """Settings that point the bridge at a fake ACS — with token validation ON: the
    fake signs its JWTs with a local key and serves the JWKS the bridge fetches."""
    return {
        "acs_connection_string": acs.connection_string,
        "acs_resource_id": acs.resource_id,
        "acs_jwt_issuer": acs.issuer,
        "acs_openid_config_url": acs.openid_config_url,
        "acs_jwt_validation": True,
    }


@contextlib.asynccontextmanager
async def running_bridge(
    overrides: dict[str, Any], *, speed: float = 1.0
) -> AsyncIterator[tuple[Any, str]]:
    """The bridge app on uvicorn on a free loopback port: yields ``(app, base_url)``.

    ``overrides`` are :class:`Settings` fields; ``public_base_url`` is filled in with
    the bound port (the socket is bound first, so the URL is known before start-up).
    """
    sock = free_socket()
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fields = {"public_base_url": base_url} | overrides
    settings = Settings(_env_file=None, **fields)  # type: ignore[call-arg]
    app = create_app(settings, clock=ScaledClock(speed) if speed != 1.0 else None)
    options = uvicorn_options(settings) | {"timeout_graceful_shutdown": 5}
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **options))
    try:
        async with in_this_loop(server, sock, "bridge"):
            yield app, base_url
    finally:
        sock.close()


async def run_call(options: SimOptions) -> SimResult:
    """Run one simulated call end to end and build its report (files are written by
    :func:`write_outputs`)."""
    say = options.progress or (lambda _msg: None)
    caller_pcm, segments = load_caller(options)
    speed = options.speed
    faults = parse_faults(options.faults)
    if faults.voicelive and options.voicelive_endpoint is not None:
        raise ValueError("voicelive-* faults need the emulator, not --voicelive-endpoint")
    emulator: VoiceLiveEmulator | None = None
    if options.voicelive_endpoint is None:
        emulator_kwargs: dict[str, Any] = {"faults": faults.voicelive}
        if options.caller_audio is not None and caller_script(options.caller_audio):
            emulator_kwargs["caller_segments"] = segments  # what the emulator "hears"
        emulator_kwargs |= options.emulator
        emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=speed, **emulator_kwargs)
        await emulator.start()
    acs = FakeAcs(acs_rate=options.acs_rate, speed=speed, faults=faults.acs)
    await acs.start()
    log_dir = (
        (options.out / "logs")
        if options.out
        else Path(os.environ.get("TMPDIR", "/tmp")) / "voicebridge-sim-logs"
    )
    overrides: dict[str, Any] = {
        "voicelive_endpoint": options.voicelive_endpoint or (emulator.endpoint if emulator else ""),
        **fake_acs_settings(acs),
        "acs_audio_rate": options.acs_rate,
        "voicelive_audio_rate": options.voicelive_rate,
        "log_dir": str(log_dir),
    }
    if emulator is not None:
        overrides |= {"voicelive_api_key": EMULATOR_KEY, "voicelive_model": "gpt-realtime"}
    overrides |= options.settings
    try:
        async with running_bridge(overrides, speed=speed) as (app, base_url):
            audio_s = len(caller_pcm) / options.acs_rate
            where = "off" if emulator is None else emulator.endpoint
            say(
                f"bridge on {base_url}, emulator {where}, fake ACS {acs.endpoint}; "
                f"calling with {audio_s:.1f} s of caller audio at {speed:g}x"
            )
            call = await acs.place_call(
                webhook_url=f"{base_url}/api/incoming-call",
                caller_pcm=caller_pcm.tobytes(),
                dtmf=dtmf_from_segments(segments),  # keys the caller script presses
            )
            timeout = options.timeout_s or (audio_s / speed + 30.0)
            started = time.monotonic()
            ended = asyncio.create_task(call.wait_ended(timeout))
            while not ended.done():
                await asyncio.wait({ended}, timeout=max(0.5, 2.0 / speed))
                if not ended.done():
                    say(_progress_line(call, emulator, time.monotonic() - started, speed))
            ended.result()
            ctx = app.state.ctx
            summary = await _bridge_summary(ctx, call)
            service_stats = ctx.stats.snapshot(ctx.registry.active)
            async with httpx.AsyncClient() as client:
                metrics_text = (await client.get(f"{base_url}/metrics")).text
    finally:
        await acs.stop()
        if emulator is not None:
            await emulator.stop()
    report = build_report(options, call, summary, emulator, caller_pcm, segments)
    log_path = _conversation_log(log_dir, call)
    return SimResult(
        report, call, summary, emulator, acs, caller_pcm, log_path, service_stats, metrics_text
    )


async def _bridge_summary(ctx: Any, call: FakeCall) -> dict[str, Any] | None:
    """The bridge's own end-of-call summary (it may finish a moment after ACS)."""
    for _ in range(200):
        for summary in ctx.registry.finished:
            if summary.get("correlation_id") == call.correlation_id:
                return dict(summary)
        await asyncio.sleep(0.025)
    return None


def _conversation_log(log_dir: Path, call: FakeCall) -> Path | None:
    matches = sorted(log_dir.glob(f"*{call.correlation_id}*.jsonl")) if log_dir.exists() else []
    return matches[-1] if matches else None


def _progress_line(
    call: FakeCall, emulator: VoiceLiveEmulator | None, wall_s: float, speed: float
) -> str:
    responses = sum(len(s.responses) for s in emulator.sessions) if emulator else 0
    return (
        f"  t={wall_s * speed:5.1f} s  "
        f"caller sent {call.caller_samples_sent / call.acs_rate:5.1f} s, "
        f"heard {call.samples_heard / call.acs_rate:5.1f} s, responses {responses}, "
        f"StopAudio {len(call.stop_audio)}"
    )


# --------------------------------------------------------------------------- report


def _first_audio_after(
    heard: np.ndarray, rate: int, t_s: float, until_s: float | None = None
) -> float | None:
    start = int(t_s * rate)
    stop = len(heard) if until_s is None else min(len(heard), int(until_s * rate))
    idx = np.flatnonzero(np.abs(heard[start:stop]) > 64)
    return None if idx.size == 0 else (start + int(idx[0])) / rate


def build_report(
    options: SimOptions,
    call: FakeCall,
    summary: dict[str, Any] | None,
    emulator: VoiceLiveEmulator | None,
    caller_pcm: np.ndarray,
    segments: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``report.json`` of one call (see the module docstring)."""
    rate = options.acs_rate
    bridge = (summary or {}).get("report") or {}
    sessions = emulator.sessions if emulator else []
    guard = bridge.get("guard", {})
    return {
        "outcome": (summary or {}).get("outcome"),
        **{k: (summary or {}).get(k) for k in ("profile", "direction")},
        "fake_acs_end_reason": call.end_reason,
        "rates": {"acs_hz": rate, "voicelive_hz": options.voicelive_rate},
        "speed": options.speed,
        "duration_s": round(len(call.heard) / rate, 3),
        "audio": _audio_report(options, call, summary, emulator),
        "reconnects": bridge.get("reconnects", []),
        "media_sockets": bridge.get("media_sockets"),
        "turns": _turns(call.heard, rate, segments),
        "responses": [
            {k: r.get(k) for k in ("id", "status", "reason", "prompt", "samples_sent")}
            for s in sessions
            for r in s.responses
        ],
        "barge_ins": _barge_ins(call, sessions),
        "bridge_latency_ms": {
            "inbound_p50": bridge.get("inbound_latency_ms", {}).get("p50"),
            "inbound_p99": bridge.get("inbound_latency_ms", {}).get("p99"),
            "outbound_p50": bridge.get("outbound_latency_ms", {}).get("p50"),
            "outbound_p99": bridge.get("outbound_latency_ms", {}).get("p99"),
        },
        "guard": {
            "sent_by_type": guard.get("sent_by_type", {}),
            "blocked": guard.get("blocked", {}),
            "coerced": guard.get("coerced", 0),
            "truncated": guard.get("truncated", 0),
        },
        "voicelive": _voicelive_report(bridge, emulator),
        "session": first_session_update(sessions),
        "usage": bridge.get("usage"),
        "call_control": {
            k: bridge.get("counters", {}).get(k, 0)
            for k in (
                "tool_calls",
                "tool_errors",
                "dtmf_tones",
                "dtmf_submitted",
                "dtmf_actions",
                "no_input_reprompts",
            )
        },
        "errors": _errors(call, sessions, summary),
    }


def _audio_report(
    options: SimOptions,
    call: FakeCall,
    summary: dict[str, Any] | None,
    emulator: VoiceLiveEmulator | None,
) -> dict[str, Any]:
    """The report's ``audio``: every sample counted at each hop, and the conservation checks."""
    bridge = (summary or {}).get("report") or {}
    inbound = bridge.get("inbound", {})
    outbound = bridge.get("outbound", {})
    counters = bridge.get("counters", {})
    sessions = emulator.sessions if emulator else []
    flushed = sum(n for _, n in call.stop_audio)
    prompt_sent = counters.get("prompt_samples_sent", 0)
    padding = outbound.get("padding_samples_sent", 0)
    # Every sample on the media socket: the recording plus the silence ACS keeps
    # streaming until the hang-up (minus what a dropped socket never carried).
    sent = call.frame_samples * call.frames_sent
    checks, gaps = _conservation(call, summary, emulator, sent)
    return {
        "caller_samples_sent": sent,
        "caller_recording_samples": call.caller_samples_sent,
        "voicelive_samples_received": sum(s.input_samples for s in sessions) if emulator else None,
        "voicelive_samples_expected": -(-sent * options.voicelive_rate // options.acs_rate),
        "agent_samples_from_voicelive": sum(s.output_samples for s in sessions)
        if emulator
        else None,
        "agent_samples_sent": outbound.get("agent_samples_sent"),
        "padding_samples_sent": padding,
        "prompt_samples_sent": prompt_sent,
        "caller_samples_heard": call.samples_heard,
        "samples_dropped_by_barge_in": outbound.get("samples_dropped_by_barge_in"),
        "samples_flushed_by_stop_audio": flushed,
        "samples_flushed_by_socket_drop": call.samples_flushed_by_drop,
        "lost_in_gaps": gaps,
        "caller_samples_buffered_dropped": inbound.get("buffered_dropped", 0),
        "checks": checks,
        "conserved": all(checks.values()),
    }


def _conservation(
    call: FakeCall,
    summary: dict[str, Any] | None,
    emulator: VoiceLiveEmulator | None,
    sent: int,
) -> tuple[dict[str, Any], dict[str, int]]:
    """``(checks, lost_in_gaps)``: is every sample accounted for at each hop, and how many
    went missing between each pair (caller, bridge, Voice Live, caller's ear)."""
    bridge = (summary or {}).get("report") or {}
    inbound = bridge.get("inbound", {})
    outbound = bridge.get("outbound", {})
    counters = bridge.get("counters", {})
    per = bridge.get("sessions", {})
    in_ok, out_ok, gaps = _session_gaps(summary, emulator)
    socket_lost = int(
        summary is not None
        and (
            bridge.get("media_sockets", 1) > 1
            or summary.get("outcome") in ("media_lost", "media_idle_timeout")
        )
    )
    caller_in = counters.get("caller_samples_in", -1)
    gaps["caller_to_bridge"] = sent - caller_in
    padding = outbound.get("padding_samples_sent", 0)
    prompt_sent = counters.get("prompt_samples_sent", 0)
    to_acs = outbound.get("agent_samples_sent", -1) + padding + prompt_sent
    gaps["bridge_to_caller"] = to_acs - call.received_samples
    flushed = sum(n for _, n in call.stop_audio)
    checks = {
        "caller_to_bridge": caller_in == sent or (socket_lost and sent >= caller_in),
        "bridge_to_voicelive": in_ok
        and inbound.get("voicelive_samples_appended") == sum(per.get("appended", [])),
        "voicelive_to_bridge": out_ok,
        "bridge_accounting": bool(inbound.get("conserved")) and bool(outbound.get("conserved")),
        "bridge_to_acs": call.received_samples == to_acs
        or (socket_lost and to_acs >= call.received_samples),
        "acs_played_or_flushed": call.samples_heard
        + flushed
        + call.samples_flushed_by_drop
        + call.queued_samples
        == call.received_samples,
    }
    return checks, gaps


def _session_gaps(
    summary: dict[str, Any] | None, emulator: VoiceLiveEmulator | None
) -> tuple[bool, bool, dict[str, int]]:
    """Per Voice Live session, the bridge's counts against the emulator's: ``(inbound
    conserved, outbound conserved, lost_in_gaps)`` with the two Voice Live gaps filled in.

    Audio in flight on a socket that died is lost with it: allowed on every session but
    the last (each was replaced because it died), and counted; the last is exact unless it
    died too (the bridge gave up reconnecting and apologised)."""
    bridge = (summary or {}).get("report") or {}
    per = bridge.get("sessions", {})
    sessions = emulator.sessions if emulator else []
    gaps = {
        "caller_to_voicelive": 0,
        "voicelive_to_bridge": 0,
        "caller_to_bridge": 0,
        "bridge_to_caller": 0,
    }
    in_ok = out_ok = emulator is None or len(per.get("appended", [])) == len(sessions)
    last_died = summary is not None and summary.get("outcome") == "apology_hangup"
    if emulator is not None and in_ok:
        for i, (appended, agent_in, s) in enumerate(
            zip(per.get("appended", []), per.get("agent_in", []), sessions, strict=True)
        ):
            last = i == len(sessions) - 1 and not last_died
            in_ok &= s.input_samples == appended if last else s.input_samples <= appended
            out_ok &= agent_in == s.output_samples if last else agent_in <= s.output_samples
            gaps["caller_to_voicelive"] += appended - s.input_samples
            gaps["voicelive_to_bridge"] += s.output_samples - agent_in
    return in_ok, out_ok, gaps


def _turns(heard: np.ndarray, rate: int, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per caller segment: when it ended and how long until agent audio was heard."""
    turns = []
    for seg in segments:
        end = float(seg["end_s"])
        first = _first_audio_after(heard, rate, end)
        turns.append(
            {
                "text": seg.get("text"),
                "barge_in": bool(seg.get("barge_in")),
                "user_speech_end_s": round(end, 3),
                "first_agent_audio_s": None if first is None else round(first, 3),
                "response_latency_ms": None if first is None else round((first - end) * 1000, 1),
            }
        )
    return turns


def _barge_ins(call: FakeCall, sessions: list[Any]) -> list[dict[str, Any]]:
    """Per StopAudio: the speech onset the emulator detected before it, and the delay.

    The emulator stamps speech_started at the speech onset and emits it once its VAD
    has heard VAD_ONSET_MS of speech: the bridge's reaction is measured from then.
    Each session's clock is its own input audio; the caller's audio runs on across
    sessions, so a session starts where the previous ones' audio ended."""
    onsets, origin = [], 0.0
    for s in sessions:
        onsets += [
            origin + t for t, kind, _ in s.timeline if kind == "input_audio_buffer.speech_started"
        ]
        origin += s.input_samples / s.input_rate
    barge_ins = []
    for t_stop, n_flushed in call.stop_audio:
        detected = [t + VAD_ONSET_MS / 1000 for t in onsets if t + VAD_ONSET_MS / 1000 <= t_stop]
        at = detected[-1] if detected else None
        barge_ins.append(
            {
                "speech_started_s": None if at is None else round(at - VAD_ONSET_MS / 1000, 3),
                "vad_detected_s": None if at is None else round(at, 3),
                "stop_audio_s": round(t_stop, 3),
                "stop_latency_ms": None if at is None else round((t_stop - at) * 1000, 1),
                "samples_flushed_at_acs": n_flushed,
                "during_playback": n_flushed > 0,
            }
        )
    return barge_ins


def _voicelive_report(bridge: dict[str, Any], emulator: VoiceLiveEmulator | None) -> dict[str, Any]:
    """The report's ``voicelive``: ids, sessions, what the emulator received, the upgrade."""
    sessions = emulator.sessions if emulator else []
    session = sessions[-1] if sessions else None
    return {
        "session_id": bridge.get("session_id"),
        "conversation_id": bridge.get("conversation_id"),
        "sessions": len(sessions),
        "received_by_type": dict(sum((s.received_types for s in sessions), Counter()))
        if emulator
        else None,
        "query": dict(session.query) if session else None,
        "auth": session.auth if session else None,
    }


def _errors(
    call: FakeCall, sessions: list[Any], summary: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Errors from every side: the emulator's error events, the fake ACS's protocol errors,
    a missing bridge summary."""
    errors: list[Any] = []
    for s in sessions:
        errors += [{"source": "voicelive", "session": s.id, **e} for e in s.errors_sent]
    errors += [{"source": "fake_acs", "error": e} for e in call.errors]
    if summary is None:
        errors.append({"source": "bridge", "error": "no end-of-call summary from the bridge"})
    return errors


_SECRET_WORDS = ("key", "token", "secret", "password", "authorization", "credential")


def redact(value: Any) -> Any:
    """``value`` with every field whose name suggests a secret replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def first_session_update(sessions: list[Any]) -> dict[str, Any] | None:
    """The ``session`` of the first ``session.update`` the emulator received (secrets
    redacted), so a reader sees exactly what the bridge configured; None without one."""
    for session in sessions:
        for message in session.received:
            if message.get("type") == "session.update":
                given = message.get("session")
                return redact(given) if isinstance(given, dict) else None
    return None


# --------------------------------------------------------------------------- outputs


def write_outputs(result: SimResult, out: Path) -> None:
    """caller.wav, heard.wav, transcript.jsonl, report.json and timeline.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rate = result.report["rates"]["acs_hz"]
    write_wav(out / "caller.wav", result.caller_pcm, rate)
    write_wav(out / "heard.wav", result.call.heard, rate)
    lines = []
    if result.log_path is not None:
        for line in result.log_path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") in ("user_transcript", "agent_transcript", "barge_in", "truncated"):
                lines.append(json.dumps(rec, ensure_ascii=False))
    (out / "transcript.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    (out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    (out / "metrics.prom").write_text(result.metrics_text)
    plot_timeline(result, out / "timeline.png")


def plot_timeline(result: SimResult, path: Path) -> None:
    """Caller and agent waveforms on one time axis, with turns and barge-ins marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = result.report
    rate = report["rates"]["acs_hz"]
    caller = result.caller_pcm.astype(np.float32) / 32768
    heard = result.call.heard.astype(np.float32) / 32768
    fig, axes = plt.subplots(2, 1, figsize=(14, 5), sharex=True)
    for ax, pcm, label, color in (
        (axes[0], caller, "caller (said)", "tab:blue"),
        (axes[1], heard, "agent (heard by caller)", "tab:green"),
    ):
        t = np.arange(len(pcm)) / rate
        step = max(1, len(pcm) // 20000)
        ax.plot(t[::step], pcm[::step], color=color, linewidth=0.4)
        ax.set_ylabel(label)
        ax.set_ylim(-1, 1)
    for turn in report["turns"]:
        axes[0].axvline(turn["user_speech_end_s"], color="k", linestyle=":", linewidth=0.8)
        if turn["first_agent_audio_s"] is not None:
            axes[1].axvline(
                turn["first_agent_audio_s"], color="tab:green", linestyle="--", linewidth=0.8
            )
    for b in report["barge_ins"]:
        if b["during_playback"]:
            for ax in axes:
                ax.axvline(b["stop_audio_s"], color="tab:red", linewidth=1.2)
    axes[1].set_xlabel(
        "call time (s)   ·  dotted: caller turn ends  ·  dashed: agent audio starts"
        "  ·  red: barge-in (StopAudio)"
    )
    fig.suptitle("voicebridge simulated call")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_text(report: dict[str, Any]) -> str:
    a = report["audio"]
    lat = report["bridge_latency_ms"]
    rows = [
        ("outcome", report["outcome"]),
        (
            "rates",
            f"ACS {report['rates']['acs_hz']} Hz <-> "
            f"Voice Live {report['rates']['voicelive_hz']} Hz",
        ),
        ("call length", f"{report['duration_s']:.1f} s"),
        ("responses", ", ".join(f"{r['prompt']}:{r['status']}" for r in report["responses"])),
        (
            "caller turns answered",
            sum(1 for t in report["turns"] if t["first_agent_audio_s"] is not None),
        ),
        ("response latency ms", ", ".join(str(t["response_latency_ms"]) for t in report["turns"])),
        (
            "barge-ins",
            ", ".join(
                f"{b['stop_latency_ms']} ms" for b in report["barge_ins"] if b["during_playback"]
            )
            or "none",
        ),
        (
            "bridge latency ms",
            f"in p50 {lat['inbound_p50']} p99 {lat['inbound_p99']} / "
            f"out p50 {lat['outbound_p50']} p99 {lat['outbound_p99']}",
        ),
        (
            "caller samples",
            f"sent {a['caller_samples_sent']} -> Voice Live {a['voicelive_samples_received']} "
            f"(expected {a['voicelive_samples_expected']})",
        ),
        (
            "agent samples",
            f"sent {a['agent_samples_sent']}, heard {a['caller_samples_heard']}, "
            f"dropped by barge-in {a['samples_dropped_by_barge_in']} "
            f"+ flushed at ACS {a['samples_flushed_by_stop_audio']}",
        ),
        ("conserved", a["conserved"]),
        ("guard", f"sent {report['guard']['sent_by_type']}, blocked {report['guard']['blocked']}"),
        ("call control", ", ".join(f"{k} {v}" for k, v in report["call_control"].items() if v)),
        ("tokens", _usage_line(report.get("usage"))),
        ("errors", len(report["errors"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# --------------------------------------------------------------------------- CLI


def _usage_line(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "none reported"
    return (
        f"in {usage['input_text']} text + {usage['input_audio']} audio "
        f"({usage['input_cached']} cached), out {usage['output_text']} text + "
        f"{usage['output_audio']} audio: ~${usage['cost_usd']:.4f}"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--caller-audio", type=Path, help="mono 16-bit WAV (default: shipped caller)"
    )
    parser.add_argument("--speed", type=float, default=1.0, help="run the call X times real time")
    parser.add_argument("--acs-rate", type=int, choices=(16000, 24000), default=16000)
    parser.add_argument("--voicelive-rate", type=int, choices=(16000, 24000), default=24000)
    parser.add_argument("--out", type=Path, default=Path("sim-out"), help="output directory")
    parser.add_argument(
        "--voicelive-endpoint",
        help="a real Voice Live (credentials and mode from the environment), not the emulator",
    )
    parser.formatter_class = argparse.RawTextHelpFormatter  # keeps the fault list one per line
    parser.add_argument(
        "--scenario",
        choices=sorted(scenarios.SCENARIOS),
        help="a call-control scenario (its own caller, settings and faults):\n"
        + scenarios.scenario_help(),
    )
    parser.add_argument(
        "--fault", action="append", default=[], metavar="NAME[=ARG]", help=FAULT_HELP
    )
    parser.add_argument("--outbound", action="store_true", help="the agent places the call")
    cluster_simulate.configure(parser)  # --replicas N, --calls, --drain-mode, cluster faults


def run(args: argparse.Namespace) -> int:
    if args.replicas is not None or args.calls is not None or args.drain_mode is not None:
        return cluster_simulate.run(args)  # many nodes (its options alone: an error)
    from voicebridge import logs

    # Console: warnings, as text. The bridge's own log, as the service writes it (JSON,
    # INFO, the call's ids on every line): <out>/bridge.log.jsonl.
    logs.setup("INFO")
    logging.getLogger().handlers[0].setLevel(os.environ.get("LOG_LEVEL", "WARNING").upper())
    args.out.mkdir(parents=True, exist_ok=True)
    bridge_log = logging.FileHandler(args.out / "bridge.log.jsonl", mode="w", encoding="utf-8")
    bridge_log.setFormatter(logs.formatter("json"))
    bridge_log.addFilter(
        lambda r: r.name.startswith("voicebridge") and not r.name.startswith("voicebridge.sim")
    )
    logging.getLogger().addHandler(bridge_log)
    options = SimOptions(
        caller_audio=args.caller_audio,
        speed=args.speed,
        acs_rate=args.acs_rate,
        voicelive_rate=args.voicelive_rate,
        out=args.out,
        voicelive_endpoint=args.voicelive_endpoint,
        progress=lambda msg: print(msg, flush=True),
        faults=args.fault,
    )
    if args.scenario:
        options = scenarios.build(args.scenario, options)
    try:
        parse_faults(options.faults)
    except ValueError as exc:
        print(f"voicebridge simulate: {exc}", file=sys.stderr)
        return 2
    if args.voicelive_endpoint:
        from voicebridge.config import load_settings
        from voicebridge.errors import ConfigError

        try:  # Voice Live mode and credentials from the environment; ACS is the fake
            base = load_settings(
                voicelive_endpoint=args.voicelive_endpoint,
                public_base_url="http://127.0.0.1",
                acs_connection_string="endpoint=http://127.0.0.1/;accesskey=eA==",
                acs_resource_id="00000000-0000-0000-0000-000000000000",
            )
        except ConfigError as exc:
            print(f"voicebridge simulate: configuration error: {exc}", file=sys.stderr)
            return 2
        options.settings = {
            k: v
            for k, v in base.model_dump().items()
            if k.startswith(
                (
                    "voicelive_",
                    "agent_",
                    "project_",
                    "conversation_",
                    "foundry_",
                    "voice_",
                    "instructions",
                )
            )
            and k not in ("voicelive_endpoint", "voicelive_audio_rate")
        }
    try:
        outbound = import_module("voicebridge.sim.outbound")  # imports this module
        result = asyncio.run((outbound.run_outbound_call if args.outbound else run_call)(options))
    except Exception as exc:
        print(f"voicebridge simulate: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    write_outputs(result, args.out)
    print(
        f"\nwrote {args.out}/: caller.wav heard.wav transcript.jsonl report.json timeline.png"
        " metrics.prom bridge.log.jsonl\n"
    )
    print(summary_text(result.report))
    ok = result.report["audio"]["conserved"] and result.report["outcome"] is not None
    return 0 if ok else 1
