"""Many load tests in a row, each in fresh processes: :func:`find_max` (the largest call
count that holds) and :func:`sweep` (how cost grows with calls, with :func:`plot_sweep`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from voicebridge.tools.loadtest import machine_probe
from voicebridge.tools.loadtest.options import LoadOptions
from voicebridge.tools.loadtest.runner import run_load
from voicebridge.tools.loadtest.text import format_report


def _step_line(r: dict[str, Any]) -> str:
    """One find-max or sweep step on one line, with what failed in brackets."""
    limit = r["p99_limit_ms"]
    why = [
        label
        for label, bad in (
            ("inbound p99", r["inbound_latency_ms"].get("p99", 0) > limit),
            ("outbound p99", r["outbound_latency_ms"].get("p99", 0) > limit),
            ("loss", r["frames_lost"] or r["samples_lost"] or r["calls_not_conserved"]),
            ("failed calls", r["calls_failed"]),
            ("load side lagged", not r["load_side_ok"]),
            ("noisy machine", r["contention"]["noisy"]),
        )
        if bad
    ]
    cpu_pct = r["bridge_cpu_pct_full"] or r["bridge_cpu_pct"]
    return (
        f"{r['calls']:5d} calls  {'held' if r['held'] else 'FAILED':6s}  "
        + (f"(attempt {r['attempt']})  " if r.get("attempt", 1) > 1 else "")
        + f"in p99 {r['inbound_latency_ms'].get('p99', 0):7.2f}  "
        f"out p99 {r['outbound_latency_ms'].get('p99', 0):7.2f}  "
        f"loop lag p99 {r['loop_lag_ms'].get('p99', 0):7.2f} ms  "
        f"{r['cpu_ms_per_call_s']:.2f} ms/call-s  CPU {cpu_pct:5.1f} %  "
        f"lost {r['frames_lost']}/{r['samples_lost']}  failed {r['calls_failed']}"
        + machine_probe.step_text(r)
        + (f"  [{', '.join(why)}]" if why else "")
    )


# --------------------------------------------------------------------------- find-max


async def find_max(
    options: LoadOptions, *, cap: int, retries: int = 1, resolution: float = 0.1
) -> dict[str, Any]:
    """The largest call count that held (:func:`~.report.summarise`), each step in fresh
    processes.

    From ``options.calls``, double until a step fails or ``cap`` is reached, then bisect
    until the gap between the largest count that held and the smallest that failed is
    at most ``resolution`` of the former (and at least 2). A step that fails while the
    machine was ``noisy`` (other processes took the bridge's CPU) is run again, up to
    ``retries`` times, and holds if any attempt held: interference only ever makes a
    run worse, so the best attempt is the closest to what the bridge itself can do.
    ``limited_by`` says whether the load side kept up in the first failing step.
    """
    steps: list[dict[str, Any]] = []
    good: dict[str, Any] | None = None
    bad: int | None = None
    n = max(1, min(options.calls, cap))
    while True:
        report = await _find_max_step(options, n, retries, steps)
        if not report["held"]:
            bad = n if bad is None else min(bad, n)
        elif good is None or n > good["calls"]:
            good = report
        good_n = good["calls"] if good else 0
        if bad is None:
            if n >= cap:
                break
            n = min(cap, 2 * n)
        elif bad - good_n <= max(2, int(resolution * good_n)):
            break
        else:
            n = (good_n + bad) // 2
    failed = next((s for s in reversed(steps) if s["calls"] == bad), None)
    limited_by = None
    if failed is not None:
        limited_by = "bridge" if failed["load_side_ok"] else "load side (it did not keep up)"
    elif good is not None:
        limited_by = f"--max-calls {cap}"
    drop = ("conservation", "cpu_samples")
    return {
        "max_calls": good["calls"] if good else 0,
        "calls_per_core": good["calls"] if good else 0,
        "first_failed_calls": bad,
        "limited_by": limited_by,
        "cap": cap,
        "seconds": options.seconds,
        "p99_limit_ms": options.p99_limit_ms,
        "best": good,
        "steps": [{k: v for k, v in s.items() if k not in drop} for s in steps],
        "machine": steps[-1]["machine"],
    }


async def _find_max_step(
    options: LoadOptions, n: int, retries: int, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    """``n`` calls, again while a run fails on a noisy machine (``retries`` times at
    most); every run is added to ``steps``; the last one is returned."""
    for attempt in range(retries + 1):
        options.say(
            f"find-max: {n} calls x {options.seconds:g} s" + (" (again)" if attempt else "")
        )
        report = await run_load(replace(options, calls=n)) | {"attempt": attempt + 1}
        steps.append(report)
        options.say("  " + _step_line(report))
        if report["held"] or not report["contention"]["noisy"]:
            break
    return report


def format_find_max(result: dict[str, Any]) -> str:
    lines = ["steps:", *("  " + _step_line(s) for s in result["steps"]), ""]
    if result["best"] is None:
        return "\n".join([*lines, "no call count held"])
    lines.append(
        f"max calls held: {result['max_calls']} on one core (smallest failing: "
        f"{result['first_failed_calls']}; limited by {result['limited_by']})"
    )
    lines += machine_probe.find_max_text(result["steps"])
    return "\n".join([*lines, "", format_report(result["best"])])


# --------------------------------------------------------------------------- sweep

#: What a sweep keeps of each run (the rest is per-run detail).
SWEEP_KEYS = (
    "calls",
    "call_seconds",
    "cpu_ms_per_call_s",
    "cpu_ms_per_call_s_steady",
    "bridge_cpu_pct_full",
    "rss_mb",
    "rss_mb_idle",
    "rss_mb_per_call",
    "inbound_latency_ms",
    "outbound_latency_ms",
    "loop_lag_ms",
    "frames_lost",
    "calls_failed",
    "held",
    "load_side_ok",
    "contention",
    "machine",
)


async def sweep(options: LoadOptions, counts: list[int]) -> dict[str, Any]:
    """One run per call count in ``counts`` (fresh processes each): how cost grows with
    calls. ``steps`` keeps :data:`SWEEP_KEYS` of each report."""
    steps = []
    for n in counts:
        options.say(f"sweep: {n} calls x {options.seconds:g} s")
        report = await run_load(replace(options, calls=n))
        options.say("  " + _step_line(report))
        steps.append({k: report[k] for k in SWEEP_KEYS})
    return {"seconds": options.seconds, "p99_limit_ms": options.p99_limit_ms, "steps": steps}


def format_sweep(result: dict[str, Any]) -> str:
    """The sweep as a table, one line per call count."""
    steps = result["steps"]
    probe = machine_probe.sweep_cells(steps)
    heading, cells = probe if probe is not None else ("", [""] * len(steps))
    lines = [
        "  calls  ms/call-s  steady  CPU %   RSS MB  MB/call  in p99  out p99  lag p99  "
        f"{heading}verdict"
    ]
    for s, cell in zip(steps, cells, strict=True):
        lines.append(
            f"  {s['calls']:5d}  {s['cpu_ms_per_call_s']:9.2f}  "
            f"{s['cpu_ms_per_call_s_steady'] or 0:6.2f}  {s['bridge_cpu_pct_full'] or 0:5.1f}  "
            f"{s['rss_mb']:7.1f}  {s['rss_mb_per_call']:7.3f}  "
            f"{s['inbound_latency_ms'].get('p99', 0):6.2f}  "
            f"{s['outbound_latency_ms'].get('p99', 0):7.2f}  "
            f"{s['loop_lag_ms'].get('p99', 0):7.2f}  " + cell + ("held" if s["held"] else "FAILED")
        )
    return "\n".join(lines)


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """A small PNG of a sweep: bridge CPU per call-second, and relay p99 per direction,
    against calls (needs matplotlib: the ``sim`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    calls = [s["calls"] for s in steps]
    fig, (cost, lat) = plt.subplots(1, 2, figsize=(9, 3.4))
    cost.plot(calls, [s["cpu_ms_per_call_s"] for s in steps], "o-", label="whole run")
    cost.plot(
        calls, [s["cpu_ms_per_call_s_steady"] or 0 for s in steps], "s--", label="all calls up"
    )
    cost.set_xlabel("concurrent calls")
    cost.set_ylabel("bridge CPU, ms per call-second")
    cost.set_ylim(bottom=0)
    cost.legend()
    for key, label in (("inbound_latency_ms", "inbound"), ("outbound_latency_ms", "outbound")):
        lat.plot(calls, [s[key].get("p99", 0) for s in steps], "o-", label=f"{label} p99")
    lat.axhline(result["p99_limit_ms"], color="tab:red", linestyle=":", label="pass mark")
    lat.set_xlabel("concurrent calls")
    lat.set_ylabel("relay latency p99, ms")
    lat.set_ylim(bottom=0)
    lat.legend()
    fig.suptitle(
        f"voicebridge loadtest sweep ({result['seconds']:g} s calls, one core"
        f"{machine_probe.plot_text(steps)})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
