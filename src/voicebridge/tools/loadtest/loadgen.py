"""The load side of ``voicebridge loadtest``: worker processes that play the callers and
Voice Live, started by :mod:`voicebridge.tools.loadtest` as
``python -m voicebridge.tools.loadtest.loadgen emulator|generator CONFIG_JSON``.

* **emulator** — a :class:`~voicebridge.sim.emulator.VoiceLiveEmulator` (what
  ``voicebridge emulator`` runs) that can report what its sessions received and sent.
* **generator** — a :class:`~voicebridge.sim.fake_acs.FakeAcs` that places calls on a
  schedule, each playing the shipped caller recording looped to the call's length, and
  reports every call's counters as the caller's side of ACS saw them.

Line protocol: one JSON object per line, commands on stdin, replies on stdout. A worker
first replies ``{"endpoint": URL}`` once it listens; stdin EOF stops it; a failure is
reported as ``{"error": "..."}`` before it exits non-zero.

Both measure themselves so the orchestrator can tell whether the load side kept up:
event-loop lag (how late a 20 ms sleep wakes), garbage-collector pauses, and — for the
generator — how overdue each live call's next caller frame is. They run on uvloop when
it is installed: the load side should cost as little as possible, it is not what is
measured.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from voicebridge.core.stats import Histogram
from voicebridge.stats import LoopHealth

FRAME_S = 0.02  # ACS media frames (protocols.md §4)
#: How a call ends when nothing went wrong: the caller hangs up (the fake ACS's
#: ``end_reason``, and the bridge's outcome).
CLEAN_END = "caller_hung_up"
#: Replies carry hundreds of calls' counters: more than asyncio's 64 KiB line default.
LINE_LIMIT = 1 << 24


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _stdin() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# --------------------------------------------------------------------------- emulator


async def emulator(config: dict[str, Any]) -> None:
    """Config ``api_key``, ``speed``, ``port`` (0: any) and optionally ``call_faults``
    (call connection id -> ``{fault name: value}``: that call's Voice Live faults, see
    :class:`~voicebridge.sim.emulator.VoiceLiveEmulator`). Commands: ``{"cmd": "mark"}``
    restarts the health histograms (measuring starts); ``{"cmd": "stats"}`` replies with
    totals over every session (:func:`emulator_totals`), and per call with
    ``"by_call": true``."""
    from voicebridge.sim.emulator import VoiceLiveEmulator

    reader = await _stdin()
    health = LoopHealth()
    watcher = asyncio.create_task(health.watch(interval_s=0.02))
    server = VoiceLiveEmulator(
        api_key=config["api_key"],
        speed=config["speed"],
        call_faults=config.get("call_faults"),
        fast=True,  # the emulator's opt-in speed-ups (voicebridge.sim.emulator.fastpath)
    )
    await server.start("127.0.0.1", int(config.get("port", 0)))
    gc.freeze()  # what start-up left (imports, mostly) is never garbage: keep it out of GC
    try:
        _emit({"endpoint": server.endpoint})
        while line := await reader.readline():
            message = json.loads(line)
            command = message["cmd"]
            if command == "mark":
                health.reset()
            elif command == "stats":
                totals = emulator_totals(server) | health.summary()
                if message.get("by_call"):
                    totals["by_call"] = emulator_by_call(server)
                _emit(totals)
    finally:
        watcher.cancel()
        await server.stop()


def emulator_totals(server: Any) -> dict[str, Any]:
    """Sums over sessions: ``input_samples`` (appended audio received, Voice Live input
    rate), ``output_samples`` (agent audio sent), error codes, response statuses and
    close codes, with ``sessions`` / ``open_sessions`` / ``rejected`` upgrades, and
    ``faults_fired`` (fault name -> times it took effect, handshake stalls included)."""
    sessions = server.sessions
    fired = Counter(name for s in sessions for _, name in s.faults_fired)
    fired.update(name for _, name in server.faults_fired)
    return {
        "sessions": len(sessions),
        "open_sessions": sum(not s.closed.is_set() for s in sessions),
        "rejected": server.rejected,
        "input_samples": sum(s.input_samples for s in sessions),
        "output_samples": sum(s.output_samples for s in sessions),
        "errors": dict(Counter(e["code"] for s in sessions for e in s.errors_sent)),
        "responses": dict(Counter(r["status"] for s in sessions for r in s.responses)),
        "close_codes": dict(Counter(str(s.close_code) for s in sessions)),
        "faults_fired": dict(fired),
    }


def emulator_by_call(server: Any) -> dict[str, dict[str, Any]]:
    """Per call id (the ``x-ms-client-request-id`` of its sessions; sessions without one
    under ``""``): ``sessions``, ``open_sessions``, ``input_samples``, ``output_samples``,
    ``close_codes`` and ``faults_fired`` (names, in order) over that call's sessions."""
    out: dict[str, dict[str, Any]] = {}
    for s in server.sessions:
        call = out.setdefault(
            s.call_id or "",
            {
                "sessions": 0,
                "open_sessions": 0,
                "input_samples": 0,
                "output_samples": 0,
                "close_codes": [],
                "faults_fired": [],
            },
        )
        call["sessions"] += 1
        call["open_sessions"] += not s.closed.is_set()
        call["input_samples"] += s.input_samples
        call["output_samples"] += s.output_samples
        call["close_codes"].append(s.close_code)
        call["faults_fired"] += [name for _, name in s.faults_fired]
    return out


