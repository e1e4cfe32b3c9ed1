"""Faults sprinkled over ``voicebridge loadtest`` calls, and the checks of a soak test.

**Fault plan** (:func:`plan_faults`). ``--fault NAME[=ARG]`` (repeatable; the names of
:mod:`voicebridge.sim.faults`) and ``--fault-fraction F``: ``round(F x calls)`` calls
(at least one when F > 0), drawn with ``random.Random(seed)``, get exactly one fault
each, the faults dealt round-robin over them in a shuffled order — so the same seed
faults the same calls the same way, and every fault is used when there are enough
faulted calls. The rest of the calls run normally. Every call gets a known call
connection id (seeded too), which the fake ACS assigns at the answer: the bridge sends
it as ``x-ms-client-request-id`` on every Voice Live connect, which is how the emulator
recognises a call's sessions and applies a ``voicelive-*`` fault to that call's first
session only, never to its reconnects (``VoiceLiveEmulator(call_faults=...)``). An
``acs-*`` fault is applied by the generator to that one call
(``FakeAcs.place_call(faults=...)``).

**What a call should end with** (:data:`CLEAN_OUTCOMES`, :data:`EXPECTED_OUTCOMES`).
A bridge outcome is *clean* when the call ended along a designed path with the caller
handled (heard the agent to the end, or an apology/goodbye, then a hang-up) and the
reason logged; it is *expected* when it is what the call's fault is designed to produce
(for most faults, and for unfaulted calls: the caller hanging up as usual). The soak
verdict asks for the expected outcome, which is stricter.

**Leak checks** (:func:`probe`, :func:`leak_report`): the same figures of the bridge
process, idle before the first call and after the last one has ended and a settle:
asyncio tasks, file descriptors (each TCP socket labelled by the process at its other
end and its state, from ``/proc``), RSS, and Python-level memory (allocated blocks,
live objects by type, and what the registry's bounded history of ended calls keeps).

**Logs** (:func:`read_call_logs`, :func:`scan_bridge_log`): every per-call JSONL in
``LOG_DIR`` must end with ``call_ended`` and an outcome; the bridge's stderr (JSON lines)
must hold no traceback, no "Task exception was never retrieved", no unhandled error,
and each ERROR line is classified: explained by the fault injected into its call
(:data:`EXPECTED_ERRORS`) or not.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebridge.sim.faults import FaultValue, parse_fault
from voicebridge.tools.loadtest import procfs

#: ``--soak``: calls, caller audio per call (s), and the faults sprinkled over them.
#: Times are media seconds into the call (ACS) or into its first Voice Live session,
#: spread over the 60 s so that drops land in the middle of conversations:
#: ``voicelive-drop`` at 20 s (no close frame) and ``voicelive-close`` at 35 s (1011)
#: force a mid-call reconnect; ``acs-reconnect`` at 25 s replaces the media socket;
#: ``voicelive-stall-response=3`` holds the first answer 3 s (under the 8 s stall
#: timeout: the bridge must just wait); the others act at set-up or hang-up.
SOAK_CALLS = 100
SOAK_SECONDS = 60.0
SOAK_FAULTS = (
    "voicelive-drop=20",
    "voicelive-close=35",
    "voicelive-malformed",
    "voicelive-error=rate_limit_exceeded",
    "voicelive-stall-response=3",
    "acs-reconnect=25",
    "acs-duplicate-callbacks",
    "acs-close-first",
)
DEFAULT_FAULT_FRACTION = 0.3
#: Wall seconds between the last call's end and the "after" measurement, and the most
#: the check then waits for tasks and sockets to come back to the idle figures. The load
#: side closes its idle keep-alive connections to the bridge once the calls are over
#: (see ``run_load``), so the bridge's sockets are normally back within the first 3 s;
#: otherwise keep-alive timers would close them (uvicorn 5 s, aiohttp pools 15-30 s).
SETTLE_S = 3.0
SETTLE_MAX_S = 45.0
#: "Back to baseline" for RSS: what is left above idle, once the C heap has been trimmed
#: (``malloc_trim(0)``: glibc otherwise keeps freed memory for reuse, and gives back
#: only the top of its heap by itself) and less the arenas Python's allocator gained,
#: is at most this many MB or this share of the peak growth, whichever is larger.
#: Python returns an arena (1 MiB on 64-bit) to the OS only when every block in it is
#: free, so the few objects that outlive the calls (the history of ended calls, caches)
#: pin arenas that are otherwise empty — they are reused by the next calls, and their
#: live bytes are reported. The margin covers executor threads' stacks and allocator
#: slack; the Python-level checks (blocks, objects by type) are what tell a leak.
RSS_TOLERANCE_MB = 5.0
RSS_TOLERANCE_SHARE = 0.10
#: Python-level "back to baseline": allocated blocks after minus before, less what the
#: bounded history of ended calls keeps, may exceed zero by at most this many blocks in
#: all plus this many per call. Measured: ~4 000 blocks after 6 calls, ~6 500 after 100
#: — classes and modules first used by a call, ABC isinstance caches (a weakref and a
#: callback per entry), the bounded LRU caches of urllib and yarl; a second wave of
#: calls in one process adds ~19 blocks per call, all of it in the histories. A per-call
#: leak of a call's state (thousands of blocks) or of a task and its coroutine shows far
#: above this, and the census by type names it.
PY_TOLERANCE_BLOCKS = 20_000
PY_TOLERANCE_BLOCKS_PER_CALL = 20

#: Types that hold one call's state: once every call has ended, none may be alive.
CALL_STATE_TYPES = (
    "voicebridge.calls.Call",
    "voicebridge.relay.MediaRelay",
    "voicebridge.core.bridge.CallBridge",
    "voicebridge.voicelive.session.OpenSession",
    "voicebridge.calls.ConversationLog",
)

#: Bridge outcomes that end a call along a designed path, and why they count as clean.
CLEAN_OUTCOMES = {
    "caller_hung_up": "the caller ended the call: the normal end (load-test callers hang "
    "up 1 s after the agent's last word)",
    "apology_hangup": "Voice Live could not be reached within the connect timeout or the "
    "reconnect budget: the caller heard the apology, then the bridge hung up",
    "media_lost": "the ACS media socket closed without CallDisconnected and was not "
    "reopened within ACS_RECONNECT_GRACE_S: the bridge hung up",
    "drained": "SIGTERM drain grace over: goodbye prompt, then hang-up",
    "media_idle_timeout": "no media frame for MEDIA_IDLE_TIMEOUT_S: the bridge hung up",
    "max_duration": "MAX_CALL_DURATION_S reached: goodbye prompt, then hang-up",
}
#: Outcomes that are never clean. (This bridge has no ``completed`` outcome: a call that
#: runs to its natural end ends with the caller hanging up.)
UNCLEAN_OUTCOMES = {
    "error": "the relay failed with an exception",
    "answer_failed": "the call was never connected",
    "shutdown": "the process stopped under a live call",
}
#: Per fault, the bridge outcomes and caller-side ends (``FakeCall.end_reason``) it is
#: designed to produce; a fault not listed (and no fault) expects the caller's hang-up.
EXPECTED_OUTCOMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "acs-drop": (("media_lost",), ("media_dropped",)),
    # apology after the connect timeout, unless the caller's audio ends first
    "voicelive-stall-handshake": (
        ("apology_hangup", "caller_hung_up"),
        ("bridge_hung_up", "caller_hung_up"),
    ),
}
DEFAULT_EXPECTED = (("caller_hung_up",), ("caller_hung_up",))
#: The Voice Live SDK logs this at ERROR (``azure.ai.voicelive.aio``) before raising
#: ``ConnectionError`` when the bridge sends on a session that has just died; the relay
#: catches the error, keeps the audio for the new session and reconnects.
_SEND_ON_DEAD_SESSION = "Failed to send event"
#: Per fault, substrings of the bridge's ERROR messages that fault explains (in its call).
EXPECTED_ERRORS: dict[str, tuple[str, ...]] = {
    "voicelive-drop": (_SEND_ON_DEAD_SESSION,),
    "voicelive-close": (_SEND_ON_DEAD_SESSION,),
    "voicelive-expire": (_SEND_ON_DEAD_SESSION,),
    "voicelive-no-session-updated": (_SEND_ON_DEAD_SESSION,),
    "voicelive-no-response": (_SEND_ON_DEAD_SESSION,),
    "voicelive-stall-response": (_SEND_ON_DEAD_SESSION,),
    "voicelive-error": (_SEND_ON_DEAD_SESSION,),  # message_creation_failed closes it
    "voicelive-stall-handshake": ("did not complete the handshake",),
    "voicelive-stall-reconnect": (_SEND_ON_DEAD_SESSION, "reconnect failed"),
}
#: Lines of the bridge's stderr that mean an exception nobody handled.
UNHANDLED_MARKERS = (
    "Traceback",
    "Task exception was never retrieved",
    "Unhandled",
    "Exception in callback",
    "exception was never retrieved",
)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedFault:
    """One fault for one call: ``spec`` as given, its ``name``, ``target`` simulator
    (``voicelive`` | ``acs``) and parsed ``value``."""

    spec: str
    name: str
    target: str
    value: FaultValue

    @property
    def expected(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(bridge outcomes, caller ends) this fault should produce."""
        return EXPECTED_OUTCOMES.get(self.name, DEFAULT_EXPECTED)


