"""``--find-max`` and ``--sweep`` over made-up runs: the search order, the retries on a
noisy machine, the cap, and the sweep's table and plot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.unit.tools.loadtest.reports import fake_run, step
from voicebridge.tools.loadtest import search
from voicebridge.tools.loadtest.options import LoadOptions


def test_find_max_doubles_then_bisects(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[int] = []

    async def fake_run_load(options: LoadOptions) -> dict[str, Any]:
        tried.append(options.calls)
        return step(options.calls, held=options.calls <= 70)

    monkeypatch.setattr(search, "run_load", fake_run_load)
    result = asyncio.run(search.find_max(LoadOptions(calls=25), cap=320))
    assert tried[:3] == [25, 50, 100]  # doubling until the first failure
    assert result["max_calls"] <= 70 < result["first_failed_calls"]
    assert result["first_failed_calls"] - result["max_calls"] <= max(2, result["max_calls"] // 10)
    assert result["limited_by"] == "bridge"


def test_find_max_reruns_a_step_failed_on_a_noisy_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: dict[int, int] = {}

    async def fake_run_load(options: LoadOptions) -> dict[str, Any]:
        n = options.calls
        attempts[n] = attempts.get(n, 0) + 1
        if n == 20 and attempts[n] == 1:  # someone else's job took the CPU
            return step(n, held=False, noisy=True)
        return step(n, held=n <= 20)

    monkeypatch.setattr(search, "run_load", fake_run_load)
    result = asyncio.run(search.find_max(LoadOptions(calls=10), cap=40))
    assert attempts[20] == 2
    assert result["max_calls"] == 20
    assert result["first_failed_calls"] == 22  # bisected down to a gap of 2 calls


def test_find_max_stops_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_run_load(options: LoadOptions) -> dict[str, Any]:
        return step(options.calls, held=True)

    monkeypatch.setattr(search, "run_load", fake_run_load)
    result = asyncio.run(search.find_max(LoadOptions(calls=30), cap=100))
    assert [s["calls"] for s in result["steps"]] == [30, 60, 100]
    assert result["max_calls"] == 100 and result["limited_by"] == "--max-calls 100"


def test_find_max_text_says_how_slow_the_machine_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_run_load(options: LoadOptions) -> dict[str, Any]:
        report = step(options.calls, held=options.calls <= 40)
        report["machine"] = {"speed_probe": {"slow_share": options.calls / 200}}
        return report

    monkeypatch.setattr(search, "run_load", fake_run_load)
    monkeypatch.setattr(search, "format_report", lambda _report: "")
    result = asyncio.run(search.find_max(LoadOptions(calls=20), cap=100))
    text = search.format_find_max(result)
    assert "max calls held: 40" in text
    assert [s["calls"] for s in result["steps"]] == [20, 40, 80, 60, 50, 45, 42]
    assert "the CPU itself ran slow in 10-40 % of each step's seconds" in text
    # Without the probe (a machine without it, or an old report) the line is left out.
    for report in result["steps"]:
        report["machine"] = {}
    assert "ran slow" not in search.format_find_max(result)


def test_sweep_table_and_plot_from_reports(tmp_path: Path) -> None:
    steps = []
    for calls in (2, 4):
        report = fake_run() | {"calls": calls}
        steps.append({k: report[k] for k in search.SWEEP_KEYS})
    result = {"seconds": 2.0, "p99_limit_ms": 10.0, "steps": steps}
    lines = search.format_sweep(result).splitlines()
    assert lines[0].split()[:2] == ["calls", "ms/call-s"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "4"]
    assert all(line.endswith("held") for line in lines[1:])
    png = tmp_path / "sweep.png"
    search.plot_sweep(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_and_step_lines_say_how_slow_the_cpu_ran_only_with_the_probe() -> None:
    def sweep_of(probed: bool) -> dict[str, Any]:
        report = fake_run(probed=probed)
        return {
            "seconds": 2.0,
            "p99_limit_ms": 10.0,
            "steps": [{k: report[k] for k in search.SWEEP_KEYS}],
        }

    plain = search.format_sweep(sweep_of(False)).splitlines()
    assert "CPU slow" not in plain[0] and plain[0].endswith("lag p99  verdict")
    assert plain[1].split()[-2:] == ["2.00", "held"]  # lag p99, then the verdict
    assert "CPU slow" not in search._step_line(fake_run())

    probed = search.format_sweep(sweep_of(True)).splitlines()
    assert probed[0].endswith("lag p99  CPU slow  verdict")
    assert probed[1].endswith("     50 %  held")
    assert search._step_line(fake_run(probed=True)).endswith("CPU slow 50 % of s")