# --------------------------------------------------------------------------- generator


def caller_track(rate: int) -> np.ndarray:
    """The shipped caller recording at ``rate`` (int16): every call's audio is cut from it."""
    from voicebridge.sim.simulate import SimOptions, load_caller

    pcm, _segments = load_caller(SimOptions(acs_rate=rate, out=None))
    return np.asarray(pcm, dtype="<i2")


def call_audio(track: np.ndarray, seconds: float, rate: int, phase: float) -> bytes:
    """``seconds`` of ``track`` from ``phase`` (0..1) of the way in, frame-aligned, looping
    round as often as needed — so calls with different phases talk at different times."""
    frame = rate // 50
    offset = int(phase * len(track)) // frame * frame
    return np.resize(np.roll(track, -offset), round(seconds * rate)).astype("<i2").tobytes()


async def generator(config: dict[str, Any]) -> None:
    """Config ``access_key``, ``resource_id``, ``acs_rate``, ``speed``. One command,
    ``{"cmd": "run", ...}`` (see :func:`place_calls`), answered with its result; the
    fake stays up until stdin closes so no socket closes under a call winding down, but
    its HTTP client's idle keep-alive connections to the bridge are closed once every
    call has ended (so the bridge's sockets can be compared with its idle figures).
    Stdin closing while calls run stops them at once (the orchestrator is giving up)."""
    from voicebridge.sim.fake_acs import FakeAcs

    reader = await _stdin()
    fake = FakeAcs(
        access_key=config["access_key"],
        resource_id=config["resource_id"],
        acs_rate=config["acs_rate"],
        speed=config["speed"],
        fast=True,  # the fake's opt-in speed-ups (voicebridge.sim.fake_acs.fastpath)
    )
    await fake.start("127.0.0.1", 0)
    gc.freeze()  # what start-up left (imports, mostly) is never garbage: keep it out of GC
    try:
        _emit({"endpoint": fake.endpoint})
        line = await reader.readline()
        if line:
            calls = asyncio.create_task(place_calls(fake, json.loads(line)))
            eof = asyncio.create_task(reader.read())
            await asyncio.wait({calls, eof}, return_when=asyncio.FIRST_COMPLETED)
            if calls.done():
                _emit(calls.result())
                await fake.close_idle_connections()
                await eof
            else:
                calls.cancel()
                await asyncio.gather(calls, return_exceptions=True)
    finally:
        await fake.stop()


