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
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

REPEATS = 5
PYTHON_LOOPS = 300_000
ROUND_TRIPS = 5_000
MESSAGE = b"x" * 1_300


def _python_part() -> int:
    table: dict[int, int] = {}
    total = 0
    for i in range(PYTHON_LOOPS):
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


def _fastest_ms(part: object) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        part()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000.0, 2)


def measure() -> dict[str, float]:
    """``{"python_ms": x, "loopback_ms": y}`` in this process, on its current CPUs."""
    return {"python_ms": _fastest_ms(_python_part), "loopback_ms": _fastest_ms(_loopback_part)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebridge.tools.speedref")
    parser.add_argument("--cpu", type=int, help="run on this CPU only")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    print(json.dumps(measure()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
