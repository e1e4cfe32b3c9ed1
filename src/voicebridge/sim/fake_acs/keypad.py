"""The caller's keypad: key presses (DTMF) scheduled on the media clock.

``place_call(..., dtmf=[(at_s, "1234#"), ...])`` (and ``expect_outbound(..., dtmf=...)`` for
a callee) makes the caller press each key of ``"1234#"`` :data:`KEY_GAP_S` apart from call
time ``at_s`` on. Each key becomes one ``DtmfData`` media message
(:func:`voicebridge.core.acs.dtmf_message`) sent at the first media tick at or after its press
time (so up to 20 ms late), before that tick's ``AudioData`` — and only when the answer's
``mediaStreamingOptions.enableDtmfTones`` is true, as live ACS sends ``DtmfData`` only then
(protocols.md §4; the field is the SDK's ``enable_dtmf_tones``). One message per key and the
250 ms spacing are the fake's model of a person keying, not a documented ACS rate [inference].

**Keys are never logged.** Callers type card and account numbers, so, as in the product, no
timeline entry, log line or summary of the fake carries a key: only counts and times
(:attr:`Keypad.sent_s`). The keys are on the media socket and nowhere else.

:func:`dtmf_from_segments` reads presses from a caller script in the ``sim/data/caller.json``
format: a segment may carry ``"dtmf": "1234#"``, pressed from its ``start_s`` on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from voicebridge.core.control import DTMF_KEYS

#: Call seconds between two keys of one press sequence.
KEY_GAP_S = 0.25

#: ``(call time s, keys)``: a press sequence as ``place_call(dtmf=...)`` takes it.
DtmfPlan = Iterable[tuple[float, str]]


def check_dtmf(dtmf: DtmfPlan | None) -> list[tuple[float, str]]:
    """Validate a ``dtmf=`` plan: times finite and >= 0, keys non-empty strings of keypad keys
    (``0-9 * # A-D``). Returns a new list; ``ValueError`` names the problem (never the keys)."""
    checked: list[tuple[float, str]] = []
    for item in dtmf or ():
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError("dtmf: each entry must be (at_s, keys)")
        at_s, keys = item
        if isinstance(at_s, bool) or not isinstance(at_s, int | float):
            raise ValueError("dtmf: at_s must be a number of call seconds")
        if not math.isfinite(at_s) or at_s < 0:
            raise ValueError("dtmf: at_s must be finite and >= 0")
        if not isinstance(keys, str) or not keys:
            raise ValueError("dtmf: keys must be a non-empty string")
        if any(key not in DTMF_KEYS for key in keys):
            raise ValueError("dtmf: keys must be keypad keys (0-9, *, #, A-D)")
        checked.append((float(at_s), keys))
    return checked


def dtmf_from_segments(segments: Iterable[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """The ``dtmf=`` plan of a caller script (``sim/data/caller.json`` format): one
    ``(start_s, dtmf)`` per segment that has a ``"dtmf"`` string, in script order; segments
    without one are skipped. ``ValueError`` as :func:`check_dtmf` (and for a ``dtmf`` segment
    without a numeric ``start_s``)."""
    plan: list[tuple[float, str]] = []
    for segment in segments:
        if segment.get("dtmf") is None:
            continue
        start = segment.get("start_s")
        if isinstance(start, bool) or not isinstance(start, int | float):
            raise ValueError("dtmf segment: start_s must be a number")
        plan.append((float(start), segment["dtmf"]))
    return check_dtmf(plan)


class Keypad:
    """One call's key presses: what is still to be pressed, and when each key went out.

    Holds the keys themselves only until they are sent; :attr:`sent_s` keeps call times."""

    def __init__(self, dtmf: DtmfPlan | None) -> None:
        presses = [
            (at_s + i * KEY_GAP_S, key)
            for at_s, keys in check_dtmf(dtmf)
            for i, key in enumerate(keys)
        ]
        presses.sort(key=lambda press: press[0])  # stable: a sequence keeps its order
        self._presses = presses
        #: keys the plan had, in all
        self.planned = len(presses)
        #: call time (s) of each ``DtmfData`` sent, in order
        self.sent_s: list[float] = []
        #: planned keys never sent because the answer did not enable DTMF tones
        self.suppressed = 0

    @property
    def pending(self) -> int:
        """Keys still to be pressed."""
        return len(self._presses)

    def due(self, call_s: float) -> list[str]:
        """Take the keys whose press time is at or before ``call_s``."""
        count = 0
        while count < len(self._presses) and self._presses[count][0] <= call_s + 1e-9:
            count += 1
        keys = [key for _, key in self._presses[:count]]
        del self._presses[:count]
        return keys

    def suppress(self) -> int:
        """Drop every pending key (DTMF tones are not enabled); returns how many."""
        dropped = len(self._presses)
        self._presses.clear()
        self.suppressed += dropped
        return dropped
