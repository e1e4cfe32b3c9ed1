"""A run's report from hand-made counters: conservation arithmetic and the verdict."""

from __future__ import annotations

from tests.unit.tools.loadtest.reports import fake_run
from voicebridge.tools.loadtest.text import format_report

#: What ``machine`` holds in every report; ``--machine-probe`` adds the rest.
MACHINE = {"cpus", "cpu_model", "python", "pinned"}
PROBE_ONLY = {"speed_reference_ms", "speed_probe"}


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


def test_the_machine_probe_fields_only_with_the_probe() -> None:
    plain = fake_run()
    assert plain["machine"].keys() == MACHINE
    assert not any("probe_ms" in sample for sample in plain["cpu_samples"])
    machine_line = next(line for line in format_report(plain).splitlines() if "machine" in line)
    assert machine_line.endswith("bridge pinned to CPU 1, the rest on the others")

    probed = fake_run(probed=True)
    assert probed["machine"].keys() == MACHINE | PROBE_ONLY
    assert probed["machine"]["speed_probe"]["slow_share"] == 0.5
    assert probed["cpu_samples"][0]["probe_ms"] == 3.1
    text = format_report(probed)
    assert "; speed reference python/loopback ms before 60.0/50.0, after 61.0/52.0" in text
    assert "; during the calls the probe ran slow (> 1.4 x 3.00 ms) in 50 % of 4 seconds" in text
    assert "the bridge used 8.0 % of a core in its 1 fast second" in text
    # Everything else is the same report.
    assert {k: v for k, v in probed.items() if k not in ("machine", "cpu_samples")} == {
        k: v for k, v in plain.items() if k not in ("machine", "cpu_samples")
    }
