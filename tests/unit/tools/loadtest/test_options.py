"""The call plan: starts spread over the ramp, phases over the recording, round-robin."""

from __future__ import annotations

import pytest

from voicebridge.tools.loadtest.options import LoadOptions, call_plan


def test_call_plan_spreads_starts_and_phases_round_robin() -> None:
    options = LoadOptions(calls=5, seconds=20, ramp_s=4.0, generators=2)
    plan = call_plan(options)
    assert [len(p) for p in plan] == [3, 2]
    flat = sorted((c for p in plan for c in p), key=lambda c: c["index"])
    assert [c["start_s"] for c in flat] == pytest.approx([0, 0.8, 1.6, 2.4, 3.2])
    assert [c["phase"] for c in flat] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert LoadOptions(seconds=8).ramp == 2.0  # default: a quarter, at most 5 s
    assert LoadOptions(seconds=60).ramp == 5.0