async def place_calls(fake: Any, command: dict[str, Any]) -> dict[str, Any]:
    """Place ``command["calls"]`` — each ``{"index", "start_s", "phase"}``: rung at
    ``t0 + start_s`` (``time.monotonic()``, the same clock in every process on Linux)
    with ``seconds`` of caller audio from ``phase`` — to ``webhook``; wait until all
    have ended (at most ``timeout_s`` after t0, then the caller hangs up and the call
    counts as failed). A call may also carry ``call_connection_id`` (the id the answer
    assigns), ``faults`` (``{acs fault name: value}`` for this call only) and
    ``expect_end`` (the caller-side ends that count as clean, a list; default
    ``[CLEAN_END]``). Returns ``calls`` (:func:`call_result` each), this process's
    health, ``send_slip_ms`` and the fake's ``internal_errors``."""
    rate = fake.acs_rate
    seconds = float(command["seconds"])
    t0, deadline = float(command["t0"]), float(command["t0"]) + float(command["timeout_s"])
    track = caller_track(rate)
    health = LoopHealth()
    slip_ms = Histogram()
    live: list[Any] = []
    results: list[dict[str, Any]] = []

    async def one(spec: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, t0 + spec["start_s"] - time.monotonic()))
        pcm = call_audio(track, seconds, rate, float(spec["phase"]))
        call = await fake.place_call(
            webhook_url=command["webhook"],
            caller_pcm=pcm,
            caller=f"+1555{spec['index']:07d}",
            faults=spec.get("faults"),
            call_connection_id=spec.get("call_connection_id"),
        )
        live.append(call)
        failure = None
        try:
            await call.wait_ended(max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            failure = "did not end in time"
            await call.hang_up()
        finally:
            live.remove(call)
        results.append(call_result(spec["index"], call, failure, spec.get("expect_end")))

    async def sample_slip() -> None:
        # Media tick n is due at call time 0.02 n, so with the next tick k the next frame
        # is due at 0.02 k: how far past that "now" is, is how late the generator runs
        # (k counts frames sent and ticks skipped in a fault's media gap, during which
        # nothing is due).
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            for call in live:
                overdue_s = call.overdue_s(now)
                if overdue_s is not None:
                    slip_ms.add(max(0.0, overdue_s * 1000.0))

    tasks = [asyncio.create_task(health.watch(interval_s=0.02)), asyncio.create_task(sample_slip())]
    try:
        await asyncio.gather(*(one(spec) for spec in command["calls"]))
    finally:
        for task in tasks:
            task.cancel()
    return {
        "calls": sorted(results, key=lambda r: int(r["index"])),
        **health.summary(),
        "send_slip_ms": slip_ms.summary(),
        "internal_errors": fake.internal_errors[:5],
    }


def call_result(
    index: int, call: Any, failure: str | None, expect_end: list[str] | None = None
) -> dict[str, Any]:
    """One call's counters from the caller's side; ``failure`` is why it did not end
    cleanly (webhook refused, an end not in ``expect_end`` — by default only the caller
    hanging up —, a protocol error). Fault bookkeeping (all zero or empty without faults):
    ``faults`` (what applied to the call), ``faults_fired``, ``media_sockets``,
    ``caller_samples_lost_in_gap`` and ``samples_flushed_by_drop`` (see
    :class:`~voicebridge.sim.fake_acs.FakeCall`)."""
    expected = expect_end or [CLEAN_END]
    if failure is None and call.incoming_call_status != 200:
        failure = f"IncomingCall webhook answered {call.incoming_call_status}"
    if failure is None and call.end_reason not in expected:
        failure = f"ended {call.end_reason or '?'}" + (
            f" (expected {' or '.join(expected)})" if expected != [CLEAN_END] else ""
        )
    if failure is None and call.errors:
        failure = f"protocol error: {call.errors[0]}"
    return {
        "index": index,
        "end_reason": call.end_reason,
        "failure": failure,
        "acs_rate": call.acs_rate,
        "frame_samples": call.frame_samples,
        "frames_sent": call.frames_sent,
        "received_frames": call.received_frames,
        "received_samples": call.received_samples,
        "samples_heard": call.samples_heard,
        "samples_flushed": sum(n for _, n in call.stop_audio),
        "samples_queued_at_end": call.queued_samples,
        "stop_audio": len(call.stop_audio),
        "underrun_frames": call.underrun_frames,
        "call_connection_id": call.call_connection_id,
        "correlation_id": call.correlation_id,
        "faults": sorted(call.faults),
        "faults_fired": [name for _, name in call.faults_fired],
        "media_sockets": call.media_sockets,
        "caller_samples_lost_in_gap": call.caller_samples_lost_in_gap,
        "samples_flushed_by_drop": call.samples_flushed_by_drop,
    }


# --------------------------------------------------------------------------- entry point

ROLES = {"emulator": emulator, "generator": generator}


def main(argv: list[str]) -> int:
    """``python -m voicebridge.tools.loadtest.loadgen ROLE CONFIG_JSON``."""
    if len(argv) != 2 or argv[0] not in ROLES:
        print(f"usage: python -m voicebridge.tools.loadtest.loadgen {'|'.join(ROLES)} CONFIG_JSON")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(ROLES[argv[0]](json.loads(argv[1])))
    except Exception as exc:
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