def parse_specs(specs: list[str], seconds: float) -> list[PlannedFault]:
    """Parse ``--fault`` specs; ``ValueError`` for a bad spec, or a fault timed at or
    after the end of a call's audio (``seconds``), which would never fire."""
    out = []
    for spec in specs:
        info, value = parse_fault(spec)
        timed = info.arg == "T" and info.name != "voicelive-stall-response"
        if timed and isinstance(value, float) and value >= seconds:
            raise ValueError(
                f"fault {spec!r} fires {value:g} s into a call: after its {seconds:g} s of "
                "caller audio (--seconds)"
            )
        out.append(PlannedFault(spec.strip(), info.name, info.target, value))
    return out


def plan_faults(
    calls: int, faults: list[PlannedFault], fraction: float, seed: int
) -> list[PlannedFault | None]:
    """Per call index, its one fault or None (see the module docstring); deterministic
    for given arguments."""
    if not faults or fraction <= 0:
        return [None] * calls
    rng = random.Random(seed)
    k = min(calls, max(1, round(fraction * calls)))
    chosen = rng.sample(range(calls), k)  # in random order: the dealing order
    plan: list[PlannedFault | None] = [None] * calls
    for i, index in enumerate(chosen):
        plan[index] = faults[i % len(faults)]
    return plan


