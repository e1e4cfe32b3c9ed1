"""The Prometheus exposition of ServiceStats: format, names, cumulative buckets."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebridge import metrics
from voicebridge.core.stats import Histogram
from voicebridge.stats import ServiceStats

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, dict[str, object]]:
    """A strict little parser of the text format: every sample belongs to a family
    declared by HELP then TYPE; returns ``{family: {"type", "help", "samples"}}``."""
    assert text.endswith("\n")
    families: dict[str, dict[str, object]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": help_text, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in ("counter", "gauge", "histogram"), line
            families[name]["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert current is not None
            name = m["name"]
            suffixes = (
                ("_bucket", "_sum", "_count") if families[current]["type"] == "histogram" else ("",)
            )
            assert any(name == current + s for s in suffixes), f"{name} outside {current}"
            labels_text = m["labels"] or ""
            labels = dict(LABEL.findall(labels_text))
            assert ",".join(f'{k}="{v}"' for k, v in LABEL.findall(labels_text)) == labels_text
            value = float(m["value"].replace("+Inf", "inf"))
            families[current]["samples"].append((name, labels, value))  # type: ignore[attr-defined]
    return families


def busy_stats() -> ServiceStats:
    stats = ServiceStats()
    inbound, outbound = Histogram(), Histogram()
    for v in (0.05, 0.2, 0.2, 0.9, 3.0, 40.0, 2000.0):
        inbound.add(v)
    for v in (1.0, 12.0):
        outbound.add(v)
    report = {
        "counters": {
            "acs_frames_in": 1500,
            "acs_frames_out": 600,
            "barge_ins": 2,
            "stop_audio_sent": 2,
            "responses_created": 5,
            "acs_malformed": 1,
            "voicelive_errors": {"rate_limit_exceeded": 2, "server_error": 1},
        },
        "guard": {"coerced": 3, "truncated": 1, "split": 4, "blocked": {"response_active": 2}},
        "inbound": {"conserved": True},
        "outbound": {"conserved": True},
    }
    stats.call_finished(report, inbound, outbound)
    stats.call_ended("caller_hung_up")
    stats.call_ended("caller_hung_up")
    stats.call_ended("rejected_busy")
    stats.reconnected()
    stats.loop.loop_lag_ms.add(0.4)
    stats.loop.gc_pause_ms.add(12.5)
    return stats


def test_every_family_is_declared_named_and_typed_by_convention() -> None:
    fams = parse(metrics.render(ServiceStats(), active_calls=0))
    assert [f.name for f in metrics.FAMILIES] == list(fams)
    for name, fam in fams.items():
        assert name.startswith("voicebridge_"), name
        assert fam["help"], name
        if fam["type"] == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        if fam["type"] == "histogram":
            assert name.endswith("_seconds"), name
        assert "_ms" not in name and "milli" not in name, "seconds, not ms"


def test_values_of_a_finished_call() -> None:
    fams = parse(metrics.render(busy_stats(), active_calls=3))

    def value(name: str, **labels: str) -> float:
        family = fams.get(name) or fams[re.sub(r"_(bucket|sum|count)$", "", name)]
        samples = family["samples"]
        found = [v for n, lb, v in samples if n == name and lb == labels]  # type: ignore[attr-defined]
        assert len(found) == 1, (name, labels, samples)
        return float(found[0])

    assert value("voicebridge_active_calls") == 3
    assert value("voicebridge_calls_total", outcome="caller_hung_up") == 2
    assert value("voicebridge_calls_total", outcome="rejected_busy") == 1
    assert value("voicebridge_media_frames_total", direction="inbound") == 1500
    assert value("voicebridge_media_frames_total", direction="outbound") == 600
    assert value("voicebridge_malformed_messages_total", source="acs") == 1
    assert value("voicebridge_barge_ins_total") == 2
    assert value("voicebridge_stop_audio_sent_total") == 2
    assert value("voicebridge_responses_total") == 5
    assert value("voicebridge_voicelive_reconnects_total") == 1
    assert value("voicebridge_voicelive_errors_total", code="rate_limit_exceeded") == 2
    assert value("voicebridge_guard_blocked_total", reason="response_active") == 2
    assert value("voicebridge_guard_coerced_total") == 3
    assert value("voicebridge_guard_truncated_total") == 1
    assert value("voicebridge_guard_split_total") == 4
    assert value("voicebridge_calls_not_conserved_total") == 0
    assert value("voicebridge_info", version=metrics.__version__) == 1

    h = "voicebridge_relay_latency_seconds"
    assert value(h + "_count", direction="inbound") == 7
    assert value(h + "_sum", direction="inbound") == pytest.approx(
        (0.05 + 0.4 + 0.9 + 3 + 40 + 2000) / 1000
    )
    assert value(h + "_bucket", direction="inbound", le="0.0001") == 1  # 0.05 ms
    assert value(h + "_bucket", direction="inbound", le="0.00025") == 3  # + 0.2 ms twice
    assert value(h + "_bucket", direction="inbound", le="0.001") == 4  # + 0.9 ms
    assert value(h + "_bucket", direction="inbound", le="0.005") == 5  # + 3 ms
    assert value(h + "_bucket", direction="inbound", le="0.05") == 6  # + 40 ms
    assert value(h + "_bucket", direction="inbound", le="1.0") == 6  # 2 s only in +Inf
    assert value(h + "_bucket", direction="inbound", le="+Inf") == 7
    assert value(h + "_bucket", direction="outbound", le="0.001") == 0  # 1.0 ms: a hair above
    assert value(h + "_bucket", direction="outbound", le="0.025") == 2
    assert value("voicebridge_event_loop_lag_seconds_count") == 1
    assert value("voicebridge_gc_pause_seconds_sum") == pytest.approx(0.0125)


def test_histograms_are_cumulative_and_end_in_inf() -> None:
    fams = parse(metrics.render(busy_stats(), active_calls=0))
    for name, fam in fams.items():
        if fam["type"] != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
        counts = {}
        for sample, labels, v in fam["samples"]:  # type: ignore[attr-defined]
            key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
            if sample.endswith("_bucket"):
                series[key].append((float(labels["le"].replace("+Inf", "inf")), v))
            elif sample.endswith("_count"):
                counts[key] = v
        for key, buckets in series.items():
            bounds = [b for b, _ in buckets]
            assert bounds == sorted(bounds) and math.isinf(bounds[-1]), (name, key)
            values = [v for _, v in buckets]
            assert values == sorted(values), (name, key, values)
            assert values[-1] == counts[key]


def test_label_values_are_escaped() -> None:
    stats = ServiceStats()
    stats.voicelive_errors['odd"code\\with\nnewline'] += 1
    stats.voicelive_errors[None] += 1  # type: ignore[index]
    text = metrics.render(stats, active_calls=0)
    assert 'code="odd\\"code\\\\with\\nnewline"' in text
    assert 'code="unknown"' in text
    parse(text)


@given(st.lists(st.floats(min_value=0.0, max_value=120_000.0), max_size=200))
def test_cumulative_buckets_never_count_a_value_under_a_lower_bound(values: list[float]) -> None:
    """Folding 4 % log buckets into fixed bounds: a bound's count is never more than the
    values at or below it, and at least the values at or below 96 % of it."""
    hist = Histogram()
    for v in values:
        hist.add(v)
    out = metrics.cumulative_buckets(hist)
    assert out[-1] == (math.inf, len(values))
    for bound_s, n in out[:-1]:
        bound_ms = bound_s * 1000
        assert n <= sum(1 for v in values if v <= bound_ms * (1 + 1e-9))
        assert n >= sum(1 for v in values if v <= bound_ms / 1.04)
