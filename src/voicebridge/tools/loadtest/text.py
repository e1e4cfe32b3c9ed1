"""The human-readable text of a load test's report (:func:`format_report`): one row per
aspect of the run, then the rows of the fault and soak checks when it had them."""

from __future__ import annotations

from typing import Any

from voicebridge.tools.loadtest import machine_probe


def _lat(d: dict[str, Any]) -> str:
    return f"p50 {d.get('p50', 0):.2f}  p99 {d.get('p99', 0):.2f}  max {d.get('max', 0):.1f}"


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of one run."""
    rows = [
        *_cost_rows(r),
        *_latency_rows(r),
        *_outcome_rows(r),
        *_environment_rows(r),
        *_cluster_rows(r.get("cluster")),
        (
            "verdict",
            ("held" if r["held"] else "NOT held")
            + f" (p99 <= {r['p99_limit_ms']:g} ms both ways, nothing lost, no call failed)",
        ),
        *_fault_rows(r),
        *_leak_rows(r.get("leaks")),
        *_log_rows(r),
    ]
    if "soak" in r:
        failed = [k for k, ok in r["soak"]["checks"].items() if not ok]
        verdict = "every check passed" if r["soak"]["ok"] else f"FAILED: {', '.join(failed)}"
        rows.append(("soak verdict", verdict))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines + [f"  {'':{width}}  {f}" for f in r["failures"]])


def _cluster_rows(c: dict[str, Any] | None) -> list[tuple[str, str]]:
    """With ``--replicas``: the nodes one by one, the merged relay p99, Redis."""
    if not c:
        return []
    merged = c["relay_p99_ms_merged"]
    rows = [
        (
            "cluster",
            f"{c['replicas']} nodes behind HAProxy; latency rows above are the highest node's; "
            f"relay p99 over all nodes' buckets: in {merged['inbound']} ms, "
            f"out {merged['outbound']} ms",
        ),
        (
            "redis",
            f"{c['redis_commands']} commands ({c['redis_ops_per_s']}/s); "
            f"callbacks forwarded: {c['forwarded_total']}",
        ),
    ]
    for n in c["nodes"]:
        rows.append(
            (
                f"node {n['node']}",
                f"p99 in {n['inbound_p99_ms']} / out {n['outbound_p99_ms']} ms, "
                f"CPU {n['cpu_s']} s, outcomes {n['calls_by_outcome']}, "
                f"balancer sessions {n['balancer_sessions']}",
            )
        )
    return rows


def _cost_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    full = r["bridge_cpu_pct_full"]
    steady = r["cpu_ms_per_call_s_steady"]
    return [
        (
            "calls",
            f"{r['calls']} x {r['seconds']:g} s of caller audio (ramp {r['ramp_s']:g} s, "
            f"speed {r['speed']:g}): mean call {r['mean_call_s']:.1f} s, "
            f"{r['call_seconds']:.0f} call-s in {r['wall_s']:.1f} s",
        ),
        (
            "bridge CPU",
            f"{r['cpu_ms_per_call_s']:.3f} ms per call-second; {r['bridge_cpu_pct']:.1f} % "
            "of a core over the run"
            + (f", {full:.1f} % with all calls up" if full is not None else "")
            + f", peak {r['bridge_cpu_pct_peak']:.0f} %"
            + (
                f"; {steady:.3f} ms per call-second with all calls up" if steady is not None else ""
            ),
        ),
        (
            "bridge RSS",
            f"{r['rss_mb']:.1f} MB peak (idle {r['rss_mb_idle']:.1f} MB, "
            f"{r['rss_mb_per_call']:+.3f} MB per call)",
        ),
    ]


def _latency_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    stall = r["worst_stall"]
    return [
        ("inbound ms", f"{_lat(r['inbound_latency_ms'])}   (ACS frame in -> append out)"),
        ("outbound ms", f"{_lat(r['outbound_latency_ms'])}   (delta in -> frame out, less lead)"),
        (
            "loop lag ms",
            _lat(r["loop_lag_ms"])
            + (f"   (worst by t={stall['by_t_s']:g} s, {stall['phase']})" if stall else ""),
        ),
        ("gc pause ms", _lat(r["gc_pause_ms"]) if r.get("gc_pause_ms") else "n/a"),
    ]


def _outcome_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            "lost",
            f"{r['frames_lost']} frames, {r['samples_lost']} samples; "
            f"calls not conserved {r['calls_not_conserved']}",
        ),
        ("calls failed", f"{r['calls_failed']} of {r['calls']}; outcomes {r['calls_by_outcome']}"),
        (
            "turns",
            f"Voice Live responses {r['voicelive']['responses']}; "
            f"{r['barge_ins']['stop_audio']} StopAudio",
        ),
    ]


def _environment_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    ls, cont, machine = r["load_side"], r["contention"], r["machine"]
    pinned = machine["pinned"]["bridge"]
    return [
        (
            "load side",
            f"generator loop lag p99 {ls['generator_loop_lag_ms']['p99']:.2f} / max "
            f"{ls['generator_loop_lag_ms']['max']:.1f} ms, caller frames late p99 "
            f"{ls['send_slip_ms']['p99']:.2f} / max {ls['send_slip_ms']['max']:.1f} ms, "
            f"emulator loop lag p99 {ls['emulator_loop_lag_ms']['p99']:.2f} ms; CPU % "
            f"generators {ls['generator_cpu_pct']}, emulator {ls['emulator_cpu_pct']} "
            f"({ls['emulator_rss_mb']:.0f} MB peak)"
            + ("" if r["load_side_ok"] else "   << did NOT keep up"),
        ),
        (
            "contention",
            f"the bridge's loop waited for its CPU {cont['bridge_runqueue_wait_pct']:.1f} % "
            f"of the time; other processes used {cont['other_load_cores']:.2f} cores "
            f"({cont['bridge_core_shared_pct']:.1f} % of the bridge's CPU), interrupts "
            f"{cont['irq_cores']:.2f}, steal {cont['steal_cores']:.2f}"
            + ("   << latency includes other work" if cont["noisy"] else ""),
        ),
        (
            "machine",
            f"{machine['cpus']} x {machine['cpu_model']}, Python {machine['python']}; bridge "
            + (f"pinned to CPU {pinned[0]}, the rest on the others" if pinned else "not pinned")
            + machine_probe.machine_text(machine),
        ),
    ]


def _tcp(fds: dict[str, Any]) -> str:
    tcp = ", ".join(f"{k} {v}" for k, v in fds["tcp"].items()) or "none"
    return f"{fds['total']} ({fds['kinds'].get('socket', 0)} sockets: {tcp})"


def _fault_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The faults given and the reconnects they caused, when the run had them."""
    rows: list[tuple[str, str]] = []
    if "faults" in r:
        f = r["faults"]
        fired = ", ".join(
            f"{spec} {v['fired']}/{len(v['calls'])}" for spec, v in sorted(f["by_fault"].items())
        )
        rows.append(
            (
                "faults",
                f"{f['faulted_calls']} of {r['calls']} calls (fraction {f['fraction']:g}, seed "
                f"{f['seed']}), one each; fired in calls: {fired}",
            )
        )
    if "voicelive_reconnects" in r:
        rows.append(
            ("reconnects", f"Voice Live reconnects (bridge counter) {r['voicelive_reconnects']}")
        )
    return rows