def call_ids(calls: int, seed: int) -> list[str]:
    """A call connection id per call (UUID-shaped, seeded, distinct)."""
    rng = random.Random(f"call-ids-{seed}")
    ids: list[str] = []
    while len(ids) < calls:
        cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if cid not in ids:
            ids.append(cid)
    return ids


# --------------------------------------------------------------------------- probes

#: ``GET /api/stats`` (``objects``: ``/debug/stats``, with the census) from the bridge.
StatsGetter = Callable[[bool], Awaitable[dict[str, Any]]]


@dataclass
class Target:
    """The bridge under test: its pid, listening port, log directory, and the other
    processes of the test by name (to label sockets by who is at the other end)."""

    pid: int
    port: int
    log_dir: Path
    others: dict[str, int]
    get_stats: StatsGetter


async def probe(target: Target, *, census: bool) -> dict[str, Any]:
    """The bridge's leak-relevant figures now: ``tasks`` and the rest of
    ``/api/stats``'s ``process``, ``fds`` (:func:`~.procfs.describe_fds`), ``rss_mb`` and, with
    ``census``, the object census (needs ``DEBUG_ENDPOINTS=true`` in the bridge)."""
    stats = await target.get_stats(census)
    process = dict(stats.get("process", {}))
    return {
        "t": time.monotonic(),
        "tasks": process.get("tasks"),
        "process": process,
        "fds": procfs.describe_fds(target.pid, target.port, target.others, target.log_dir),
        "rss_mb": round(procfs.memory_mb(target.pid)["rss"], 1),
        "threads": procfs.threads(target.pid),
        "census": stats.get("census"),
    }


