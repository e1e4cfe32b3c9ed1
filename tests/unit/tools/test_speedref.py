"""The load test's speed reference: a fixed workload, timed."""

from __future__ import annotations

import json
import os

import pytest

from voicebridge.tools import speedref


def test_measure_times_both_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedref, "PYTHON_LOOPS", 2_000)
    monkeypatch.setattr(speedref, "ROUND_TRIPS", 50)
    ref = speedref.measure()
    assert ref.keys() == {"python_ms", "loopback_ms"}
    assert ref["python_ms"] > 0 and ref["loopback_ms"] > 0


def test_main_prints_one_json_object_and_pins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(speedref, "PYTHON_LOOPS", 2_000)
    monkeypatch.setattr(speedref, "ROUND_TRIPS", 50)
    before = os.sched_getaffinity(0)
    cpu = min(before)
    try:
        assert speedref.main(["--cpu", str(cpu)]) == 0
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        os.sched_setaffinity(0, before)
    ref = json.loads(capsys.readouterr().out)
    assert ref["python_ms"] > 0 and ref["loopback_ms"] > 0


def test_probe_prints_one_line_per_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(speedref, "PROBE_LOOPS", 500)
    speedref.probe(interval_s=0.001, count=3)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert all(line["ms"] > 0 for line in lines)
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines)
