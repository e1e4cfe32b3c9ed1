"""A fixed workload that times the machine, not the build: the load test's speed reference.

On the shared machines this project is measured on, the same build has needed 5.0 and
5.9 ms of bridge CPU per call-second an hour apart, with no other load visible and no
steal reported. ``voicebridge loadtest`` therefore runs this workload on the bridge's CPU
just before the calls and just after them, and reports both timings beside its figures:
two runs can then be told apart by what changed in the code and what changed in the
machine.

The workload never changes with the code under test, and has the two parts the bridge's
CPU goes to (docs/performance.md, "Where the time goes"):

* ``python_ms`` — an interpreter loop of dict, string and function-call work;
* ``loopback_ms`` — 1.3 KB round trips (the size of a media frame) over a loopback TCP
  connection: system calls and the kernel's TCP path, as each WebSocket message costs.

Each part runs :data:`REPEATS` times and the fastest is kept: an interrupted repeat is
slower, never faster. Run as ``python -m voicebridge.tools.speedref [--cpu N]``; it
prints one JSON object.

With ``--probe``, it runs during the calls instead: once a second, the CPU time
(``time.thread_time``) of a small fixed loop (:data:`PROBE_LOOPS`, ~3 ms), one JSON line
``{"t": time.monotonic(), "ms": x}`` each, until it is stopped. It is CPU time, not wall
time, so waiting for the CPU does not count; what does is the CPU itself running slower
(or the hypervisor taking it away unreported), which makes the bridge's own work cost
more CPU in the same seconds. The probe runs under ``SCHED_IDLE`` where Linux has it,
so it only ever takes the CPU when the bridge leaves it idle: it never delays the
bridge's event loop.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Callable

REPEATS = 5
PYTHON_LOOPS = 300_000
PROBE_LOOPS = 15_000
ROUND_TRIPS = 5_000
MESSAGE = b"x" * 1_300


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
    parser = argparse.ArgumentParser(prog="python -m voicebridge.tools.speedref")
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


if __name__ == "__main__":
    raise SystemExit(main())