def _fd_excess(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Descriptor kinds and TCP labels with more entries after than before."""
    out = {}
    for key in ("kinds", "tcp"):
        for label, n in after[key].items():
            extra = n - before[key].get(label, 0)
            if extra > 0 and not (key == "kinds" and label == "socket"):
                out[label] = extra
    return out


def back_to_idle(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Tasks and descriptors (every kind and TCP label) at or under the idle figures."""
    return (
        after["tasks"] is not None
        and after["tasks"] <= before["tasks"]
        and not _fd_excess(before["fds"], after["fds"])
        and after["fds"]["total"] <= before["fds"]["total"]
    )


async def settle(
    target: Target,
    before: dict[str, Any],
    *,
    settle_s: float = SETTLE_S,
    settle_max_s: float = SETTLE_MAX_S,
) -> dict[str, Any]:
    """Wait ``settle_s``, probe; while tasks or descriptors are above ``before``, probe
    again every second, up to ``settle_max_s`` in all; then a final probe with the
    census. Returns ``{"at_settle": first probe, "final": last, "waited_s": ...}``."""
    started = time.monotonic()
    await asyncio.sleep(settle_s)
    first = await probe(target, census=False)
    current = first
    while not back_to_idle(before, current) and time.monotonic() - started < settle_max_s:
        await asyncio.sleep(1.0)
        current = await probe(target, census=False)
    final = await probe(target, census=True)
    return {"at_settle": first, "final": final, "waited_s": round(final["t"] - started, 1)}


# --------------------------------------------------------------------------- verdicts


def _census_growth(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, int]:
    if not before or not after:
        return {}
    b, a = before["by_type"], after["by_type"]
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)}


def _retained_objects(census: dict[str, Any] | None) -> int:
    if not census:
        return 0
    return sum(int(v["objects"]) for v in census.get("retained", {}).values())


def leak_report(
    before: dict[str, Any],
    settled: dict[str, Any],
    *,
    calls: int,
    peak_rss_mb: float,
) -> dict[str, Any]:
    """Compare the idle probe ``before`` with the settled one (:func:`settle`).

    * ``tasks`` — asyncio tasks after must not exceed before (the ``/api/stats``
      request being served is one task in both).
    * ``fds`` — per descriptor kind and per TCP label, after must not exceed before,
      and no socket may sit in CLOSE_WAIT. Idle keep-alive connections (the Call
      Automation client's pool, callers' HTTP connections) are waited out by
      :func:`settle` rather than tolerated; ``waited_s`` says how long that took.
    * ``rss_mb`` — idle (after a heap trim), peak (VmHWM), ``after`` (as the process
      was) and ``after_trim`` (once the C heap's free memory went back to the OS:
      ``/debug/stats?trim=1``); ``pymalloc``: Python's arenas (1 MiB each)
      before and after, their high-water mark, and the live bytes in them.
      ``unexplained_mb`` is what ``after_trim`` leaves above idle less the arenas
      Python gained (an arena returns to the OS only when all of it is free: arenas
      holding a few survivors stay, and are reused by later allocations; the live
      bytes show whether they hold anything). ``back`` when that is within
      :data:`RSS_TOLERANCE_MB` or :data:`RSS_TOLERANCE_SHARE` of the peak growth;
      ``back_strict`` when ``after_trim`` itself is.
    * ``python`` — allocated blocks before/after (after a full collection), objects
      the bounded history of ended calls keeps, the unexplained rest
      (``unexplained_blocks``, with :data:`PY_TOLERANCE_BLOCKS` +
      :data:`PY_TOLERANCE_BLOCKS_PER_CALL` per call allowed) and the object types
      whose count changed the most (``voicebridge.*`` types in full).
    * ``call_state_retained`` — instances of :data:`CALL_STATE_TYPES` alive after (more
      than before): a finished call's state still reachable from somewhere.
    * ``ok`` — tasks, fds, RSS (``back``) and Python memory all back, no call state
      retained.
    """
    after = settled["final"]
    growth = _census_growth(before.get("census"), after.get("census"))
    tasks_ok = after["tasks"] is not None and after["tasks"] <= before["tasks"]
    excess = _fd_excess(before["fds"], after["fds"])
    fds_ok = not excess and after["fds"]["close_wait"] == 0
    rss = _rss_report(before, after, peak_rss_mb)
    python = _python_report(before, after, growth, calls)
    retained_state = {k: growth[k] for k in CALL_STATE_TYPES if growth.get(k, 0) > 0}
    return {
        "waited_s": settled["waited_s"],
        "tasks": {"before": before["tasks"], "after": after["tasks"], "ok": tasks_ok},
        "tasks_at_settle": settled["at_settle"]["tasks"],
        "threads": {"before": before.get("threads"), "after": after.get("threads")},
        "fds": {
            "before": before["fds"],
            "after": after["fds"],
            "at_settle": settled["at_settle"]["fds"],
            "excess": excess,
            "ok": fds_ok,
        },
        "rss_mb": rss,
        "python": python,
        "call_state_retained": retained_state,
        "ok": tasks_ok and fds_ok and python["ok"] and not retained_state and rss["back"],
    }


