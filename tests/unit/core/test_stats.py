"""The latency histogram: percentiles within its bucket width, exact merges."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from voicebridge.core.stats import Histogram


def test_percentiles_within_two_percent() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(mean=0.0, sigma=1.0, size=20_000)
    h = Histogram()
    for v in values:
        h.add(float(v))
    for q in (50, 90, 99):
        exact = float(np.percentile(values, q, method="inverted_cdf"))
        assert abs(h.percentile(q) - exact) / exact < 0.04
    assert h.count == 20_000 and h.max == float(values.max())
    assert abs(h.sum - float(values.sum())) < 1e-6 * h.sum


def test_merge_equals_one_histogram() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1000):
        v = (i % 97) / 7
        (a if i % 3 else b).add(v)
        both.add(v)
    a.merge(b)
    assert a.summary() == both.summary() and a.buckets() == both.buckets()


def test_empty_and_extremes() -> None:
    h = Histogram()
    assert h.summary() == {"count": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    h.add(0.0)
    h.add(1e9)
    assert h.percentile(100) == 1e9 and h.percentile(1) == 0.001


@given(st.floats(min_value=0.0, max_value=1e9, allow_nan=False))
def test_add_files_a_value_in_the_bucket_that_bucket_names(value: float) -> None:
    h = Histogram()
    h.add(value)
    assert [i for i, n in enumerate(h._counts) if n] == [Histogram.bucket(value)]
