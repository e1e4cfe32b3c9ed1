"""The machine probe: the speed reference (a fixed workload, timed), the speed probe, and
what they add to a report."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from voicebridge.tools.loadtest import machine_probe


def test_measure_times_both_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_probe, "PYTHON_LOOPS", 2_000)
    monkeypatch.setattr(machine_probe, "ROUND_TRIPS", 50)
    ref = machine_probe.measure()
    assert ref.keys() == {"python_ms", "loopback_ms"}
    assert ref["python_ms"] > 0 and ref["loopback_ms"] > 0


def test_main_prints_one_json_object_and_pins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(machine_probe, "PYTHON_LOOPS", 2_000)
    monkeypatch.setattr(machine_probe, "ROUND_TRIPS", 50)
    before = os.sched_getaffinity(0)
    cpu = min(before)
    try:
        assert machine_probe.main(["--cpu", str(cpu)]) == 0
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        os.sched_setaffinity(0, before)
    ref = json.loads(capsys.readouterr().out)
    assert ref["python_ms"] > 0 and ref["loopback_ms"] > 0


def test_probe_prints_one_line_per_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(machine_probe, "PROBE_LOOPS", 500)
    machine_probe.probe(interval_s=0.001, count=3)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert all(line["ms"] > 0 for line in lines)
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines)


def test_probe_summary_counts_slow_seconds_against_the_reference() -> None:
    # The reference's loop scaled to the probe's size: 60 ms * 15 000 / 300 000 = 3 ms.
    speed = {"before": {"python_ms": 60.0, "loopback_ms": 50.0}}
    probes = [(0.5, 3.1), (1.5, 5.2), (2.5, 3.0), (3.5, 4.5)]
    samples: list[dict[str, Any]] = [{"t": 1.0}, {"t": 2.0}, {"t": 3.0}, {"t": 4.0}, {"t": 5.0}]
    summary = machine_probe.probe_summary(probes, samples, speed)
    assert summary["fast_ms"] == 3.0
    assert summary["count"] == 4
    assert summary["slow_share"] == 0.5  # 5.2 and 4.5 are over 1.4 x 3 ms
    assert summary["max_ms"] == 5.2
    assert [s.get("probe_ms") for s in samples] == [3.1, 5.2, 3.0, 4.5, None]
    # Without a reference the fastest probe is the yardstick; without probes, nothing.
    assert machine_probe.probe_summary(probes, [], {})["fast_ms"] == 3.0
    assert machine_probe.probe_summary([], samples, speed) == {}
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
    summary = machine_probe.probe_summary(probes, samples, {}, calls=10)
    assert summary["full_fast"] == {"seconds": 2, "cpu_pct": 72.0}
    assert summary["full_slow"] == {"seconds": 2, "cpu_pct": 88.0}
    text = machine_probe.probe_text(summary)
    assert "72.0 % of a core in its 2 fast seconds and 88.0 % of a core in its 2 slow" in text
    # No second with every call up: the parts are there, empty, and the text says nothing.
    none = machine_probe.probe_summary(probes, samples, {}, calls=50)
    assert none["full_fast"] == {"seconds": 0, "cpu_pct": None}
    assert "all calls up" not in machine_probe.probe_text(none)