def _pymalloc_report(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Python's arenas before and after (each probe's census), the high-water mark, and
    the live bytes in them (see :func:`leak_report`)."""
    mib = 1024 * 1024
    return {
        "arenas": {"before": before.get("arenas"), "after": after.get("arenas")},
        "arenas_highwater": after.get("arenas_highwater"),
        "arena_mb_growth": max(0, after.get("arenas", 0) - before.get("arenas", 0)),  # 1 MiB
        "live_mb": {
            "before": round(before.get("allocated_bytes", 0) / mib, 1),
            "after": round(after.get("allocated_bytes", 0) / mib, 1),
        },
    }


def _rss_report(
    before: dict[str, Any], after: dict[str, Any], peak_rss_mb: float
) -> dict[str, Any]:
    """``rss_mb`` of :func:`leak_report`: RSS idle, at its peak and after, before and
    after a heap trim, and whether what is left above idle is ``back``."""
    cb, ca = before.get("census") or {}, after.get("census") or {}
    pymalloc = _pymalloc_report(cb.get("pymalloc") or {}, ca.get("pymalloc") or {})
    idle = before["rss_mb"]
    heap = ca.get("heap") or {}
    now = heap.get("rss_mb_before") or after["rss_mb"]
    trimmed = heap.get("rss_mb_after") or after["rss_mb"]
    peak_growth = max(0.0, peak_rss_mb - idle)
    rss_allowed = max(RSS_TOLERANCE_MB, RSS_TOLERANCE_SHARE * peak_growth)
    rss_unexplained = trimmed - idle - pymalloc["arena_mb_growth"]  # all in MiB
    return {
        "idle": idle,
        "peak": round(peak_rss_mb, 1),
        "after": now,
        "after_trim": trimmed,
        "trimmed": bool(heap.get("trimmed")),
        "left_above_idle": round(trimmed - idle, 1),
        "returned_pct": round(100 * (peak_rss_mb - trimmed) / peak_growth, 1)
        if peak_growth
        else None,
        "allowed_above_idle": round(rss_allowed, 1),
        "unexplained_mb": round(rss_unexplained, 1),
        "back": rss_unexplained <= rss_allowed,
        "back_strict": trimmed - idle <= rss_allowed,
        "pymalloc": pymalloc,
    }


def _python_report(
    before: dict[str, Any], after: dict[str, Any], growth: dict[str, int], calls: int
) -> dict[str, Any]:
    """``python`` of :func:`leak_report`: allocated blocks and objects before and after,
    what the history of ended calls keeps, and the unexplained rest against the allowance."""
    cb, ca = before.get("census"), after.get("census")
    blocks_b = cb["allocated_blocks"] if cb else before["process"].get("allocated_blocks", 0)
    blocks_a = ca["allocated_blocks"] if ca else after["process"].get("allocated_blocks", 0)
    retained_b, retained_a = _retained_objects(cb), _retained_objects(ca)
    unexplained = (blocks_a - blocks_b) - (retained_a - retained_b)
    allowed = PY_TOLERANCE_BLOCKS + PY_TOLERANCE_BLOCKS_PER_CALL * calls
    top = sorted(growth.items(), key=lambda kv: -abs(kv[1]))
    return {
        "allocated_blocks": {"before": blocks_b, "after": blocks_a},
        "objects": {
            "before": cb["objects"] if cb else None,
            "after": ca["objects"] if ca else None,
        },
        "retained_by_history": {
            "before": retained_b,
            "after": retained_a,
            "detail": ca.get("retained") if ca else None,
        },
        "unexplained_blocks": unexplained,
        "unexplained_blocks_per_call": round(unexplained / max(1, calls), 1),
        "allowed_blocks": allowed,
        "census": bool(cb and ca),
        "types_changed": dict(top[:15]),
        "voicebridge_types_changed": {
            k: v for k, v in growth.items() if k.startswith("voicebridge.")
        },
        "ok": unexplained <= allowed,
    }


# --------------------------------------------------------------------------- logs


def read_call_logs(log_dir: Path) -> dict[str, dict[str, Any]]:
    """Per call log (``<stamp>-<correlation id>.jsonl``), keyed by the correlation id:
    ``file``, ``lines``, ``last_event``, ``outcome`` (of the last line when it is
    ``call_ended``, else None), ``counters``/``inbound``/``outbound``/``reconnects``
    from the ``counters`` line (None without one) and ``bad_lines`` (not JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(log_dir.glob("*.jsonl")) if log_dir.is_dir() else []:
        key = path.stem.split("-", 1)[1] if "-" in path.stem else path.stem
        entry: dict[str, Any] = {
            "file": path.name,
            "lines": 0,
            "last_event": None,
            "outcome": None,
            "counters": None,
            "inbound": None,
            "outbound": None,
            "reconnects": None,
            "bad_lines": 0,
        }
        last: dict[str, Any] = {}
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                entry["lines"] += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    entry["bad_lines"] += 1
                    last = {}
                    continue
                last = record if isinstance(record, dict) else {}
                if last.get("event") == "counters":
                    for k in ("counters", "inbound", "outbound", "reconnects"):
                        entry[k] = last.get(k)
        entry["last_event"] = last.get("event")
        if entry["last_event"] == "call_ended":
            entry["outcome"] = last.get("outcome")
        out[key] = entry
    return out


_IDS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\b[0-9a-f]{12,}\b|sess_\w+"
)
_NUMBERS = re.compile(r"\d+(\.\d+)?")


