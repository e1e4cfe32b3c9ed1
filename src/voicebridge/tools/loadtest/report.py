"""The report of one load test (:func:`summarise`), field by field.

* ``cpu_s_per_call_s`` (and ``cpu_ms_per_call_s``) — bridge CPU seconds (user +
  system, ``/proc/<pid>/stat``) from the first call until the bridge had finished
  the last, divided by the call-seconds of all calls. Set-up and hang-up are part of
  what a call costs, so they are included.
* ``bridge_cpu_pct`` — that CPU as % of one core over the run; ``_full`` is the mean
  of the 1 s samples taken while every call was up, ``_peak`` the highest sample;
  ``cpu_ms_per_call_s_steady`` is ``_full`` per call-second (no set-up, no hang-up).
* ``rss_mb`` — the bridge's peak RSS (VmHWM); ``rss_mb_idle`` its RSS before the first
  call; ``rss_mb_per_call`` = (peak - idle) / calls.
* ``inbound_latency_ms`` / ``outbound_latency_ms`` / ``loop_lag_ms`` — the bridge's own
  histograms from ``/api/stats`` (count, p50, p99, max). Loop lag covers the
  bridge's whole life, including the second of start-up before the first call;
  ``worst_stall`` says when its maximum happened (``ramp-up``/``steady``/
  ``wind-down``). Relay histograms are merged as calls end, so only loop lag can
  be placed in time.
* ``conservation`` — each link of the audio path as ``sent``/``received``/``lost``:
  caller frames and samples into the bridge; caller audio resampled and appended
  to Voice Live (expected from what the callers sent) and as the emulator received
  it; agent audio from the emulator into the bridge; frames from the bridge to the
  callers; and the callers' play queues (heard + flushed by StopAudio + left).
  ``frames_lost``/``samples_lost`` add up the absolute differences of the frame and
  sample links. ``calls_not_conserved`` is the bridge's own per-call verdict, which
  also covers agent audio inside the bridge (sent, or dropped by barge-in).
* ``calls_failed`` — calls that did not end cleanly on either side: the caller saw
  anything but its own hang-up (or a protocol error), or the bridge recorded an
  outcome other than ``caller_hung_up``; ``failures`` says why (first 10).
* ``load_side`` — worst over load processes: loop lag, GC pauses, how overdue the
  next caller frame was (``send_slip_ms``), CPU %, and the emulator's peak RSS.
  ``load_side_ok`` is false when a loop-lag or slip p99 is above
  :data:`~.options.LOAD_SIDE_LIMIT_MS`.
* ``contention`` — what else ran: ``other_load_cores``, CPU that processes outside
  this test used (machine task time minus ours, per wall second);
  ``bridge_core_shared_pct``, the part of that on the bridge's pinned CPU (% of the
  run); ``irq_cores`` and ``steal_cores``, interrupt time (loopback networking,
  charged to no process) and time the hypervisor gave to other guests; and
  ``bridge_runqueue_wait_pct``, the share of the run the bridge's event loop was
  runnable but waiting for a CPU — the direct measure of interference. When
  ``noisy``, latency and loop lag include other people's work (CPU per call-second
  hardly changes).
* ``held`` — relay p99 within ``p99_limit_ms`` both ways, nothing lost, none failed.
* ``machine`` — CPUs, CPU model, Python, and which CPUs the bridge and the load side
  were ``pinned`` to; with ``--machine-probe``, also ``speed_reference_ms`` and
  ``speed_probe`` (:mod:`~voicebridge.tools.loadtest.machine_probe`).

With a fault plan (``faults``) some of this changes, because a socket aborted by a
fault loses whatever was in flight on it, by design:

* ``conservation``, ``frames_lost``, ``samples_lost`` cover the calls *without* a
  fault only, link by link from per-call figures (the bridge's from each call's
  ``counters`` log line, the emulator's by call id); ``conservation_faulted`` is the
  same over the faulted calls, for information. ``calls_not_conserved`` (the
  bridge's own per-call verdict, which counts gap losses) still covers every call.
* ``calls_failed`` — calls whose caller-side end or bridge outcome (from its log)
  is not the one expected for its fault (:data:`~.soak.EXPECTED_OUTCOMES`), or whose
  log does not end with ``call_ended``.
* ``faults`` — the specs, which calls got which, and what fired (emulator and
  callers). ``voicelive_reconnects`` — the bridge's counter.

With ``checks`` (leak check, or any fault plan): ``call_logs`` (each per-call log
ends with ``call_ended``; outcomes from the logs, clean or not per
:data:`~.soak.CLEAN_OUTCOMES`), ``bridge_log`` (unhandled exceptions, ERROR lines by
kind and class, WARNING lines by kind), ``leaks`` (:func:`~.soak.leak_report`) and
``soak`` (every check's verdict and ``ok``, all of them).

The text of a report is :func:`voicebridge.tools.loadtest.text.format_report`.
"""

