"""A run's report from hand-made counters: conservation arithmetic and the verdict."""

from __future__ import annotations

from tests.unit.tools.loadtest.reports import fake_run
from voicebridge.tools.loadtest.text import format_report


def test_summarise_balanced_counters_hold() -> None:
    report = fake_run()
    assert report["frames_lost"] == report["samples_lost"] == report["calls_failed"] == 0
    assert report["held"] and report["load_side_ok"]
    assert report["call_seconds"] == 4.0  # 200 frames x 20 ms
    assert report["cpu_ms_per_call_s"] == 50.0  # 0.2 CPU s over 4 call-s
    assert report["rss_mb_per_call"] == 10.0  # (100 - 80) / 2
    assert "held" in format_report(report)


def test_summarise_one_missing_frame_fails_the_run() -> None:
    report = fake_run(lost_frame=True)
    assert report["conservation"]["caller_to_bridge_frames"]["lost"] == 1
    assert report["frames_lost"] == 1
    assert report["samples_lost"] == 320
    assert not report["held"]
    assert "NOT held" in format_report(report)
