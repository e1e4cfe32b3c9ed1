"""Process-wide measurements: what every call added up to, and the event loop's health.

Per-call numbers live in each call's :class:`~voicebridge.core.bridge.CallBridge`;
when a call ends its histograms and counters are merged here. ``/api/stats`` shows a
snapshot (and the Prometheus exporter reads the same object). What the process itself
holds (tasks, descriptors, allocations, live objects) is :mod:`voicebridge.diagnostics`.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from typing import Any

from voicebridge.core.stats import Histogram

#: Counters summed over finished calls (names from ``CallBridge.report()["counters"]``).
SUMMED = (
    "acs_frames_in",
    "acs_frames_out",
    "acs_malformed",
    "voicelive_malformed",
    "caller_samples_in",
    "voicelive_samples_appended",
    "agent_samples_in",
    "agent_samples_sent",
    "samples_dropped_by_barge_in",
    "barge_ins",
    "stop_audio_sent",
    "responses_created",
    "guard_rejections",
    "tool_calls",
    "tool_errors",
    "dtmf_tones",
    "dtmf_submitted",
    "dtmf_actions",
    "no_input_reprompts",
    "tokens_input_text",
    "tokens_input_audio",
    "tokens_input_cached",
    "tokens_output_text",
    "tokens_output_audio",
)


class LoopHealth:
    """How well this process's event loop keeps time, in ms: how late a periodic
    ``sleep`` wakes up (loop lag), and how long each garbage collection holds the loop.

    The bridge keeps one (``ServiceStats.loop``); so does each load-test worker, so
    a load test can tell whether its load side kept up.
    """

    def __init__(self) -> None:
        self.loop_lag_ms = Histogram()
        self.gc_pause_ms = Histogram()
        self._gc_started = 0.0

    def reset(self) -> None:
        """Start measuring afresh (a load test's measuring window begins)."""
        self.loop_lag_ms = Histogram()
        self.gc_pause_ms = Histogram()

    async def watch(self, interval_s: float) -> None:
        """Forever: how late a ``sleep(interval_s)`` wakes up; and, while this runs,
        every collection's pause."""
        perf = time.perf_counter
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                t0 = perf()
                await asyncio.sleep(interval_s)
                self.loop_lag_ms.add(max(0.0, (perf() - t0 - interval_s) * 1000.0))
        finally:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause_ms.add((time.perf_counter() - self._gc_started) * 1000.0)

    def summary(self) -> dict[str, Any]:
        return {
            "loop_lag_ms": self.loop_lag_ms.summary(),
            "gc_pause_ms": self.gc_pause_ms.summary(),
        }


class ServiceStats:
    """Histograms and counters for the whole process, and its loop's health (``loop``)."""

    def __init__(self) -> None:
        self.loop = LoopHealth()
        self.started = time.monotonic()
        self.inbound_ms = Histogram()
        self.outbound_ms = Histogram()
        self.outcomes: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.voicelive_errors: Counter[str] = Counter()
        self.guard: Counter[str] = Counter()
        self.calls_not_conserved = 0
        #: Many nodes (voicebridge.cluster): takeovers, forwarded callbacks, Redis errors...
        self.cluster: Counter[str] = Counter()
        #: Many nodes: a callback received elsewhere until this node (its owner) ran it.
        self.forward_ms = Histogram()
        #: Estimated cost of the finished calls' tokens (USD, configured prices).
        self.cost_usd = 0.0
        #: POST /api/calls answers by result (accepted, duplicate, unauthorized, ...).
        self.outbound: Counter[str] = Counter()

    def call_finished(
        self, report: dict[str, Any], inbound_ms: Histogram, outbound_ms: Histogram
    ) -> None:
        """Add one finished call's relay report (latencies in real ms)."""
        self.inbound_ms.merge(inbound_ms)
        self.outbound_ms.merge(outbound_ms)
        counters = report.get("counters", {})
        for name in SUMMED:
            self.counters[name] += int(counters.get(name, 0))
        self.voicelive_errors.update(counters.get("voicelive_errors", {}))
        self.cost_usd += float(report.get("usage", {}).get("cost_usd", 0.0))
        guard = report.get("guard", {})
        self.guard["coerced"] += guard.get("coerced", 0)
        self.guard["truncated"] += guard.get("truncated", 0)
        self.guard["split"] += guard.get("split", 0)
        for reason, n in guard.get("blocked", {}).items():
            self.guard[f"blocked_{reason}"] += n
        if not (
            report.get("inbound", {}).get("conserved")
            and report.get("outbound", {}).get("conserved")
        ):
            self.calls_not_conserved += 1

    def reconnected(self) -> None:
        self.counters["voicelive_reconnects"] += 1

    def call_ended(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def snapshot(self, active_calls: int) -> dict[str, Any]:
        return {
            "uptime_s": round(time.monotonic() - self.started, 3),
            "active_calls": active_calls,
            "calls_by_outcome": dict(self.outcomes),
            "calls_not_conserved": self.calls_not_conserved,
            "relay_latency_ms": {
                "inbound": self.inbound_ms.summary(),
                "outbound": self.outbound_ms.summary(),
            },
            **self.loop.summary(),
            "counters": dict(self.counters),
            "voicelive_errors": dict(self.voicelive_errors),
            "guard": dict(self.guard),
        }
