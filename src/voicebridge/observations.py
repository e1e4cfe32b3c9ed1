"""What the first real calls show about facts no document settles (protocol audit §3).

voicebridge was built against its own fakes. A few wire facts could not be found in any
primary source: whether ACS streams frames through silence and hold, the real ``aud`` of
ACS's JWTs, the callbacks' ``Content-Type``, where agent mode reports the conversation id,
and whether the mixed inbound stream carries the bot's own audio. The bridge is built to
be safe under either answer; :func:`observe` logs what a real call shows, **once per
process per fact**, as one line::

    protocol_observation {"fact": "acs_callback_content_type", "value": "application/json"}

so the operator of the first real call can answer them (docs/first-call.md). Values are
facts about the protocol, never audio, secrets or caller digits.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import orjson
import pybase64

log = logging.getLogger("voicebridge.protocol")

#: Every fact this module may log, with what it answers (docs/first-call.md lists them).
FACTS: dict[str, str] = {
    "acs_silent_frames": "ACS sends frames marked silent while nobody speaks",
    "acs_media_gap": "ACS stopped sending frames for a while in a connected call (hold?)",
    "acs_jwt_audience": "the aud claim ACS puts in its JWTs, against ACS_RESOURCE_ID",
    "acs_callback_content_type": "the Content-Type of Call Automation callbacks",
    "agent_conversation_id": "where agent mode's session.created carries the conversation id",
    "acs_inbound_during_playback": "caller-stream level while agent audio plays (echo?)",
}

_seen: set[str] = set()


def observe(fact: str, **values: Any) -> bool:
    """Log ``fact`` with ``values`` the first time it is observed in this process;
    True if this call logged it. Unknown facts raise (a typo must not go unseen)."""
    if fact not in FACTS:
        raise KeyError(f"unknown protocol observation {fact!r}")
    if fact in _seen:
        return False
    _seen.add(fact)
    payload = json.dumps({"fact": fact, **values}, default=str, sort_keys=False)
    log.info("protocol_observation %s", payload)
    return True


def observed(fact: str) -> bool:
    """Whether ``fact`` was logged already (cheap guard for per-frame code)."""
    return fact in _seen


def reset() -> None:
    """Forget what was observed (tests)."""
    _seen.clear()


class InboundLevels:
    """Caller-stream level while agent audio plays and while it does not, sampled over
    the first ``window_s`` seconds of one call (every ``every``-th frame): if the
    mixed stream carried the bot's own audio, the level while it plays would stand
    far above the level of the quiet moments. Costs nothing once reported."""

    def __init__(self, *, window_s: float = 30.0, every: int = 5) -> None:
        self.frames_left = int(window_s * 50)
        self.every = every
        self._n = 0
        self._sums = {True: [0.0, 0], False: [0.0, 0]}  # playing -> [sum of squares, samples]

    def feed(self, text: str | bytes, playing: bool) -> bool:
        """Take one ACS message; True once the window is full (then :meth:`report`)."""
        self.frames_left -= 1
        self._n += 1
        if self._n % self.every == 0:
            self._sample(text, playing)
        return self.frames_left <= 0

    def _sample(self, text: str | bytes, playing: bool) -> None:
        try:
            msg = orjson.loads(text)
            data = (msg.get("audioData") or msg.get("AudioData") or {}).get("data")
            if not isinstance(data, str) or not data:
                return
            pcm = np.frombuffer(pybase64.b64decode(data), dtype="<i2").astype(np.float64)
        except (ValueError, TypeError, AttributeError):
            return  # not an audio frame: the core counts malformed input
        bucket = self._sums[playing]
        bucket[0] += float(np.dot(pcm, pcm))
        bucket[1] += int(pcm.size)

    @property
    def sampled(self) -> bool:
        """Whether any audio was measured yet."""
        return bool(self._sums[True][1] or self._sums[False][1])

    def report(self) -> dict[str, Any]:
        """Mean level in dBFS in each state (None where no sample was taken)."""

        def dbfs(sums: list[float]) -> float | None:
            total, n = sums
            if not n:
                return None
            rms = math.sqrt(total / n)
            return round(20 * math.log10(max(rms, 1e-3) / 32768.0), 1)

        return {
            "dbfs_while_agent_plays": dbfs(self._sums[True]),
            "dbfs_otherwise": dbfs(self._sums[False]),
            "samples_while_agent_plays": int(self._sums[True][1]),
            "samples_otherwise": int(self._sums[False][1]),
        }
