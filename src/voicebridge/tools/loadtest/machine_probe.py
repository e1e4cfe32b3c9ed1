"""How fast the machine itself ran during a load test: the speed reference and the speed probe.

On the shared machines this project is measured on, the same build has needed 5.0 and
5.9 ms of bridge CPU per call-second an hour apart, with no other load visible and no
steal reported. ``voicebridge loadtest --machine-probe`` therefore times a fixed
workload on the bridge's CPU (:class:`MachineProbe`), so that two runs can be told apart
by what changed in the code and what changed in the machine. It answers "was this VM
slow?", which is not a property of the bridge, so it runs only when asked for: without
the flag no probe process starts and the report has none of the fields below.

**Speed reference** (:func:`measure`), just before the calls and just after them. The
workload never changes with the code under test, and has the two parts the bridge's CPU
goes to (docs/performance.md, "Where the time goes"):

* ``python_ms`` — an interpreter loop of dict, string and function-call work;
* ``loopback_ms`` — 1.3 KB round trips (the size of a media frame) over a loopback TCP
  connection: system calls and the kernel's TCP path, as each WebSocket message costs.

Each part runs :data:`REPEATS` times and the fastest is kept: an interrupted repeat is
slower, never faster.

**Speed probe** (:func:`probe`, :class:`SpeedProbe`), during the calls: once a second,
the CPU time (``time.thread_time``) of a small fixed loop (:data:`PROBE_LOOPS`, ~3 ms).
It is CPU time, not wall time, so waiting for the CPU does not count; what does is the
CPU itself running slower (or the hypervisor taking it away unreported), which makes the
bridge's own work cost more CPU in the same seconds. The probe runs under ``SCHED_IDLE``
where Linux has it, so it only ever takes the CPU when the bridge leaves it idle: it
never delays the bridge's event loop. :func:`probe_summary` turns the probes into the
report's ``machine.speed_probe``.

Both run in a child process on the bridge's CPU: ``python -m
voicebridge.tools.loadtest.machine_probe [--cpu N] [--probe]`` prints one JSON object
(the reference), or with ``--probe`` one JSON line ``{"t": time.monotonic(), "ms": x}``
a second until it is stopped. That child must start light, as it starts beside the
bridge: this module imports only the standard library's small modules at the top, and
asyncio where the load test (which has it already) uses it.

What it adds to a load test's report, only with ``--machine-probe``:

* ``machine.speed_reference_ms`` — the reference ``before`` and ``after`` the calls
  (``python_ms``, ``loopback_ms``; an empty dict for one that could not run);
* ``machine.speed_probe`` — :func:`probe_summary`; each CPU sample (``cpu_samples``)
  also gets the ``probe_ms`` taken in the same second;
* in the text, the machine line's speed reference and probe (:func:`machine_text`), the
  step lines' "CPU slow" (:func:`step_text`), find-max's range of slow shares
  (:func:`find_max_text`), the sweep's "CPU slow" column (:func:`sweep_cells`) and
  plot title (:func:`plot_text`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

REPEATS = 5
PYTHON_LOOPS = 300_000
PROBE_LOOPS = 15_000
ROUND_TRIPS = 5_000
MESSAGE = b"x" * 1_300
#: A probe this many times slower than the machine's fast figure counts as slow.
SLOW_PROBE = 1.4
#: The speed probe's name among the run's processes.
PROBE = "speed-probe"
_MODULE = "voicebridge.tools.loadtest.machine_probe"

# --------------------------------------------------------------------------- the workload


def _python_part(loops: int | None = None) -> int:
    table: dict[int, int] = {}
    total = 0
    for i in range(PYTHON_LOOPS if loops is None else loops):
        key = i & 1023
        table[key] = table.get(key, 0) + i
        total += len(str(i)) + _bump(key)
    return total


def _bump(value: int) -> int:
    return value + 1


def _loopback_part() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    with a, b:
        for s in (a, b):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        size = len(MESSAGE)
        for _ in range(ROUND_TRIPS):
            for src, dst in ((a, b), (b, a)):
                src.sendall(MESSAGE)
                got = 0
                while got < size:
                    got += len(dst.recv(size - got))
    return ROUND_TRIPS


def _fastest_ms(part: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        part()
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000.0, 2)


def measure() -> dict[str, float]:
    """``{"python_ms": x, "loopback_ms": y}`` in this process, on its current CPUs."""
    return {"python_ms": _fastest_ms(_python_part), "loopback_ms": _fastest_ms(_loopback_part)}


def probe(interval_s: float = 1.0, count: int | None = None) -> None:
    """Every ``interval_s``, print the CPU time of :data:`PROBE_LOOPS` iterations (see the
    module docstring); forever, or ``count`` times."""
    done = 0
    while count is None or done < count:
        time.sleep(interval_s)
        t0 = time.thread_time()
        _python_part(PROBE_LOOPS)
        ms = (time.thread_time() - t0) * 1000.0
        print(json.dumps({"t": round(time.monotonic(), 3), "ms": round(ms, 3)}), flush=True)
        done += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebridge.tools.loadtest.machine_probe")
    parser.add_argument("--cpu", type=int, help="run on this CPU only")
    parser.add_argument("--probe", action="store_true", help="probe once a second until stopped")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.probe:
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        probe()
    else:
        print(json.dumps(measure()))
    return 0


# --------------------------------------------------------------------------- in a load test


async def _child(cpus: set[int] | None, *args: str) -> asyncio.subprocess.Process | None:
    """This module as a child process on the first of ``cpus``, stdout piped; None if it
    cannot be started."""
    import asyncio

    cmd = [sys.executable, "-m", _MODULE, *args]
    if cpus:
        cmd += ["--cpu", str(min(cpus))]
    try:
        return await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return None


async def speed_reference(cpus: set[int] | None) -> dict[str, float]:
    """:func:`measure` in a child process on ``cpus`` (the bridge's, while it is idle):
    the machine's speed now, for comparing runs made at other times. An empty dict if it
    could not run (the report must not fail for want of it)."""
    import asyncio

    proc = await _child(cpus)
    if proc is None:
        return {}
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        result: dict[str, float] = json.loads(out)
    except (TimeoutError, ValueError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return {}
    return result


class SpeedProbe:
    """:func:`probe` in a child process on the bridge's CPU for the length of the calls."""

    def __init__(self, proc: asyncio.subprocess.Process | None) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cpus: set[int] | None) -> SpeedProbe:
        return cls(await _child(cpus, "--probe"))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def stop(self) -> list[tuple[float, float]]:
        """``[(time.monotonic(), ms), ...]`` of every probe so far; the child is ended.
        Stopping again returns ``[]``."""
        if self.proc is None:
            return []
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        out, _ = await proc.communicate()
        probes = []
        for line in out.decode("ascii", "replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                probes.append((float(entry["t"]), float(entry["ms"])))
        return probes


class MachineProbe:
    """``--machine-probe`` in one load test: :meth:`start` just before the calls (the
    reference, then the probe), :meth:`finish` just after them (the probes, then the
    reference again), :meth:`fields` for the report; :meth:`stop` in ``finally``."""

    name = PROBE

    def __init__(self, cpus: set[int] | None) -> None:
        self.cpus = cpus
        self.speed: dict[str, dict[str, float]] = {}
        self.probe = SpeedProbe(None)
        self.probes: list[tuple[float, float]] = []

    async def start(self) -> int | None:
        """The reference, then the probe started; the probe's pid (its CPU time is the
        test's own, not other load), None if it could not start."""
        self.speed["before"] = await speed_reference(self.cpus)
        self.probe = await SpeedProbe.start(self.cpus)
        return self.probe.pid

    async def finish(self, since: float) -> None:
        """The probe stopped (its times kept as seconds since ``since``, the run's start),
        then the reference again."""
        self.probes = [(t - since, ms) for t, ms in await self.probe.stop()]
        self.speed["after"] = await speed_reference(self.cpus)

    async def stop(self) -> None:
        await self.probe.stop()  # a no-op once stopped

    def fields(self, samples: list[dict[str, Any]], calls: int) -> dict[str, Any]:
        """The report's ``machine`` fields (see the module docstring); each of
        ``samples`` gets its ``probe_ms``."""
        return {
            "speed_reference_ms": self.speed,
            "speed_probe": probe_summary(self.probes, samples, self.speed, calls),
        }


def probe_summary(
    probes: list[tuple[float, float]],
    samples: list[dict[str, Any]],
    speed: dict[str, dict[str, float]],
    calls: int | None = None,
) -> dict[str, Any]:
    """The speed probe over the run (times in ``probes`` are seconds since the run's
    start): ``fast_ms`` (the reference's loop scaled to the probe's size, or the fastest
    probe if faster), ``p50_ms``, ``max_ms``, and ``slow_share``, the share of probes
    :data:`SLOW_PROBE` times slower than ``fast_ms``. Each CPU sample gets the
    ``probe_ms`` taken in the same second, when there is one.

    With ``calls``, the seconds in which all of them were up are split by the probe:
    ``full_fast``/``full_slow`` give each part's ``seconds`` and the bridge's mean
    ``cpu_pct`` in them (None without such seconds), so a run's cost can be read apart
    from the machine's slow spells. Reported only: no verdict uses it."""
    if not probes:
        return {}
    values = sorted(ms for _, ms in probes)
    fast = values[0]
    reference = speed.get("before", {}).get("python_ms")
    if reference:
        fast = min(fast, reference * PROBE_LOOPS / PYTHON_LOOPS)
    slow_ms = SLOW_PROBE * fast
    for sample in samples:
        near = [ms for t, ms in probes if sample["t"] - 1.0 < t <= sample["t"]]
        if near:
            sample["probe_ms"] = near[-1]
    summary: dict[str, Any] = {
        "count": len(values),
        "fast_ms": round(fast, 3),
        "p50_ms": values[len(values) // 2],
        "max_ms": values[-1],
        "slow_share": round(sum(ms > slow_ms for ms in values) / len(values), 3),
    }
    if calls is not None:
        full = [s for s in samples if s.get("active") == calls and "probe_ms" in s]
        for name, slow in (("full_fast", False), ("full_slow", True)):
            pcts = [s["cpu_pct"] for s in full if (s["probe_ms"] > slow_ms) is slow]
            summary[name] = {
                "seconds": len(pcts),
                "cpu_pct": round(sum(pcts) / len(pcts), 1) if pcts else None,
            }
    return summary


# --------------------------------------------------------------------------- in the text


def speed_text(speed: dict[str, dict[str, float]]) -> str:
    """The speed reference for the text report ("" when it did not run)."""
    parts = [
        f"{when} {ref['python_ms']:.1f}/{ref['loopback_ms']:.1f}"
        for when, ref in speed.items()
        if ref
    ]
    return f"; speed reference python/loopback ms {', '.join(parts)}" if parts else ""


def probe_text(probe: dict[str, Any]) -> str:
    """The speed probe for the text report ("" when it did not run)."""
    if not probe:
        return ""
    text = (
        f"; during the calls the probe ran slow (> {SLOW_PROBE:g} x {probe['fast_ms']:.2f} ms) "
        f"in {100 * probe['slow_share']:.0f} % of {probe['count']} seconds"
    )
    parts = [
        f"{part['cpu_pct']:.1f} % of a core in its {part['seconds']} {name} "
        + ("second" if part["seconds"] == 1 else "seconds")
        for name, part in (("fast", probe.get("full_fast")), ("slow", probe.get("full_slow")))
        if part and part["cpu_pct"] is not None
    ]
    if parts:
        text += f"; with all calls up, the bridge used {' and '.join(parts)}"
    return text


def machine_text(machine: dict[str, Any]) -> str:
    """What the machine line of a report adds for the probe ("" without it)."""
    return speed_text(machine.get("speed_reference_ms", {})) + probe_text(
        machine.get("speed_probe", {})
    )


def step_text(report: dict[str, Any]) -> str:
    """What a find-max or sweep step line adds for the probe ("" without it)."""
    probe = report.get("machine", {}).get("speed_probe", {})
    return f"  CPU slow {100 * probe['slow_share']:.0f} % of s" if probe else ""


def slow_shares(steps: list[dict[str, Any]]) -> list[float]:
    """Each step's ``slow_share`` (the steps the speed probe ran in)."""
    return [
        s["machine"]["speed_probe"]["slow_share"]
        for s in steps
        if s.get("machine", {}).get("speed_probe")
    ]


def find_max_text(steps: list[dict[str, Any]]) -> list[str]:
    """The line find-max's result adds for the probe (none without it)."""
    slow = slow_shares(steps)
    if not slow:
        return []
    # The same build and command have given 150 and 102 an hour apart on a shared VM
    # (docs/performance.md): say how fast the machine was while this one ran.
    return [
        f"the CPU itself ran slow in {100 * min(slow):.0f}-{100 * max(slow):.0f} % of "
        "each step's seconds (speed probe); compare only results made at similar speed"
    ]


def sweep_cells(steps: list[dict[str, Any]]) -> tuple[str, list[str]] | None:
    """The sweep table's "CPU slow" column: its heading and one cell per step; None when
    the steps ran without ``--machine-probe`` (no column)."""
    if not any("speed_probe" in s.get("machine", {}) for s in steps):
        return None
    cells = []
    for s in steps:
        slow = s["machine"].get("speed_probe", {}).get("slow_share")
        cells.append(f"{100 * slow:6.0f} %  " if slow is not None else "       -  ")
    return "CPU slow  ", cells


def plot_text(steps: list[dict[str, Any]]) -> str:
    """What the sweep plot's title adds for the probe ("" without it)."""
    slow = slow_shares(steps)
    if not slow:
        return ""
    return f"; the CPU ran slow in {100 * min(slow):.0f}-{100 * max(slow):.0f} % of seconds"


if __name__ == "__main__":
    raise SystemExit(main())
