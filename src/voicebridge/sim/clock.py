"""The simulator's clock: media time runs ``speed`` times real time.

Passed to :func:`voicebridge.app.create_app` (``clock=ScaledClock(speed)``) by
``voicebridge simulate``, the e2e tests and the load test's bridge
(``python -m voicebridge.sim.serve --speed S``). The core's timers and the pacer run on
media time, so a minute-long call takes ``60 / speed`` seconds; the operator's limits
(idle media, call length, connect timeout, reconnect budget) stay in real time, as the
:class:`~voicebridge.clock.Clock` contract says.
"""

from __future__ import annotations

import time

__all__ = ["ScaledClock"]


class ScaledClock:
    """A :class:`~voicebridge.clock.Clock` whose media time runs ``speed`` times real time."""

    __slots__ = ("speed",)

    def __init__(self, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        self.speed = float(speed)

    def media_now(self) -> float:
        return time.perf_counter() * self.speed

    def real_now(self) -> float:
        return time.perf_counter()

    def wall_now(self) -> float:
        return time.time()

    def real_seconds(self, media_s: float) -> float:
        return media_s / self.speed
