"""``voicebridge loadtest`` as a user runs it: short real runs as a correctness check (never
a speed check), the option errors, and the ``--machine-probe`` switch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.tools.loadtest.reports import fake_run
from voicebridge.cli import main
from voicebridge.tools.loadtest import cli, machine_probe
from voicebridge.tools.loadtest.options import LoadOptions

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


def _assert_probed(report: dict[str, Any]) -> None:
    """What ``--machine-probe`` adds: the speed reference before and after the calls, and
    the speed probe during them."""
    speed = report["machine"]["speed_reference_ms"]
    assert speed.keys() == {"before", "after"}
    for ref in speed.values():
        assert ref["python_ms"] > 0 and ref["loopback_ms"] > 0
    probe = report["machine"]["speed_probe"]
    assert probe["count"] >= 1 and 0 < probe["fast_ms"] <= probe["p50_ms"] <= probe["max_ms"]
    assert 0.0 <= probe["slow_share"] <= 1.0
    assert any("probe_ms" in sample for sample in report["cpu_samples"])


def _assert_not_probed(report: dict[str, Any]) -> None:
    assert report["machine"].keys() == {"cpus", "cpu_model", "python", "pinned"}
    assert not any("probe_ms" in sample for sample in report["cpu_samples"])


def _no_machine_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make starting a machine-probe process (reference or probe) fail the test."""

    async def child(*_args: Any) -> None:
        raise AssertionError("the machine probe ran without --machine-probe")

    monkeypatch.setattr(machine_probe, "_child", child)


@pytest.mark.e2e
def test_short_loadtest_loses_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_machine_probe(monkeypatch)
    status, report = _run_json(capsys, "--calls", "3", "--seconds", "3", "--speed", "2")
    _assert_clean(report, 3)
    _assert_not_probed(report)
    assert status == 0
    assert report["mean_call_s"] >= 3.0  # the caller talks for 3 s, then waits for the agent
    _assert_no_children()


@pytest.mark.e2e
def test_machine_probe_times_the_machine_too(capsys: pytest.CaptureFixture[str]) -> None:
    """With --machine-probe, the same run also has the speed reference and probe, and
    still loses nothing (the probe never takes the bridge's CPU from it)."""
    status, report = _run_json(
        capsys, "--calls", "3", "--seconds", "3", "--speed", "2", "--machine-probe"
    )
    _assert_clean(report, 3)
    _assert_probed(report)
    assert status == 0
    _assert_no_children()


@pytest.mark.e2e
def test_two_generators_behind_the_acs_router(capsys: pytest.CaptureFixture[str]) -> None:
    """Calls placed by two fake ACS processes reach the bridge through one REST endpoint:
    answers, tokens and hang-ups all find the generator that owns the call."""
    status, report = _run_json(
        capsys, "--calls", "4", "--seconds", "2", "--speed", "2", "--generators", "2"
    )
    _assert_clean(report, 4)
    _assert_not_probed(report)
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


@pytest.mark.parametrize("flag", [False, True])
def test_machine_probe_only_with_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: bool
) -> None:
    """``--machine-probe`` reaches the run, and only its report shows the machine's speed,
    in the text and in the JSON."""
    seen: list[bool] = []

    async def run_load(options: LoadOptions) -> dict[str, Any]:
        seen.append(options.machine_probe)
        return fake_run(probed=options.machine_probe)

    monkeypatch.setattr(cli, "run_load", run_load)
    args = ["loadtest", "--calls", "2", "--seconds", "2"] + (["--machine-probe"] if flag else [])
    assert main(args) == 0
    text = capsys.readouterr().out
    assert ("speed reference python/loopback ms" in text) is flag
    assert ("the probe ran slow" in text) is flag
    status, report = _run_json(capsys, *args[1:])
    assert status == 0
    assert ("speed_reference_ms" in report["machine"]) is flag
    assert ("speed_probe" in report["machine"]) is flag
    assert seen == [flag, flag]
