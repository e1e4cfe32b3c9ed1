"""Caller scripts: what a caller recording says, and when.

A script is a JSON list of segments in the format of the shipped ``sim/data/caller.json``::

    [{"start_s": 4.26, "end_s": 7.712, "text": "Hi, I'd like to check on my order.",
      "barge_in": false}, ...]

``start_s``/``end_s`` are seconds from the start of the recording (any sample rate);
``text`` is what is said (a string, or null when unknown); other keys (``barge_in``, ...)
are kept as they are. A recording ``X.wav`` may have its script beside it as ``X.json``
(a *sidecar*): :func:`caller_script` finds and reads it. The emulator takes a script as
``VoiceLiveEmulator(caller_segments=...)`` and answers each caller turn with the text of
the segment its audio overlaps (see the emulator's package docstring).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["caller_script", "check_segments", "load_segments", "sidecar_path"]


def sidecar_path(wav_path: str | Path) -> Path:
    """Where the script of ``wav_path`` would be: the same name with ``.json``."""
    return Path(wav_path).with_suffix(".json")


def caller_script(wav_path: str | Path) -> list[dict[str, Any]] | None:
    """The segments of the sidecar ``X.json`` beside ``X.wav``, sorted by start; None when
    there is no sidecar. ``ValueError`` when the sidecar is not a valid script."""
    sidecar = sidecar_path(wav_path)
    if not sidecar.is_file():
        return None
    return load_segments(sidecar)


def load_segments(path: str | Path) -> list[dict[str, Any]]:
    """The segments of a script file (``ValueError`` if it is not JSON or not a script)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return check_segments(data, str(path))


def check_segments(data: Any, where: str = "caller script") -> list[dict[str, Any]]:
    """Validated copies of ``data``'s segments, sorted by ``start_s`` (stable).

    Each segment needs numbers ``0 <= start_s <= end_s`` and a ``text`` that is a string
    or null (a missing ``text`` is null)."""
    if not isinstance(data, Sequence) or isinstance(data, str | bytes):
        raise ValueError(f"{where}: expected a list of segments")
    segments: list[dict[str, Any]] = []
    for i, seg in enumerate(data):
        if not isinstance(seg, dict):
            raise ValueError(f"{where}[{i}]: expected an object")
        start, end = seg.get("start_s"), seg.get("end_s")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, end)):
            raise ValueError(f"{where}[{i}]: start_s and end_s must be numbers")
        assert isinstance(start, int | float) and isinstance(end, int | float)
        if not 0 <= start <= end:
            raise ValueError(f"{where}[{i}]: need 0 <= start_s <= end_s, got {start}, {end}")
        text = seg.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}[{i}]: text must be a string or null")
        segments.append({**seg, "start_s": float(start), "end_s": float(end), "text": text})
    return sorted(segments, key=lambda s: s["start_s"])