def message_kind(message: str) -> str:
    """A log message with ids and numbers blanked, to group lines by kind."""
    return _NUMBERS.sub("N", _IDS.sub("<id>", message))[:200]


def scan_bridge_log(path: Path, faults_by_call: dict[str, PlannedFault | None]) -> dict[str, Any]:
    """The bridge's stderr: ``unhandled`` (lines with an :data:`UNHANDLED_MARKERS`
    marker or an ``exception`` field: first 10, and ``unhandled_count``), ``errors`` and
    ``warnings`` grouped by :func:`message_kind` (count, ``faults`` of the calls they
    came from; for ERROR also ``class``: ``expected`` when every line is explained by
    its call's fault per :data:`EXPECTED_ERRORS`, else ``unexpected``), and
    ``unexpected_errors`` (lines in ``unexpected`` groups). ``faults_by_call`` maps call
    connection ids (and correlation ids) to their fault."""
    unhandled: list[str] = []
    groups: dict[str, dict[str, dict[str, Any]]] = {"ERROR": {}, "WARNING": {}}
    non_json = 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if any(marker in line for marker in UNHANDLED_MARKERS):
            unhandled.append(line[:500])
        try:
            record = json.loads(line)
        except ValueError:
            non_json += bool(line.strip())
            continue
        if not isinstance(record, dict):
            continue
        if "exception" in record and not any(m in line for m in UNHANDLED_MARKERS):
            unhandled.append(line[:500])
        level = "ERROR" if record.get("level") in ("ERROR", "CRITICAL") else record.get("level")
        if level not in groups:
            continue
        message = str(record.get("message", ""))
        call = record.get("call_connection_id") or record.get("correlation_id")
        fault = faults_by_call.get(call) if call else None
        kind = f"{record.get('logger', '?')}: {message_kind(message)}"
        group = groups[level].setdefault(
            kind, {"message": kind, "count": 0, "faults": Counter(), "explained": 0}
        )
        group["count"] += 1
        group["faults"][fault.spec if fault else ("no call" if not call else "none")] += 1
        if fault and any(p in message for p in EXPECTED_ERRORS.get(fault.name, ())):
            group["explained"] += 1
    errors = []
    for group in groups["ERROR"].values():
        group["class"] = "expected" if group["explained"] == group["count"] else "unexpected"
        errors.append(group)
    for group in [*errors, *groups["WARNING"].values()]:
        group["faults"] = dict(group["faults"])
        group.pop("explained", None)
    errors.sort(key=lambda g: -g["count"])
    warnings = sorted(groups["WARNING"].values(), key=lambda g: -g["count"])
    return {
        "unhandled": unhandled[:10],
        "unhandled_count": len(unhandled),
        "errors": errors,
        "unexpected_errors": sum(g["count"] for g in errors if g["class"] == "unexpected"),
        "warnings": warnings,
        "non_json_lines": non_json,
    }
