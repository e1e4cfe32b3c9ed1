"""Measurement helpers for the core (no clocks: callers pass values in)."""

from __future__ import annotations

import math
from array import array

__all__ = ["Histogram"]

_MIN_MS = 0.001  # lower edge of the first bucket
_GROWTH = 1.04  # each bucket is 4 % wider than the last: percentiles within ±2 %
_LOG_GROWTH = math.log(_GROWTH)
_log = math.log
_BUCKETS = int(math.log(60_000 / _MIN_MS) / _LOG_GROWTH) + 2  # up to a minute


class Histogram:
    """A log-bucketed histogram of non-negative values (latencies in ms).

    Constant memory (~450 buckets), O(1) ``add``, exact ``count``/``sum``/``max``,
    percentiles within ±2 %, and :meth:`merge` so per-call histograms add up to a
    process-wide one exactly (what percentiles of percentiles cannot do).
    """

    __slots__ = ("_counts", "count", "max", "sum")

    def __init__(self) -> None:
        self._counts = array("q", bytes(8 * _BUCKETS))
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    @staticmethod
    def bucket(value: float) -> int:
        if value <= _MIN_MS:
            return 0
        return min(_BUCKETS - 1, int(math.log(value / _MIN_MS) / _LOG_GROWTH) + 1)

    @staticmethod
    def upper_edge(index: int) -> float:
        """The largest value bucket ``index`` holds."""
        return float(_MIN_MS * _GROWTH**index)

    def add(self, value: float) -> None:
        # bucket() inlined: this runs for every audio frame in both directions
        if value <= _MIN_MS:
            self._counts[0] += 1
        else:
            i = int(_log(value / _MIN_MS) / _LOG_GROWTH) + 1
            self._counts[i if i < _BUCKETS else _BUCKETS - 1] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        counts = self._counts
        for i, n in enumerate(other._counts):
            if n:
                counts[i] += n
        self.count += other.count
        self.sum += other.sum
        self.max = max(self.max, other.max)

    def merge_scaled(self, other: Histogram, scale: float) -> None:
        """Merge ``other`` with every value multiplied by ``scale`` (re-bucketed by
        bucket edge: exact for count, within a bucket width for the rest)."""
        if scale == 1.0:
            self.merge(other)
            return
        for edge, n in other.buckets():
            self._counts[self.bucket(edge * scale)] += n
        self.count += other.count
        self.sum += other.sum * scale
        self.max = max(self.max, other.max * scale)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100); 0 when empty. Never above ``max``."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank:  # the last bucket is open-ended: its values are up to max
                return self.max if i == _BUCKETS - 1 else min(self.upper_edge(i), self.max)
        return self.max

    def buckets(self) -> list[tuple[float, int]]:
        """Non-empty buckets as ``(upper edge, count)``, for exporters."""
        return [(self.upper_edge(i), n) for i, n in enumerate(self._counts) if n]

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "p50": round(self.percentile(50), 3),
            "p99": round(self.percentile(99), 3),
            "max": round(self.max, 3),
        }
