"""The service's metrics: one catalogue, two outputs.

:data:`FAMILIES` names every metric once — name, type, help, and how to read it from
:class:`~voicebridge.stats.ServiceStats` plus the live call count. ``GET /metrics``
renders it in the Prometheus text format (:func:`render`, version 0.0.4);
:mod:`voicebridge.telemetry` registers the same families as OpenTelemetry observable
instruments for Azure Monitor. Reading is pull-only: nothing here runs per frame.

Units follow Prometheus conventions: seconds (``_seconds``), counters end in
``_total``. Counters other than ``voicebridge_voicelive_reconnects_total`` are summed
from each call's counters when it ends (so a live call shows up at its end);
``voicebridge_active_calls`` and ``voicebridge_event_loop_lag_seconds`` are live.

Latency histograms: :class:`~voicebridge.core.stats.Histogram` keeps ~450 log buckets
(4 % wide) in ms; they are folded into the fixed cumulative ``le`` bounds of
:data:`LE_BOUNDS_S`. A log bucket counts toward a bound when its upper edge is at or
below it, so a value within one bucket width (4 %) under a bound may be counted in the
next one — never in an earlier one. ``_count`` and ``_sum`` are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from voicebridge import __version__
from voicebridge.core.stats import Histogram
from voicebridge.stats import ServiceStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Cumulative histogram bounds, seconds (0.1 ms .. 1 s; then +Inf).
LE_BOUNDS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

Labels = tuple[tuple[str, str], ...]
Kind = Literal["counter", "gauge", "histogram"]
#: ``(labels, value)`` for counters and gauges; ``(labels, Histogram in ms)`` for histograms.
Sample = tuple[Labels, float]
HistSample = tuple[Labels, Histogram]


@dataclass(frozen=True)
class Family:
    """One metric family. ``read(stats, active_calls)`` returns its current samples."""

    name: str
    kind: Kind
    help: str
    read: Callable[[ServiceStats, int], list[Sample]] | None = None
    read_hist: Callable[[ServiceStats, int], list[HistSample]] | None = None
    unit: str = ""  # the OpenTelemetry unit ("s" for seconds)


def _one(value: float) -> list[Sample]:
    return [((), value)]


def _by(label: str, counts: Iterable[tuple[object, float]]) -> list[Sample]:
    return [(((label, str(key) if key not in (None, "") else "unknown"),), n) for key, n in counts]


def _counter(stats: ServiceStats, name: str) -> list[Sample]:
    return _one(stats.counters.get(name, 0))


def _guard_blocked(stats: ServiceStats) -> list[Sample]:
    items = list(stats.guard.items())  # one C-level copy: safe against a concurrent update
    return _by(
        "reason", ((k.removeprefix("blocked_"), n) for k, n in items if k.startswith("blocked_"))
    )


FAMILIES: tuple[Family, ...] = (
    Family(
        "voicebridge_info",
        "gauge",
        "The bridge's version (always 1).",
        read=lambda s, a: [((("version", __version__),), 1)],
    ),
    Family(
        "voicebridge_active_calls",
        "gauge",
        "Calls in progress on this replica, from IncomingCall to their end (live).",
        read=lambda s, a: _one(a),
    ),
    Family(
        "voicebridge_calls_total",
        "counter",
        "Calls ended, by outcome (rejected_busy: refused over MAX_CONCURRENT_CALLS).",
        read=lambda s, a: _by("outcome", list(s.outcomes.items())),
    ),
    Family(
        "voicebridge_outbound_requests_total",
        "counter",
        "POST /api/calls requests by result: accepted, duplicate (Idempotency-Key), "
        "unauthorized, forbidden, malformed, invalid, invalid_context, unknown_profile, "
        "no_caller_id, idempotency_conflict, outside_hours, busy, rate_limited.",
        read=lambda s, a: _by("result", sorted(s.outbound.items())),
    ),
    Family(
        "voicebridge_cluster_events_total",
        "counter",
        "Many nodes (REDIS_URL): takeover (this node took a call's media over), "
        "forwarded / forward_undelivered (callbacks for calls run elsewhere), handed_off "
        "(calls answered here and run elsewhere), redis_error, janitor (calls ended "
        "after their node died).",
        read=lambda s, a: _by("event", sorted(s.cluster.items())),
    ),
    Family(
        "voicebridge_tokens_total",
        "counter",
        "Voice Live tokens of finished calls (response.usage), by direction and kind; "
        "cached input tokens are also counted in their kind.",
        read=lambda s, a: [
            ((("direction", d), ("kind", k)), s.counters.get(f"tokens_{d}_{k}", 0))
            for d, k in (
                ("input", "text"),
                ("input", "audio"),
                ("input", "cached"),
                ("output", "text"),
                ("output", "audio"),
            )
        ],
    ),
    Family(
        "voicebridge_estimated_cost_usd_total",
        "counter",
        "Estimated cost of finished calls' tokens at the configured PRICE_* (USD).",
        read=lambda s, a: _one(s.cost_usd),
    ),
    Family(
        "voicebridge_call_control_total",
        "counter",
        "Call control of finished calls: tool calls and tool errors, keypad tones, "
        "entries and actions, silent-caller re-prompts.",
        read=lambda s, a: _by(
            "event",
            [
                (name, s.counters.get(name, 0))
                for name in (
                    "tool_calls",
                    "tool_errors",
                    "dtmf_tones",
                    "dtmf_submitted",
                    "dtmf_actions",
                    "no_input_reprompts",
                )
            ],
        ),
    ),
    Family(
        "voicebridge_calls_not_conserved_total",
        "counter",
        "Calls whose audio sample accounting did not balance (expected 0).",
        read=lambda s, a: _one(s.calls_not_conserved),
    ),
    Family(
        "voicebridge_media_frames_total",
        "counter",
        "ACS media frames (20 ms): inbound received from the caller, outbound sent to the "
        "caller. Added when a call ends.",
        read=lambda s, a: [
            ((("direction", "inbound"),), s.counters.get("acs_frames_in", 0)),
            ((("direction", "outbound"),), s.counters.get("acs_frames_out", 0)),
        ],
    ),
    Family(
        "voicebridge_malformed_messages_total",
        "counter",
        "Messages that could not be parsed, by source (acs or voicelive).",
        read=lambda s, a: [
            ((("source", "acs"),), s.counters.get("acs_malformed", 0)),
            ((("source", "voicelive"),), s.counters.get("voicelive_malformed", 0)),
        ],
    ),
    Family(
        "voicebridge_relay_latency_seconds",
        "histogram",
        "Time the bridge adds per audio frame: inbound = ACS frame received to its audio "
        "sent to Voice Live; outbound = an agent frame due (or received from Voice Live, "
        "if later) to sent to ACS, pacing excluded. Added when a call ends.",
        read_hist=lambda s, a: [
            ((("direction", "inbound"),), s.inbound_ms),
            ((("direction", "outbound"),), s.outbound_ms),
        ],
        unit="s",
    ),
    Family(
        "voicebridge_forward_latency_seconds",
        "histogram",
        "Many nodes: a callback received by another node until this node, the call's "
        "owner, ran it (Redis pub/sub; node clocks assumed in step).",
        read_hist=lambda s, a: [((), s.forward_ms)],
        unit="s",
    ),
    Family(
        "voicebridge_event_loop_lag_seconds",
        "histogram",
        "How late a 50 ms asyncio sleep wakes up (live; the event loop's health).",
        read_hist=lambda s, a: [((), s.loop.loop_lag_ms)],
        unit="s",
    ),
    Family(
        "voicebridge_gc_pause_seconds",
        "histogram",
        "How long each garbage collection held the event loop (live).",
        read_hist=lambda s, a: [((), s.loop.gc_pause_ms)],
        unit="s",
    ),
    Family(
        "voicebridge_guard_blocked_total",
        "counter",
        "Outbound Voice Live messages the guard refused to send, by reason.",
        read=lambda s, a: _guard_blocked(s),
    ),
    Family(
        "voicebridge_guard_coerced_total",
        "counter",
        "Outbound text fields the guard coerced to plain strings.",
        read=lambda s, a: _one(s.guard.get("coerced", 0)),
    ),
    Family(
        "voicebridge_guard_truncated_total",
        "counter",
        "Outbound text fields the guard truncated to MAX_TEXT_BYTES.",
        read=lambda s, a: _one(s.guard.get("truncated", 0)),
    ),
    Family(
        "voicebridge_guard_split_total",
        "counter",
        "Outbound audio appends the guard split to stay under MAX_MESSAGE_BYTES.",
        read=lambda s, a: _one(s.guard.get("split", 0)),
    ),
    Family(
        "voicebridge_voicelive_errors_total",
        "counter",
        "Voice Live error events, by error code.",
        read=lambda s, a: _by("code", list(s.voicelive_errors.items())),
    ),
    Family(
        "voicebridge_voicelive_reconnects_total",
        "counter",
        "Voice Live sessions replaced mid-call (counted as each reconnect completes).",
        read=lambda s, a: _counter(s, "voicelive_reconnects"),
    ),
    Family(
        "voicebridge_responses_total",
        "counter",
        "Voice Live responses created.",
        read=lambda s, a: _counter(s, "responses_created"),
    ),
    Family(
        "voicebridge_barge_ins_total",
        "counter",
        "Caller speech onsets (input_audio_buffer.speech_started): each stops the agent's "
        "audio at once.",
        read=lambda s, a: _counter(s, "barge_ins"),
    ),
    Family(
        "voicebridge_stop_audio_sent_total",
        "counter",
        "ACS StopAudio messages sent (one per barge-in).",
        read=lambda s, a: _counter(s, "stop_audio_sent"),
    ),
)


# ---------------------------------------------------------------- Prometheus text format


def cumulative_buckets(hist: Histogram) -> list[tuple[float, int]]:
    """``(le in seconds, cumulative count)`` for :data:`LE_BOUNDS_S`, then ``(inf, count)``."""
    out: list[tuple[float, int]] = []
    buckets = hist.buckets()  # ascending upper edges, ms
    i, seen = 0, 0
    for bound_s in LE_BOUNDS_S:
        bound_ms = bound_s * 1000.0 * (1 + 1e-9)  # float noise on an edge equal to a bound
        while i < len(buckets) and buckets[i][0] <= bound_ms:
            seen += buckets[i][1]
            i += 1
        out.append((bound_s, seen))
    out.append((math.inf, hist.count))
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = (*labels, extra) if extra is not None else labels
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def render(stats: ServiceStats, active_calls: int) -> str:
    """Every family in the Prometheus text exposition format."""
    lines: list[str] = []
    for fam in FAMILIES:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        if fam.read_hist is not None:
            for labels, hist in fam.read_hist(stats, active_calls):
                for bound, n in cumulative_buckets(hist):
                    lines.append(f"{fam.name}_bucket{_labels(labels, ('le', _le(bound)))} {n}")
                lines.append(f"{fam.name}_sum{_labels(labels)} {_number(hist.sum / 1000.0)}")
                lines.append(f"{fam.name}_count{_labels(labels)} {hist.count}")
        elif fam.read is not None:
            for labels, value in fam.read(stats, active_calls):
                lines.append(f"{fam.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"
