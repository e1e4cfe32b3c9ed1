"""Small measurement helpers for the core (no clocks: callers pass times in)."""

from __future__ import annotations

from array import array


class Samples:
    """A bounded record of measurements (e.g. latencies in ms) with percentiles.

    Keeps the first ``limit`` values exactly — enough for a call of several hours at
    50 values a second — and counts the rest only in ``count``/``max``.
    """

    __slots__ = ("_values", "count", "limit", "max")

    def __init__(self, limit: int = 500_000) -> None:
        self._values = array("d")
        self.limit = limit
        self.count = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        if value > self.max:
            self.max = value
        if len(self._values) < self.limit:
            self._values.append(value)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100, nearest rank) of the kept values; 0 if none."""
        if not self._values:
            return 0.0
        ordered = sorted(self._values)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "p50": round(self.percentile(50), 3),
            "p99": round(self.percentile(99), 3),
            "max": round(self.max, 3),
        }
