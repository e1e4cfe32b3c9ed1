"""Process-wide measurements: what every call added up to, and the event loop's health.

Per-call numbers live in each call's :class:`~voicebridge.core.bridge.CallBridge`;
when a call ends its histograms and counters are merged here. ``/api/stats`` shows a
snapshot (and the Prometheus exporter reads the same object).
"""

from __future__ import annotations

import asyncio
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
)


class ServiceStats:
    """Histograms and counters for the whole process."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.inbound_ms = Histogram()
        self.outbound_ms = Histogram()
        self.loop_lag_ms = Histogram()
        self.outcomes: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.voicelive_errors: Counter[str] = Counter()
        self.guard: Counter[str] = Counter()
        self.calls_not_conserved = 0

    def call_finished(
        self,
        report: dict[str, Any],
        inbound_ms: Histogram,
        outbound_ms: Histogram,
        *,
        outbound_scale: float = 1.0,
    ) -> None:
        """Add one finished call's relay report."""
        self.inbound_ms.merge(inbound_ms)
        self.outbound_ms.merge_scaled(outbound_ms, outbound_scale)
        counters = report.get("counters", {})
        for name in SUMMED:
            self.counters[name] += int(counters.get(name, 0))
        self.voicelive_errors.update(counters.get("voicelive_errors", {}))
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
            "loop_lag_ms": self.loop_lag_ms.summary(),
            "counters": dict(self.counters),
            "voicelive_errors": dict(self.voicelive_errors),
            "guard": dict(self.guard),
        }

    async def watch_loop(self, interval_s: float = 0.05) -> None:
        """Measure event-loop lag forever: how late a ``sleep(interval)`` wakes up."""
        perf = time.perf_counter
        while True:
            t0 = perf()
            await asyncio.sleep(interval_s)
            self.loop_lag_ms.add(max(0.0, (perf() - t0 - interval_s) * 1000.0))