from __future__ import annotations

import os
import platform
from collections import Counter
from typing import Any

from voicebridge.tools.loadtest import procfs, soak
from voicebridge.tools.loadtest.loadgen import CLEAN_END, FRAME_S
from voicebridge.tools.loadtest.options import LOAD_SIDE_LIMIT_MS, LoadOptions


def summarise(
    options: LoadOptions,
    *,
    stats: dict[str, Any],
    generators: list[dict[str, Any]],
    emulator: dict[str, Any],
    cpu: dict[str, float],
    wall_s: float,
    memory: dict[str, dict[str, float]],
    samples: list[dict[str, Any]],
    contention: dict[str, float],
    pinned: dict[str, list[int]],
    faults: list[soak.PlannedFault | None] | None = None,
    checks: dict[str, Any] | None = None,
    machine: dict[str, Any] | None = None,
    beside_bridge: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The report of one run (every field is described in the module docstring).

    ``stats`` is the bridge's ``/api/stats`` once every call had ended, ``generators``
    and ``emulator`` what the load-side workers replied, ``cpu`` the CPU seconds of each
    process of the test by name over the run, ``memory`` the bridge's RSS ``idle`` and
    at the ``end``, ``samples`` the 1 s samples of the bridge, ``contention`` machine and
    bridge-CPU task times over the run, ``pinned`` the CPUs of each side. ``machine``:
    fields added to the report's ``machine`` as they are (``--machine-probe``'s);
    ``beside_bridge`` names processes in ``cpu`` that ran on the bridge's pinned CPU
    too: their CPU is neither the bridge's nor other load.
    """
    n = options.calls
    calls = [c for reply in generators for c in reply["calls"]]
    counters = stats.get("counters", {})
    call_logs: dict[str, Any] = (checks or {}).get("call_logs", {})
    conservation, fault_info = _conservation(options, calls, counters, emulator, faults, call_logs)
    frames_lost = sum(abs(v["lost"]) for k, v in conservation.items() if k.endswith("_frames"))
    samples_lost = sum(abs(v["lost"]) for k, v in conservation.items() if k.endswith("_samples"))
    outcomes = dict(stats.get("calls_by_outcome", {}))
    failures, calls_failed = _failures(n, calls, generators, outcomes, faults, call_logs)
    relay = stats.get("relay_latency_ms", {})
    inbound, outbound = relay.get("inbound", {}), relay.get("outbound", {})
    limit = options.p99_limit_ms
    held = (
        max(float(inbound.get("p99", 0.0)), float(outbound.get("p99", 0.0))) <= limit
        and frames_lost == samples_lost == calls_failed == stats.get("calls_not_conserved", 0) == 0
    )
    report = _fault_fields(fault_info, int(counters.get("voicelive_reconnects", 0)))
    if checks is not None:
        report |= _checks_summary(
            checks,
            n=n,
            outcomes=outcomes,
            lost=frames_lost + samples_lost,
            calls_failed=calls_failed,
            not_conserved=int(stats.get("calls_not_conserved", 0)),
        )
        report.setdefault("voicelive_reconnects", int(counters.get("voicelive_reconnects", 0)))
    report |= _cost(options, calls, cpu["bridge"], wall_s, memory, samples)
    report |= {
        "inbound_latency_ms": inbound,
        "outbound_latency_ms": outbound,
        "loop_lag_ms": stats.get("loop_lag_ms", {}),
        "gc_pause_ms": stats.get("gc_pause_ms", {}),
        "frames_lost": frames_lost,
        "samples_lost": samples_lost,
        "calls_failed": calls_failed,
        "calls_not_conserved": stats.get("calls_not_conserved", 0),
        "calls_by_outcome": outcomes,
        "failures": failures[:10],
        "conservation": conservation,
    }
    report |= _turns(calls, counters, emulator)
    report |= _load_side(generators, emulator, cpu, wall_s)
    report["contention"] = _contention(cpu, contention, pinned, wall_s, beside_bridge)
    return report | {
        "p99_limit_ms": limit,
        "held": held,
        "cpu_samples": samples,
        "machine": _machine(pinned) | (machine or {}),
    }


def _fault_fields(fault_info: dict[str, Any] | None, reconnects: int) -> dict[str, Any]:
    """``faults`` and ``voicelive_reconnects``, with a fault plan (first in the report)."""
    if fault_info is None:
        return {}
    return {"faults": fault_info, "voicelive_reconnects": reconnects}


def _turns(
    calls: list[dict[str, Any]], counters: dict[str, Any], emulator: dict[str, Any]
) -> dict[str, Any]:
    """Barge-ins, the callers' underruns, and what Voice Live's sessions did."""
    return {
        "barge_ins": {
            "stop_audio": _total(calls, "stop_audio"),
            "samples_dropped_by_barge_in": counters.get("samples_dropped_by_barge_in", 0),
            "samples_flushed_at_acs": _total(calls, "samples_flushed"),
        },
        "underrun_frames": _total(calls, "underrun_frames"),
        "voicelive": {k: emulator[k] for k in ("sessions", "responses", "errors", "close_codes")},
    }


def _machine(pinned: dict[str, list[int]]) -> dict[str, Any]:
    """The machine the run was made on, and which CPUs each side was pinned to."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": procfs.cpu_model(),
        "python": platform.python_version(),
        "pinned": pinned,
    }


