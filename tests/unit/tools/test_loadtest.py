"""``voicebridge loadtest``: a short real run as a correctness check (never a speed check),
plus the pure parts — call plan, caller audio, conservation arithmetic — without processes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voicebridge.cli import main
from voicebridge.tools import loadgen, loadtest

REQUIRED = (
    "calls",
    "seconds",
    "cpu_s_per_call_s",
    "rss_mb",
    "inbound_latency_ms",
    "outbound_latency_ms",
    "loop_lag_ms",
    "frames_lost",
    "calls_failed",
)


def _run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    status = main(["loadtest", *args, "--json"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one JSON object"
    return status, json.loads(lines[0])


def _assert_clean(report: dict[str, Any], calls: int) -> None:
    for key in REQUIRED:
        assert key in report, key
    for direction in ("inbound_latency_ms", "outbound_latency_ms"):
        assert {"p50", "p99"} <= report[direction].keys()
        assert report[direction]["count"] > 0
    assert "p99" in report["loop_lag_ms"]
    assert report["calls"] == calls
    assert report["failures"] == []
    assert report["calls_failed"] == 0
    assert report["frames_lost"] == 0
    assert report["samples_lost"] == 0
    assert report["calls_not_conserved"] == 0
    assert report["calls_by_outcome"] == {"caller_hung_up": calls}
    for link, counts in report["conservation"].items():
        assert counts["lost"] == 0, link
        assert counts["sent"] > 0, link
    assert report["voicelive"]["sessions"] == calls
    assert report["voicelive"]["errors"] == {}
    assert report["cpu_s_per_call_s"] > 0
    assert report["rss_mb"] >= report["rss_mb_idle"] > 0
    assert report["load_side"]["emulator_rss_mb"] > 0
    speed = report["machine"]["speed_reference_ms"]
    assert speed.keys() == {"before", "after"}
    for ref in speed.values():
        assert ref["python_ms"] > 0 and ref["loopback_ms"] > 0
    probe = report["machine"]["speed_probe"]
    assert probe["count"] >= 1 and 0 < probe["fast_ms"] <= probe["p50_ms"] <= probe["max_ms"]
    assert 0.0 <= probe["slow_share"] <= 1.0
    assert any("probe_ms" in sample for sample in report["cpu_samples"])


@pytest.mark.e2e
def test_short_loadtest_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    status, report = _run_json(capsys, "--calls", "3", "--seconds", "3", "--speed", "2")
    _assert_clean(report, 3)
    assert status == 0
    assert report["mean_call_s"] >= 3.0  # the caller talks for 3 s, then waits for the agent
    _assert_no_children()


@pytest.mark.e2e
def test_two_generators_behind_the_acs_router(capsys: pytest.CaptureFixture[str]) -> None:
    """Calls placed by two fake ACS processes reach the bridge through one REST endpoint:
    answers, tokens and hang-ups all find the generator that owns the call."""
    status, report = _run_json(
        capsys, "--calls", "4", "--seconds", "2", "--speed", "2", "--generators", "2"
    )
    _assert_clean(report, 4)
    assert status == 0
    assert len(report["load_side"]["generator_cpu_pct"]) == 2
    _assert_no_children()


@pytest.mark.e2e
def test_soak_preset_small(capsys: pytest.CaptureFixture[str]) -> None:
    """The soak in small: half of 6 calls get a Voice Live drop or an ACS media reconnect
    mid-call; every call still ends with the caller hanging up, nothing is lost, every
    call's log ends with its outcome, nothing is logged as unhandled, and the bridge's
    tasks and sockets are back to their idle figures after the calls."""
    status, report = _run_json(
        capsys,
        "--calls", "6",
        "--seconds", "8",
        "--speed", "2",
        "--fault", "voicelive-drop=3",
        "--fault", "acs-reconnect=4",
        "--fault-fraction", "0.5",
    )  # fmt: skip
    faults = report["faults"]
    assert faults["faulted_calls"] == 3
    assert {spec: (len(v["calls"]), v["fired"]) for spec, v in faults["by_fault"].items()} == {
        "voicelive-drop=3": (2, 2),
        "acs-reconnect=4": (1, 1),
    }
    assert report["voicelive_reconnects"] == 2  # one per dropped session, none more
    assert report["calls_failed"] == 0 and report["failures"] == []
    assert report["frames_lost"] == report["samples_lost"] == 0
    assert report["calls_not_conserved"] == 0
    for link, counts in report["conservation"].items():  # the calls without a fault
        assert counts["lost"] == 0 and counts["sent"] > 0, link
    assert report["calls_by_outcome"] == {"caller_hung_up": 6}
    logs = report["call_logs"]
    assert logs["files"] == 6 and logs["not_ending_with_call_ended"] == []
    assert logs["outcomes"] == {"caller_hung_up": 6} and logs["match_api_stats"]
    assert report["bridge_log"]["unhandled_count"] == 0
    assert report["bridge_log"]["unexpected_errors"] == 0
    leaks = report["leaks"]
    assert leaks["tasks"]["ok"], leaks["tasks"]
    assert leaks["tasks"]["after"] == leaks["tasks"]["before"]
    assert leaks["fds"]["ok"], leaks["fds"]
    checks = dict(report["soak"]["checks"])
    assert all(checks.values()), checks  # incl. no finished call's state still reachable
    assert status == 0
    _assert_no_children()


def _assert_no_children() -> None:
    """Nothing the run started is still alive as a child of this process."""
    mine = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and _ppid(int(pid)) == os.getpid() and "voicebridge" in _cmdline(pid)
    ]
    assert mine == []


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize(
    "args",
    [["--calls", "0"], ["--seconds", "0"], ["--env", "NOEQUALS"], ["--generators", "0"]],
)
def test_bad_options_exit_2(args: list[str]) -> None:
    assert main(["loadtest", *args]) == 2


# --------------------------------------------------------------------------- pure parts


def test_call_plan_spreads_starts_and_phases_round_robin() -> None:
    options = loadtest.LoadOptions(calls=5, seconds=20, ramp_s=4.0, generators=2)
    plan = loadtest.call_plan(options)
    assert [len(p) for p in plan] == [3, 2]
    flat = sorted((c for p in plan for c in p), key=lambda c: c["index"])
    assert [c["start_s"] for c in flat] == pytest.approx([0, 0.8, 1.6, 2.4, 3.2])
    assert [c["phase"] for c in flat] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert loadtest.LoadOptions(seconds=8).ramp == 2.0  # default: a quarter, at most 5 s
    assert loadtest.LoadOptions(seconds=60).ramp == 5.0


def test_call_audio_loops_from_its_phase_on_frame_boundaries() -> None:
    track = np.arange(1000, dtype="<i2")
    pcm = np.frombuffer(loadgen.call_audio(track, 0.15, 16000, 0.5), dtype="<i2")
    assert len(pcm) == 2400  # 0.15 s at 16 kHz: longer than the track, so it loops
    assert pcm[0] == 320  # half way is sample 500, rounded down to a 320-sample frame
    assert pcm[679] == 999 and pcm[680] == 0  # end of the track, then round again


def _fake_run(lost_frame: bool = False) -> dict[str, Any]:
    """summarise() over hand-made counters: 2 calls of 100 frames each."""
    call = {
        "index": 0,
        "failure": None,
        "acs_rate": 16000,
        "frame_samples": 320,
        "frames_sent": 100,
        "received_frames": 40,
        "received_samples": 40 * 320,
        "samples_heard": 30 * 320,
        "samples_flushed": 10 * 320,
        "samples_queued_at_end": 0,
        "stop_audio": 1,
        "underrun_frames": 0,
    }
    health = {"loop_lag_ms": {"p99": 1.0, "max": 2.0}, "gc_pause_ms": {"p99": 0.5, "max": 1.0}}
    generator = {
        "calls": [call, call | {"index": 1}],
        **health,
        "send_slip_ms": {"p99": 0.2, "max": 1.0},
        "internal_errors": [],
    }
    counters = {
        "acs_frames_in": 200 - lost_frame,
        "caller_samples_in": 200 * 320 - 320 * lost_frame,
        "voicelive_samples_appended": 200 * 480,
        "agent_samples_in": 12345,
        "acs_frames_out": 80,
    }
    stats = {
        "calls_by_outcome": {"caller_hung_up": 2},
        "calls_not_conserved": 0,
        "counters": counters,
        "relay_latency_ms": {
            "inbound": {"count": 200, "p50": 0.1, "p99": 0.5, "max": 1.0},
            "outbound": {"count": 80, "p50": 0.2, "p99": 3.0, "max": 5.0},
        },
        "loop_lag_ms": {"count": 9, "p50": 0.1, "p99": 2.0, "max": 3.0},
    }
    emulator = {
        "sessions": 2,
        "input_samples": 200 * 480,
        "output_samples": 12345,
        "responses": {"completed": 2},
        "errors": {},
        "close_codes": {"1000": 2},
        **health,
    }
    return loadtest.summarise(
        loadtest.LoadOptions(calls=2, seconds=2),
        stats=stats,
        generators=[generator],
        emulator=emulator,
        cpu={"bridge": 0.2, "emulator": 0.1, "generator-0": 0.1, "orchestrator": 0.0},
        wall_s=2.5,
        memory={"idle": {"rss": 80.0, "hwm": 80.0}, "end": {"rss": 90.0, "hwm": 100.0}},
        samples=[{"t": 1.0, "cpu_pct": 8.0, "active": 2}],
        contention={
            "bridge_runqueue_wait_s": 0.0,
            "machine_tasks_s": 0.5,
            "machine_irq_s": 0.0,
            "machine_steal_s": 0.0,
            "bridge_cpu_tasks_s": 0.2,
        },
        pinned={"bridge": [1], "load": [0]},
    )


def test_summarise_balanced_counters_hold() -> None:
    report = _fake_run()
    assert report["frames_lost"] == report["samples_lost"] == report["calls_failed"] == 0
    assert report["held"] and report["load_side_ok"]
    assert report["call_seconds"] == 4.0  # 200 frames x 20 ms
    assert report["cpu_ms_per_call_s"] == 50.0  # 0.2 CPU s over 4 call-s
    assert report["rss_mb_per_call"] == 10.0  # (100 - 80) / 2
    assert "held" in loadtest.format_report(report)


def test_summarise_one_missing_frame_fails_the_run() -> None:
    report = _fake_run(lost_frame=True)
    assert report["conservation"]["caller_to_bridge_frames"]["lost"] == 1
    assert report["frames_lost"] == 1
    assert report["samples_lost"] == 320
    assert not report["held"]
    assert "NOT held" in loadtest.format_report(report)


def _step(calls: int, held: bool, noisy: bool = False) -> dict[str, Any]:
    """The parts of a run report that find_max reads."""
    latency = {"p50": 0.1, "p99": 1.0 if held else 50.0, "max": 60.0}
    return {
        "calls": calls,
        "held": held,
        "p99_limit_ms": 10.0,
        "inbound_latency_ms": latency,
        "outbound_latency_ms": latency,
        "loop_lag_ms": latency,
        "frames_lost": 0,
        "samples_lost": 0,
        "calls_not_conserved": 0,
        "calls_failed": 0,
        "load_side_ok": True,
        "contention": {"noisy": noisy},
        "cpu_ms_per_call_s": 9.0,
        "bridge_cpu_pct_full": 50.0,
        "bridge_cpu_pct": 40.0,
        "machine": {},
    }


def test_find_max_doubles_then_bisects(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[int] = []

    async def fake_run(options: loadtest.LoadOptions) -> dict[str, Any]:
        tried.append(options.calls)
        return _step(options.calls, held=options.calls <= 70)

    monkeypatch.setattr(loadtest, "run_load", fake_run)
    result = asyncio.run(loadtest.find_max(loadtest.LoadOptions(calls=25), cap=320))
    assert tried[:3] == [25, 50, 100]  # doubling until the first failure
    assert result["max_calls"] <= 70 < result["first_failed_calls"]
    assert result["first_failed_calls"] - result["max_calls"] <= max(2, result["max_calls"] // 10)
    assert result["limited_by"] == "bridge"


def test_find_max_reruns_a_step_failed_on_a_noisy_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: dict[int, int] = {}

    async def fake_run(options: loadtest.LoadOptions) -> dict[str, Any]:
        n = options.calls
        attempts[n] = attempts.get(n, 0) + 1
        if n == 20 and attempts[n] == 1:  # someone else's job took the CPU
            return _step(n, held=False, noisy=True)
        return _step(n, held=n <= 20)

    monkeypatch.setattr(loadtest, "run_load", fake_run)
    result = asyncio.run(loadtest.find_max(loadtest.LoadOptions(calls=10), cap=40))
    assert attempts[20] == 2
    assert result["max_calls"] == 20
    assert result["first_failed_calls"] == 22  # bisected down to a gap of 2 calls


def test_find_max_stops_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_run(options: loadtest.LoadOptions) -> dict[str, Any]:
        return _step(options.calls, held=True)

    monkeypatch.setattr(loadtest, "run_load", fake_run)
    result = asyncio.run(loadtest.find_max(loadtest.LoadOptions(calls=30), cap=100))
    assert [s["calls"] for s in result["steps"]] == [30, 60, 100]
    assert result["max_calls"] == 100 and result["limited_by"] == "--max-calls 100"


def test_find_max_text_says_how_slow_the_machine_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_run(options: loadtest.LoadOptions) -> dict[str, Any]:
        step = _step(options.calls, held=options.calls <= 40)
        step["machine"] = {"speed_probe": {"slow_share": options.calls / 200}}
        return step

    monkeypatch.setattr(loadtest, "run_load", fake_run)
    monkeypatch.setattr(loadtest, "format_report", lambda _report: "")
    result = asyncio.run(loadtest.find_max(loadtest.LoadOptions(calls=20), cap=100))
    text = loadtest.format_find_max(result)
    assert "max calls held: 40" in text
    assert [s["calls"] for s in result["steps"]] == [20, 40, 80, 60, 50, 45, 42]
    assert "the CPU itself ran slow in 10-40 % of each step's seconds" in text
    # Without the probe (a machine without it, or an old report) the line is left out.
    for step in result["steps"]:
        step["machine"] = {}
    assert "ran slow" not in loadtest.format_find_max(result)


def test_probe_summary_counts_slow_seconds_against_the_reference() -> None:
    # The reference's loop scaled to the probe's size: 60 ms * 15 000 / 300 000 = 3 ms.
    speed = {"before": {"python_ms": 60.0, "loopback_ms": 50.0}}
    probes = [(0.5, 3.1), (1.5, 5.2), (2.5, 3.0), (3.5, 4.5)]
    samples: list[dict[str, Any]] = [{"t": 1.0}, {"t": 2.0}, {"t": 3.0}, {"t": 4.0}, {"t": 5.0}]
    summary = loadtest.probe_summary(probes, samples, speed)
    assert summary["fast_ms"] == 3.0
    assert summary["count"] == 4
    assert summary["slow_share"] == 0.5  # 5.2 and 4.5 are over 1.4 x 3 ms
    assert summary["max_ms"] == 5.2
    assert [s.get("probe_ms") for s in samples] == [3.1, 5.2, 3.0, 4.5, None]
    # Without a reference the fastest probe is the yardstick; without probes, nothing.
    assert loadtest.probe_summary(probes, [], {})["fast_ms"] == 3.0
    assert loadtest.probe_summary([], samples, speed) == {}
    assert "full_fast" not in summary  # only when told how many calls make "all up"


def test_probe_summary_splits_the_full_seconds_by_the_probe() -> None:
    probes = [(0.5, 3.0), (1.5, 5.2), (2.5, 3.1), (3.5, 4.5), (4.5, 6.0)]
    samples: list[dict[str, Any]] = [
        {"t": 1.0, "active": 10, "cpu_pct": 70.0},
        {"t": 2.0, "active": 10, "cpu_pct": 90.0},  # slow second
        {"t": 3.0, "active": 10, "cpu_pct": 74.0},
        {"t": 4.0, "active": 10, "cpu_pct": 86.0},  # slow second
        {"t": 5.0, "active": 6, "cpu_pct": 50.0},  # slow, but calls were hanging up
        {"t": 6.0, "active": 10, "cpu_pct": 99.0},  # no probe in that second
    ]
    summary = loadtest.probe_summary(probes, samples, {}, calls=10)
    assert summary["full_fast"] == {"seconds": 2, "cpu_pct": 72.0}
    assert summary["full_slow"] == {"seconds": 2, "cpu_pct": 88.0}
    text = loadtest._probe_text(summary)
    assert "72.0 % of a core in its 2 fast seconds and 88.0 % of a core in its 2 slow" in text
    # No second with every call up: the parts are there, empty, and the text says nothing.
    none = loadtest.probe_summary(probes, samples, {}, calls=50)
    assert none["full_fast"] == {"seconds": 0, "cpu_pct": None}
    assert "all calls up" not in loadtest._probe_text(none)


# --------------------------------------------------------------------------- sweep


@pytest.mark.e2e
def test_sweep_runs_each_count_and_plots(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "sweep.png"
    status, result = _run_json(
        capsys, "--sweep", "1,2", "--seconds", "2", "--speed", "2", "--plot", str(png)
    )
    assert status == 0
    assert [s["calls"] for s in result["steps"]] == [1, 2]
    for step in result["steps"]:
        assert step["frames_lost"] == step["calls_failed"] == 0
        assert step["cpu_ms_per_call_s"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _assert_no_children()


def test_sweep_table_and_plot_from_reports(tmp_path: Path) -> None:
    steps = []
    for calls in (2, 4):
        report = _fake_run() | {"calls": calls}
        steps.append({k: report[k] for k in loadtest.SWEEP_KEYS})
    result = {"seconds": 2.0, "p99_limit_ms": 10.0, "steps": steps}
    lines = loadtest.format_sweep(result).splitlines()
    assert lines[0].split()[:2] == ["calls", "ms/call-s"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "4"]
    assert all(line.endswith("held") for line in lines[1:])
    png = tmp_path / "sweep.png"
    loadtest.plot_sweep(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--sweep", "2", "--find-max"],
        ["--sweep", "2", "--soak"],
        ["--plot", "x.png"],
    ],
)
def test_sweep_option_conflicts_exit_2(args: list[str]) -> None:
    assert main(["loadtest", *args]) == 2


@pytest.mark.parametrize("value", ["0", "a,b", "", "3,-1"])
def test_sweep_counts_must_be_positive_integers(value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["loadtest", "--sweep", value])
    assert exc.value.code == 2
