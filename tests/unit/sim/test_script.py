"""Caller scripts: the sidecar beside a recording, and what a valid script is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voicebridge.sim.script import caller_script, check_segments, load_segments, sidecar_path


def test_a_sidecar_beside_the_wav_is_read_sorted(tmp_path: Path) -> None:
    wav = tmp_path / "call.wav"
    wav.write_bytes(b"")  # only its name matters
    assert caller_script(wav) is None
    segments = [
        {"start_s": 3, "end_s": 4.5, "text": "Bye.", "barge_in": False},
        {"start_s": 0.5, "end_s": 1.25, "text": "I need a person."},
    ]
    sidecar_path(wav).write_text(json.dumps(segments))
    assert sidecar_path(wav) == tmp_path / "call.json"
    script = caller_script(wav)
    assert script == [
        {"start_s": 0.5, "end_s": 1.25, "text": "I need a person."},
        {"start_s": 3.0, "end_s": 4.5, "text": "Bye.", "barge_in": False},
    ]


def test_the_shipped_caller_json_is_a_valid_script() -> None:
    shipped = Path(__file__).parents[3] / "src/voicebridge/sim/data/caller.json"
    segments = load_segments(shipped)
    assert len(segments) == 4 and all(isinstance(s["text"], str) for s in segments)


@pytest.mark.parametrize(
    "data",
    [
        {"start_s": 0, "end_s": 1},
        [["not", "an", "object"]],
        [{"start_s": 0}],
        [{"start_s": 2, "end_s": 1}],
        [{"start_s": -1, "end_s": 1}],
        [{"start_s": True, "end_s": 1}],
        [{"start_s": 0, "end_s": 1, "text": 5}],
    ],
)
def test_bad_scripts_are_refused(data: Any) -> None:
    with pytest.raises(ValueError):
        check_segments(data)


def test_a_sidecar_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(ValueError, match="not JSON"):
        caller_script(tmp_path / "x.wav")