def _total(calls: list[dict[str, Any]], key: str) -> int:
    return sum(int(c[key]) for c in calls)


def _cost(
    options: LoadOptions,
    calls: list[dict[str, Any]],
    bridge_cpu: float,
    wall_s: float,
    memory: dict[str, dict[str, float]],
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the run was, and what it cost the bridge: CPU and memory."""
    n = options.calls
    call_s = _total(calls, "frames_sent") * FRAME_S
    full = [s["cpu_pct"] for s in samples if s["active"] == n]
    # With every call up, N calls make N x speed call-seconds per wall second.
    steady = sum(full) / len(full) * 10 / (n * options.speed) if full else None
    peak_mb, idle_mb = memory["end"]["hwm"], memory["idle"]["rss"]
    return {
        "calls": n,
        "seconds": options.seconds,
        "ramp_s": options.ramp,
        "speed": options.speed,
        "generators": options.generators,
        "rates": {"acs_hz": options.acs_rate, "voicelive_hz": options.voicelive_rate},
        "call_seconds": round(call_s, 2),
        "mean_call_s": round(call_s / max(1, len(calls)), 2),
        "wall_s": round(wall_s, 2),
        "cpu_s_per_call_s": round(bridge_cpu / call_s, 6) if call_s else None,
        "cpu_ms_per_call_s": round(1000 * bridge_cpu / call_s, 3) if call_s else None,
        "bridge_cpu_s": round(bridge_cpu, 3),
        "bridge_cpu_pct": round(100 * bridge_cpu / wall_s, 1),
        "bridge_cpu_pct_full": round(sum(full) / len(full), 1) if full else None,
        "bridge_cpu_pct_peak": max((s["cpu_pct"] for s in samples), default=0.0),
        "cpu_ms_per_call_s_steady": round(steady, 3) if steady is not None else None,
        "worst_stall": _worst_stall(samples, n, options.ramp),
        "rss_mb": round(peak_mb, 1),
        "rss_mb_idle": round(idle_mb, 1),
        "rss_mb_per_call": round((peak_mb - idle_mb) / n, 3),
    }


def _conservation(
    options: LoadOptions,
    calls: list[dict[str, Any]],
    counters: dict[str, Any],
    emulator: dict[str, Any],
    faults: list[soak.PlannedFault | None] | None,
    call_logs: dict[str, Any],
) -> tuple[dict[str, dict[str, int]], dict[str, Any] | None]:
    """``(conservation, faults)``: over every call from the run's totals without a fault
    plan; with one, over the calls without a fault from per-call figures, and the fault
    summary with ``conservation_faulted`` (None without a plan)."""
    if faults is None:
        conservation = conservation_links(
            calls,
            counters,
            emulator["input_samples"],
            emulator["output_samples"],
            options.voicelive_rate,
        )
        return conservation, None
    by_call = emulator.get("by_call", {})

    def links(subset: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
        summed: Counter[str] = Counter()
        for c in subset:
            entry = call_logs.get(c.get("correlation_id") or "", {})
            summed.update({k: int(v) for k, v in (entry.get("counters") or {}).items() if _int(v)})
        vl = [by_call.get(c.get("call_connection_id") or "", {}) for c in subset]
        return conservation_links(
            subset,
            summed,
            sum(int(v.get("input_samples", 0)) for v in vl),
            sum(int(v.get("output_samples", 0)) for v in vl),
            options.voicelive_rate,
        )

    plain = [c for c in calls if faults[int(c["index"])] is None]
    faulted = [c for c in calls if faults[int(c["index"])] is not None]
    fault_info = _fault_summary(faults, calls, emulator) | {
        "fraction": options.fault_fraction,
        "seed": options.fault_seed,
        "conservation_faulted": links(faulted),
    }
    return links(plain), fault_info


def _failures(
    n: int,
    calls: list[dict[str, Any]],
    generators: list[dict[str, Any]],
    outcomes: dict[str, int],
    faults: list[soak.PlannedFault | None] | None,
    call_logs: dict[str, Any],
) -> tuple[list[str], int]:
    """``(failures, calls_failed)``: why calls failed, and how many (see the module
    docstring, with and without a fault plan)."""
    failures = [f"call {c['index']}: {c['failure']}" for c in calls if c["failure"]]
    failures += [f"fake ACS: {e}" for reply in generators for e in reply["internal_errors"]]
    if faults is None:
        unclean = n - int(outcomes.get(CLEAN_END, 0))
        if unclean:
            failures.append(f"bridge outcomes {outcomes}")
        return failures, max(sum(1 for c in calls if c["failure"]) + n - len(calls), unclean)
    bad = {int(c["index"]) for c in calls if c["failure"]} | (
        set(range(n)) - {int(c["index"]) for c in calls}
    )
    for c in calls:
        i = int(c["index"])
        fault = faults[i]
        expected = (fault.expected if fault else soak.DEFAULT_EXPECTED)[0]
        got = call_logs.get(c.get("correlation_id") or "", {}).get("outcome")
        if got not in expected:
            bad.add(i)
            failures.append(
                f"call {i}"
                + (f" ({fault.spec})" if fault else "")
                + f": bridge outcome {got or 'not logged'}, expected {' or '.join(expected)}"
            )
    return failures, len(bad)


def _load_side(
    generators: list[dict[str, Any]],
    emulator: dict[str, Any],
    cpu: dict[str, float],
    wall_s: float,
) -> dict[str, Any]:
    """``load_side`` and ``load_side_ok``: whether the load side kept up."""

    def worst(key: str, stat: str) -> float:
        return max((float(reply[key][stat]) for reply in generators), default=0.0)

    lags = {
        "generator_loop_lag_ms": {s: worst("loop_lag_ms", s) for s in ("p99", "max")},
        "send_slip_ms": {s: worst("send_slip_ms", s) for s in ("p99", "max")},
        "emulator_loop_lag_ms": {s: float(emulator["loop_lag_ms"][s]) for s in ("p99", "max")},
    }
    load_side: dict[str, Any] = lags | {
        "generator_gc_pause_ms": {s: worst("gc_pause_ms", s) for s in ("p99", "max")},
        "emulator_gc_pause_ms": {s: emulator["gc_pause_ms"][s] for s in ("p99", "max")},
        "generator_cpu_pct": [
            round(100 * v / wall_s, 1) for k, v in cpu.items() if k.startswith("generator-")
        ],
        "emulator_cpu_pct": round(100 * cpu["emulator"] / wall_s, 1),
        "emulator_rss_mb": round(float(emulator.get("rss_mb", 0.0)), 1),
    }
    return {
        "load_side": load_side,
        "load_side_ok": max(lag["p99"] for lag in lags.values()) <= LOAD_SIDE_LIMIT_MS,
    }


def _contention(
    cpu: dict[str, float],
    contention: dict[str, float],
    pinned: dict[str, list[int]],
    wall_s: float,
    beside_bridge: tuple[str, ...],
) -> dict[str, Any]:
    """``contention``: what else ran on the machine, and on the bridge's CPU."""
    ours_on_bridge_cpu = cpu["bridge"] + sum(cpu.get(name, 0.0) for name in beside_bridge)
    shared_s = contention["bridge_cpu_tasks_s"] - ours_on_bridge_cpu if pinned["bridge"] else 0.0
    interference: dict[str, Any] = {
        "other_load_cores": round(
            max(0.0, contention["machine_tasks_s"] - sum(cpu.values())) / wall_s, 2
        ),
        "bridge_core_shared_pct": round(100 * max(0.0, shared_s) / wall_s, 1),
        "irq_cores": round(contention["machine_irq_s"] / wall_s, 2),
        "steal_cores": round(contention["machine_steal_s"] / wall_s, 2),
        "bridge_runqueue_wait_pct": round(100 * contention["bridge_runqueue_wait_s"] / wall_s, 2),
    }
    interference["noisy"] = (
        interference["bridge_runqueue_wait_pct"] > 2.0
        or interference["bridge_core_shared_pct"] > 5.0
        or interference["steal_cores"] > 0.05
    )
    return interference


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _link(sent: int, received: int) -> dict[str, int]:
    return {"sent": sent, "received": received, "lost": sent - received}


def conservation_links(
    calls: list[dict[str, Any]],
    counters: dict[str, Any],
    voicelive_in: int,
    voicelive_out: int,
    voicelive_rate: int,
) -> dict[str, dict[str, int]]:
    """Each link of the audio path as ``sent``/``received``/``lost`` over ``calls`` (the
    callers' results), the bridge's ``counters`` summed over the same calls, and the
    emulator's input and output samples for them (see the module docstring)."""

    def total(key: str) -> int:
        return sum(int(c.get(key, 0)) for c in calls)

    sent_samples = sum(c["frames_sent"] * c["frame_samples"] for c in calls)
    expected_in = sum(
        -(-c["frames_sent"] * c["frame_samples"] * voicelive_rate // c["acs_rate"]) for c in calls
    )
    appended = int(counters.get("voicelive_samples_appended", 0))
    # What the caller's play queue did with what it received; a fault that drops the
    # media socket discards the queue (samples_flushed_by_drop, 0 without faults).
    heard = (
        total("samples_heard")
        + total("samples_flushed")
        + total("samples_queued_at_end")
        + total("samples_flushed_by_drop")
    )
    return {
        "caller_to_bridge_frames": _link(total("frames_sent"), counters.get("acs_frames_in", 0)),
        "caller_to_bridge_samples": _link(sent_samples, counters.get("caller_samples_in", 0)),
        "bridge_inbound_samples": _link(expected_in, appended),
        "bridge_to_voicelive_samples": _link(appended, voicelive_in),
        "voicelive_to_bridge_samples": _link(voicelive_out, counters.get("agent_samples_in", 0)),
        "bridge_to_caller_frames": _link(
            counters.get("acs_frames_out", 0), total("received_frames")
        ),
        "caller_playback_samples": _link(total("received_samples"), heard),
    }


def _fault_summary(
    faults: list[soak.PlannedFault | None], calls: list[dict[str, Any]], emulator: dict[str, Any]
) -> dict[str, Any]:
    """Which calls got which fault, and whether it fired (per call: in the emulator for
    ``voicelive-*``, at the caller for ``acs-*``)."""
    by_call = emulator.get("by_call", {})
    results = {int(c["index"]): c for c in calls}
    by_spec: dict[str, dict[str, Any]] = {}
    for i, fault in enumerate(faults):
        if fault is None:
            continue
        entry = by_spec.setdefault(fault.spec, {"calls": [], "fired": 0})
        entry["calls"].append(i)
        c = results.get(i, {})
        if fault.target == "voicelive":
            fired = by_call.get(c.get("call_connection_id") or "", {}).get("faults_fired", [])
        else:
            fired = c.get("faults_fired", [])
        entry["fired"] += fault.name in fired
    return {
        "specs": sorted(by_spec),
        "faulted_calls": sum(f is not None for f in faults),
        "by_fault": by_spec,
        "voicelive_fired": emulator.get("faults_fired", {}),
        "acs_fired": dict(Counter(name for c in calls for name in set(c.get("faults_fired", [])))),
    }


def _checks_summary(
    checks: dict[str, Any],
    *,
    n: int,
    outcomes: dict[str, int],
    lost: int,
    calls_failed: int,
    not_conserved: int,
) -> dict[str, Any]:
    """``call_logs``, ``bridge_log``, ``leaks`` and the ``soak`` verdict (see the module
    docstring)."""
    logs: dict[str, Any] = checks.get("call_logs", {})
    logged = Counter(str(entry["outcome"]) for entry in logs.values() if entry["outcome"])
    not_ended = sorted(entry["file"] for entry in logs.values() if entry["outcome"] is None)
    unclean = {k: v for k, v in logged.items() if k not in soak.CLEAN_OUTCOMES}
    call_logs = {
        "files": len(logs),
        "outcomes": dict(logged),
        "not_ending_with_call_ended": not_ended[:10],
        "unclean": unclean,
        "match_api_stats": dict(logged) == outcomes,
    }
    bridge_log = checks.get("bridge_log", {})
    leaks = checks.get("leaks")
    verdicts = {
        "no_unhandled_exception": bridge_log.get("unhandled_count", 0) == 0,
        "no_unexpected_error_lines": bridge_log.get("unexpected_errors", 0) == 0,
        "every_call_logged_its_end": len(logs) == n and not not_ended,
        "every_outcome_clean": not unclean and sum(logged.values()) == n,
        "every_outcome_expected": calls_failed == 0,
        "nothing_lost": lost == 0 and not_conserved == 0,
    }
    if leaks is not None:
        verdicts |= {
            "tasks_back_to_idle": leaks["tasks"]["ok"],
            "fds_back_to_idle": leaks["fds"]["ok"],
            "python_memory_back": leaks["python"]["ok"],
            "no_call_state_retained": not leaks["call_state_retained"],
            "memory_back_to_idle": leaks["rss_mb"]["back"],
        }
    return {
        "call_logs": call_logs,
        "bridge_log": bridge_log,
        "leaks": leaks,
        "soak": {"ok": all(verdicts.values()), "checks": verdicts},
    }


def _worst_stall(samples: list[dict[str, Any]], calls: int, ramp_s: float) -> dict[str, Any]:
    """When the bridge's loop-lag maximum was reached: the first 1 s sample that shows
    its final value, and the phase of the run then (``ramp-up`` while calls are still
    being placed, ``steady`` with every call up, ``wind-down`` after)."""
    known = [s for s in samples if "loop_lag_max_ms" in s]
    if not known:
        return {}
    final = known[-1]["loop_lag_max_ms"]
    first = next(s for s in known if s["loop_lag_max_ms"] == final)
    if first["t"] <= ramp_s + 1.0 and first["active"] != calls:
        phase = "ramp-up"
    else:
        phase = "steady" if first["active"] == calls else "wind-down"
    return {"loop_lag_ms": final, "by_t_s": first["t"], "phase": phase}
