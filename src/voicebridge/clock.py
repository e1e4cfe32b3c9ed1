"""The one clock the relay reads (issue 16): media time, real time and the wall clock.

Two time bases, kept apart on purpose:

* **media time** (:meth:`Clock.media_now`) — what the core's timers and the pacer run
  on: frame due times, ``session.updated`` / response timeouts, playout estimates;
* **real time** (:meth:`Clock.real_now`) — what the operator's limits are written in:
  ``MEDIA_IDLE_TIMEOUT_S``, ``MAX_CALL_DURATION_S``, ``VOICELIVE_CONNECT_TIMEOUT_S``,
  the reconnect budget and back-off, latencies, the goodbye deadline.

In production they are the same clock (:class:`RealClock`). The simulator runs media
time faster than real time (``voicebridge.sim.clock.ScaledClock``) so a minute-long call
takes seconds while the real-time limits still hold. :meth:`Clock.wall_now` is epoch
seconds, for Voice Live's ``expires_at``.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "RealClock"]


class Clock(Protocol):
    """What the relay needs to know about time (see the module docstring)."""

    def media_now(self) -> float:
        """Media time in seconds (any origin): the core's timers and pacing."""
        ...

    def real_now(self) -> float:
        """Monotonic real time in seconds (any origin): limits, budgets, latencies."""
        ...

    def wall_now(self) -> float:
        """The wall clock in epoch seconds (Voice Live's ``expires_at``)."""
        ...

    def real_seconds(self, media_s: float) -> float:
        """How long ``media_s`` of media time lasts in real time (sleeps, reports)."""
        ...


class RealClock:
    """Production time: media time is real time."""

    __slots__ = ()

    def media_now(self) -> float:
        return time.perf_counter()

    def real_now(self) -> float:
        return time.perf_counter()

    def wall_now(self) -> float:
        return time.time()

    def real_seconds(self, media_s: float) -> float:
        return media_s
