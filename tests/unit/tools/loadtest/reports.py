"""Hand-made load-test reports for the tests of the report, its text and the searches."""

from __future__ import annotations

from typing import Any

from voicebridge.tools.loadtest.machine_probe import MachineProbe
from voicebridge.tools.loadtest.options import LoadOptions
from voicebridge.tools.loadtest.report import summarise


def probe_fields(samples: list[dict[str, Any]], calls: int) -> dict[str, Any]:
    """What ``--machine-probe`` adds to ``machine``: a reference of 60 ms (3 ms at the
    probe's size) and four probes, two of them slow (over 1.4 x 3 ms)."""
    probe = MachineProbe(None)
    probe.speed = {
        "before": {"python_ms": 60.0, "loopback_ms": 50.0},
        "after": {"python_ms": 61.0, "loopback_ms": 52.0},
    }
    probe.probes = [(0.5, 3.1), (1.5, 5.2), (2.5, 3.0), (3.5, 4.5)]
    return probe.fields(samples, calls)


def fake_run(lost_frame: bool = False, probed: bool = False) -> dict[str, Any]:
    """summarise() over hand-made counters: 2 calls of 100 frames each; ``probed``: as
    with ``--machine-probe`` (:func:`probe_fields`)."""
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
    samples: list[dict[str, Any]] = [{"t": 1.0, "cpu_pct": 8.0, "active": 2}]
    return summarise(
        LoadOptions(calls=2, seconds=2, machine_probe=probed),
        stats=stats,
        generators=[generator],
        emulator=emulator,
        cpu={"bridge": 0.2, "emulator": 0.1, "generator-0": 0.1, "orchestrator": 0.0},
        wall_s=2.5,
        memory={"idle": {"rss": 80.0, "hwm": 80.0}, "end": {"rss": 90.0, "hwm": 100.0}},
        samples=samples,
        contention={
            "bridge_runqueue_wait_s": 0.0,
            "machine_tasks_s": 0.5,
            "machine_irq_s": 0.0,
            "machine_steal_s": 0.0,
            "bridge_cpu_tasks_s": 0.2,
        },
        pinned={"bridge": [1], "load": [0]},
        machine=probe_fields(samples, 2) if probed else None,
    )


def step(calls: int, held: bool, noisy: bool = False) -> dict[str, Any]:
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
