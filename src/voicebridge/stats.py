"""Process-wide measurements: what every call added up to, and the event loop's health.

Per-call numbers live in each call's :class:`~voicebridge.core.bridge.CallBridge`;
when a call ends its histograms and counters are merged here. ``/api/stats`` shows a
snapshot (and the Prometheus exporter reads the same object).

:func:`process_snapshot` and :func:`object_census` describe the process itself (tasks,
file descriptors, Python allocations, live objects by type), so a soak test can compare
an idle process before and after its calls: anything a call leaves behind shows there.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
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
            **self.loop.summary(),
            "counters": dict(self.counters),
            "voicelive_errors": dict(self.voicelive_errors),
            "guard": dict(self.guard),
        }


def open_fds() -> dict[str, int]:
    """This process's open file descriptors from ``/proc/self/fd``: ``total`` and
    ``sockets`` (empty on systems without ``/proc``). Descriptors that close while
    being listed are skipped."""
    total = sockets = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return {}
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        total += 1
        sockets += target.startswith("socket:")
    return {"total": total, "sockets": sockets}


def process_snapshot() -> dict[str, Any]:
    """Cheap figures of this process, for ``/api/stats`` (well under a millisecond):
    ``tasks`` (``len(asyncio.all_tasks())``, the request being served included),
    ``open_fds``/``open_sockets`` (:func:`open_fds`), ``allocated_blocks``
    (``sys.getallocatedblocks()``: Python objects and buffers allocated by the
    interpreter, whatever the OS was given back) and ``gc_counts`` (objects awaiting
    each garbage-collector generation)."""
    fds = open_fds()
    return {
        "tasks": len(asyncio.all_tasks()),
        "open_fds": fds.get("total"),
        "open_sockets": fds.get("sockets"),
        "allocated_blocks": sys.getallocatedblocks(),
        "gc_counts": list(gc.get_count()),
    }


def reachable(roots: Iterable[Any], limit: int = 1_000_000) -> int:
    """How many distinct objects are reachable from ``roots`` (the roots included),
    following ``gc.get_referents`` — what a container keeps alive. Type and module
    objects are not followed (they are shared, not kept alive by the container); the
    walk stops at ``limit`` objects (a root that reaches a function reaches the world)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | type(sys)):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def trim_heap() -> dict[str, Any]:
    """Give the C heap's free memory back to the OS (glibc ``malloc_trim(0)``) and say
    what RSS was before and after (MB): RSS that a trim removes was free memory the
    allocator kept, not live data. ``trimmed`` is False where there is no glibc."""
    before = _rss_mb()
    trimmed = False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        trimmed = True
    except (OSError, AttributeError):
        pass
    return {"trimmed": trimmed, "rss_mb_before": before, "rss_mb_after": _rss_mb()}


_MALLOC_STATS = {
    "# arenas allocated current": "arenas",
    "# arenas highwater mark": "arenas_highwater",
    "# bytes in allocated blocks": "allocated_bytes",
    "# bytes in available blocks": "available_bytes",
}


def pymalloc_stats() -> dict[str, int]:
    """Python's small-object allocator (``sys._debugmallocstats``): ``arenas`` now and
    ``arenas_highwater`` (1 MiB each on 64-bit), ``allocated_bytes`` (in live blocks),
    ``available_bytes`` (free blocks in used pools) and ``unused_pool_bytes``. An arena
    goes back to the OS only when all of it is free, so arenas x 1 MiB minus allocated
    bytes is what fragmentation keeps. CPython prints these to the C-level stderr only,
    so fd 2 is pointed at a temporary file for the call: debugging use only. Empty when
    the output cannot be read."""
    out: dict[str, int] = {}
    try:
        with tempfile.TemporaryFile() as tmp:
            sys.stderr.flush()
            saved = os.dup(2)
            try:
                os.dup2(tmp.fileno(), 2)
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("ascii", errors="replace")
    except (OSError, AttributeError):
        return out
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        name = name.strip()
        number = value.strip().replace(",", "")
        if not number.isdigit():
            continue
        if name in _MALLOC_STATS:
            out[_MALLOC_STATS[name]] = int(number)
        elif name.endswith("unused pools * 16384 bytes"):
            out["unused_pool_bytes"] = int(number)
    return out


def object_census(
    retained: dict[str, Iterable[Any]] | None = None, *, trim: bool = False
) -> dict[str, Any]:
    """A full collection, then every object the collector tracks, counted by type.

    Expensive (it walks every object: tens to hundreds of ms): for debugging and soak
    tests, never on a hot path. Returns ``objects`` (tracked objects in all),
    ``allocated_blocks`` (after the collection), ``by_type`` (``"module.QualName"`` ->
    count, for every type with at least 10 instances or defined in ``voicebridge``) and,
    per ``retained`` entry (a name -> the objects a bounded history keeps), ``retained``
    = ``{name: {"items": n, "objects": reachable objects}}`` so that what the history is
    allowed to keep can be told apart from what leaked; ``pymalloc``
    (:func:`pymalloc_stats`). With ``trim``, also ``heap`` (:func:`trim_heap`, after
    the collection).
    """
    gc.collect()
    counts: Counter[str] = Counter()
    objects = gc.get_objects()
    for obj in objects:
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    total = len(objects)
    del objects
    by_type = {k: n for k, n in counts.items() if n >= 10 or k.startswith("voicebridge.")}
    kept = {}
    for name, items in (retained or {}).items():
        items = list(items)
        kept[name] = {"items": len(items), "objects": reachable(items)}
    census: dict[str, Any] = {
        "objects": total,
        "allocated_blocks": sys.getallocatedblocks(),
        "by_type": dict(sorted(by_type.items())),
        "retained": kept,
        "pymalloc": pymalloc_stats(),
    }
    if trim:
        census["heap"] = trim_heap()
    return census