def _leak_rows(leaks: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The leak check (:func:`~.soak.leak_report`), when the run had one."""
    if not leaks:
        return []
    tasks, fds = leaks["tasks"], leaks["fds"]
    return [
        *_memory_rows(leaks),
        (
            "call state",
            "none alive after the calls"
            if not leaks["call_state_retained"]
            else f"still alive: {leaks['call_state_retained']}   << retained",
        ),
        (
            "tasks",
            f"idle {tasks['before']}, after {tasks['after']} "
            f"(at settle {leaks['tasks_at_settle']})"
            + ("" if tasks["ok"] else "   << leaked")
            + f"; OS threads {leaks['threads']['before']} -> {leaks['threads']['after']}",
        ),
        ("fds idle", _tcp(fds["before"])),
        ("fds at settle", _tcp(fds["at_settle"])),
        (
            "fds after",
            _tcp(fds["after"])
            + f" after {leaks['waited_s']:g} s"
            + ("" if fds["ok"] else f"   << excess {fds['excess']}"),
        ),
    ]


def _memory_rows(leaks: dict[str, Any]) -> list[tuple[str, str]]:
    m, py = leaks["rss_mb"], leaks["python"]
    pm = m["pymalloc"]
    return [
        (
            "memory",
            f"RSS idle {m['idle']:.1f} MB, peak {m['peak']:.1f} MB, after {m['after']:.1f} MB, "
            f"after a heap trim {m['after_trim']:.1f} MB ({m['left_above_idle']:+.1f} MB over "
            "idle"
            + (
                f", {max(0.0, m['returned_pct']):.0f} % of the growth returned"
                if m["returned_pct"] is not None
                else ""
            )
            + ")",
        ),
        (
            "python heap",
            f"arenas {pm['arenas']['before']} -> {pm['arenas']['after']} MiB (high-water "
            f"{pm['arenas_highwater']}), live in them {pm['live_mb']['before']:.1f} -> "
            f"{pm['live_mb']['after']:.1f} MB; RSS over idle not explained by arenas "
            f"{m['unexplained_mb']:+.1f} MB: {'back' if m['back'] else 'NOT back'} (within "
            f"{m['allowed_above_idle']:.1f} MB)",
        ),
        (
            "python memory",
            f"allocated blocks {py['allocated_blocks']['before']} -> "
            f"{py['allocated_blocks']['after']}, objects {py['objects']['before']} -> "
            f"{py['objects']['after']}; the history of ended calls keeps "
            f"{py['retained_by_history']['after'] - py['retained_by_history']['before']:+d} "
            f"objects; unexplained {py['unexplained_blocks']:+d} blocks "
            f"({py['unexplained_blocks_per_call']:+g} per call, allowed "
            f"{py['allowed_blocks']})" + ("" if py["ok"] else "   << NOT back"),
        ),
    ]


def _log_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The per-call logs and the bridge's log, when the run checked them."""
    if "call_logs" not in r:
        return []
    cl, bl = r["call_logs"], r["bridge_log"]
    rows = [
        (
            "call logs",
            f"{cl['files']} files; outcomes {cl['outcomes']}"
            + ("" if cl["match_api_stats"] else " (differ from /api/stats)")
            + (
                f"; not ending with call_ended: {cl['not_ending_with_call_ended']}"
                if cl["not_ending_with_call_ended"]
                else "; every one ends with call_ended"
            ),
        ),
        (
            "bridge log",
            f"unhandled exceptions {bl['unhandled_count']}; ERROR lines "
            f"{sum(g['count'] for g in bl['errors'])} "
            f"({bl['unexpected_errors']} unexpected); WARNING lines "
            f"{sum(g['count'] for g in bl['warnings'])}",
        ),
    ]
    rows += [
        ("  ERROR", f"{g['count']} x {g['message']} [{g['class']}; {g['faults']}]")
        for g in bl["errors"]
    ]
    rows += [
        ("  WARNING", f"{g['count']} x {g['message']} [{g['faults']}]") for g in bl["warnings"]
    ]
    rows += [("  unhandled", line[:300]) for line in bl["unhandled"]]
    return rows
