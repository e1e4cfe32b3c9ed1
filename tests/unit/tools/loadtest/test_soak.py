"""The pure parts of the soak checks: the fault plan, the log scans and the leak verdict,
without running a load test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voicebridge.tools.loadtest import soak


def test_plan_gives_a_seeded_share_of_calls_one_fault_each() -> None:
    faults = soak.parse_specs(list(soak.SOAK_FAULTS), soak.SOAK_SECONDS)
    plan = soak.plan_faults(100, faults, 0.3, seed=0)
    chosen = [f for f in plan if f is not None]
    assert len(plan) == 100 and len(chosen) == 30
    counts = {f.spec: sum(c is f for c in chosen) for f in faults}
    assert set(counts.values()) == {3, 4}  # 30 dealt round-robin over 8: every fault used
    assert plan == soak.plan_faults(100, faults, 0.3, seed=0)  # deterministic
    assert plan != soak.plan_faults(100, faults, 0.3, seed=1)
    assert soak.plan_faults(6, faults[:2], 0.5, seed=0).count(None) == 3
    assert soak.plan_faults(5, faults, 0.0, seed=0) == [None] * 5
    assert sum(f is not None for f in soak.plan_faults(3, faults, 0.01, seed=0)) == 1


def test_call_ids_are_seeded_distinct_uuids() -> None:
    ids = soak.call_ids(50, seed=3)
    assert len(set(ids)) == 50 and ids == soak.call_ids(50, seed=3)
    assert all(len(i) == 36 and i[14] == "4" for i in ids)


def test_parse_specs_rejects_faults_after_the_audio_ends() -> None:
    [drop] = soak.parse_specs(["voicelive-drop=3"], 8.0)
    assert (drop.name, drop.target, drop.value) == ("voicelive-drop", "voicelive", 3.0)
    assert drop.expected == soak.DEFAULT_EXPECTED
    with pytest.raises(ValueError, match="after its 8 s"):
        soak.parse_specs(["acs-reconnect=8"], 8.0)
    with pytest.raises(ValueError, match="unknown fault"):
        soak.parse_specs(["nope"], 8.0)
    # a duration, not a moment: allowed whatever the call length
    assert soak.parse_specs(["voicelive-stall-response=30"], 8.0)[0].value == 30.0
    [stall] = soak.parse_specs(["voicelive-stall-handshake"], 8.0)
    assert "apology_hangup" in stall.expected[0]


def _log(path: Path, *records: dict[str, Any]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_call_logs_takes_the_outcome_from_the_last_line(tmp_path: Path) -> None:
    _log(
        tmp_path / "20250101T000000Z-corr-1.jsonl",
        {"event": "counters", "counters": {"acs_frames_in": 5}},
        {"event": "call_ended", "outcome": "caller_hung_up"},
    )
    _log(tmp_path / "20250101T000000Z-corr-2.jsonl", {"event": "call_started"})
    logs = soak.read_call_logs(tmp_path)
    assert logs["corr-1"]["outcome"] == "caller_hung_up"
    assert logs["corr-1"]["counters"] == {"acs_frames_in": 5}
    assert logs["corr-2"]["outcome"] is None and logs["corr-2"]["last_event"] == "call_started"
    assert soak.read_call_logs(tmp_path / "missing") == {}


def test_scan_bridge_log_classifies_errors_by_the_calls_fault(tmp_path: Path) -> None:
    [drop] = soak.parse_specs(["voicelive-drop=3"], 8.0)
    sdk = "azure.ai.voicelive.aio._patch"
    lines = [
        {"level": "ERROR", "logger": sdk, "message": "Failed to send event: closing transport",
         "call_connection_id": "c1"},
        {"level": "ERROR", "logger": sdk, "message": "Failed to send event: closing transport",
         "call_connection_id": "c2"},
        {"level": "WARNING", "logger": "voicebridge.relay",
         "message": "call c1: Voice Live voicelive_closed (close code 1006): reconnecting",
         "call_connection_id": "c1"},
        {"level": "ERROR", "logger": "asyncio", "message": "Task exception was never retrieved",
         "exception": "Traceback (most recent call last):\n..."},
    ]  # fmt: skip
    path = tmp_path / "bridge.log"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nplain text\n")
    scan = soak.scan_bridge_log(path, {"c1": drop, "c2": None})
    assert scan["unhandled_count"] == 1 and "never retrieved" in scan["unhandled"][0]
    classes = {(g["message"], g["class"]): g["faults"] for g in scan["errors"]}
    kind = f"{sdk}: Failed to send event: closing transport"
    # the same message is explained in the faulted call and not in the other one
    assert classes == {
        (kind, "unexpected"): {"voicelive-drop=3": 1, "none": 1},
        ("asyncio: Task exception was never retrieved", "unexpected"): {"no call": 1},
    }
    assert scan["unexpected_errors"] == 3
    [warning] = scan["warnings"]
    assert warning["message"].endswith("(close code N): reconnecting") and warning["count"] == 1
    assert scan["non_json_lines"] == 1
    only_faulted = soak.scan_bridge_log(path, {"c1": drop, "c2": drop})
    assert [g["class"] for g in only_faulted["errors"]] == ["expected", "unexpected"]


def _probe(tasks: int, tcp: dict[str, int], blocks: int, calls: int = 0) -> dict[str, Any]:
    return {
        "t": 0.0,
        "tasks": tasks,
        "process": {"allocated_blocks": blocks},
        "fds": {"total": 10 + sum(tcp.values()), "kinds": {"socket": sum(tcp.values())},
                "tcp": tcp, "close_wait": 0},
        "rss_mb": 100.0,
        "census": {
            "objects": blocks // 4,
            "allocated_blocks": blocks,
            "by_type": {"voicebridge.calls.Call": calls, "builtins.dict": blocks // 10},
            "retained": {"finished_calls": {"items": 0, "objects": 0}},
        },
    }  # fmt: skip


def test_leak_report_passes_an_idle_process_and_names_what_is_left() -> None:
    before = _probe(4, {"listening": 1}, 100_000)
    same = {"at_settle": before, "final": before, "waited_s": 3.0}
    report = soak.leak_report(before, same, calls=10, peak_rss_mb=150.0)
    assert report["ok"] and report["rss_mb"]["returned_pct"] == 100.0
    assert report["rss_mb"]["allowed_above_idle"] == 5.0
    after = _probe(5, {"listening": 1, "to emulator (CLOSE_WAIT)": 2}, 200_000, calls=1)
    after["fds"]["close_wait"] = 2
    worse = soak.leak_report(
        before, {"at_settle": after, "final": after, "waited_s": 45.0}, calls=10, peak_rss_mb=150
    )
    assert not worse["tasks"]["ok"] and not worse["fds"]["ok"] and not worse["python"]["ok"]
    assert worse["fds"]["excess"] == {"to emulator (CLOSE_WAIT)": 2}
    assert worse["python"]["voicebridge_types_changed"] == {"voicebridge.calls.Call": 1}
    assert worse["call_state_retained"] == {"voicebridge.calls.Call": 1}
