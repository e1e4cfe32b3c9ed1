"""What the bridge process itself holds: tasks, file descriptors, Python allocations,
live objects by type — so a soak test can compare an idle process before and after its
calls: anything a call leaves behind shows here.

* :func:`process_snapshot` is cheap (well under a millisecond) and is part of the
  public ``GET /api/stats`` (``process``).
* The heap forensics — :func:`object_census` (walks every object of the process),
  :func:`trim_heap` (glibc ``malloc_trim``), :func:`pymalloc_stats` (points fd 2 at a
  file for a moment), :func:`reachable` — are for leak hunting only: they are served by
  ``GET /debug/stats`` (:mod:`voicebridge.routes.debug`), which exists only with
  ``DEBUG_ENDPOINTS=true`` (off by default, never in the shipped Bicep).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from typing import Any


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


def proc_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/<pid>/status`` as field name -> value (``"VmRSS"`` -> ``"81234 kB"``);
    raises OSError where there is no such process (or no ``/proc``)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            name, sep, value = line.partition(":")
            if sep:
                out[name] = value.strip()
    return out


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """``{"rss": VmRSS, "hwm": VmHWM}`` of process ``pid`` (this one by default) in MB
    (VmHWM is peak RSS); 0.0 for a figure the kernel does not give (a zombie has none).
    The one RSS reader: :func:`trim_heap` here, and the load test's
    :mod:`~voicebridge.tools.loadtest.procfs` for the processes it starts."""
    fields = proc_status(pid)
    return {"rss": _kb(fields.get("VmRSS")) / 1024, "hwm": _kb(fields.get("VmHWM")) / 1024}


def _rss_now() -> float | None:
    try:
        return round(memory_mb()["rss"], 1)
    except OSError:
        return None


def trim_heap() -> dict[str, Any]:
    """Give the C heap's free memory back to the OS (glibc ``malloc_trim(0)``) and say
    what RSS was before and after (MB): RSS that a trim removes was free memory the
    allocator kept, not live data. ``trimmed`` is False where there is no glibc."""
    before = _rss_now()
    trimmed = False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        trimmed = True
    except (OSError, AttributeError):
        pass
    return {"trimmed": trimmed, "rss_mb_before": before, "rss_mb_after": _rss_now()}


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
