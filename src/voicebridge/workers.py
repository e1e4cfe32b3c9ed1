"""``voicebridge serve --workers N``: N worker processes per container, each its own node.

The parent is a small supervisor — no event loop, no app, no Azure clients. It starts
N workers by re-executing ``python -m voicebridge serve --worker-of <pid>`` (a fresh
interpreter each: forking an initialised event loop or SDK client is not safe), and:

* **SIGTERM** (a scale-in or a revision rollout) is forwarded to every worker, which
  drains its live calls (:class:`voicebridge.server.DrainingServer`); the supervisor
  waits for all of them and exits 0.
* A **second SIGTERM, or SIGINT**, forwards SIGINT: the workers exit at once (live
  calls cut). Each further signal forwards SIGINT again (uvicorn's "force quit").
* A worker that **dies unexpectedly** (any exit not asked for, SIGKILL by the OOM
  killer included) is restarted after a back-off — 0.5 s, doubling to 10 s while it
  keeps dying young — with a log line naming its exit status. Never while draining.

Each worker binds its **own** listening socket on the same host:port with
``SO_REUSEPORT``; the kernel spreads new connections over the workers by a hash of
the connection's addresses. Why not ``uvicorn --workers`` (0.54): its workers run a
plain ``uvicorn.Server``, so the drain on SIGTERM is lost (every media WebSocket closes
with 1012 at each rollout), and they share one parent-bound accept socket, which
spreads long-lived WebSockets unevenly — measured on the test machine with 400
connections over 4 workers: 44-146 per worker from the shared socket, 92-109 with
``SO_REUSEPORT`` (with 2 workers and 300 connections the two were alike). Caveat: a
worker that stops listening drops the connections still in its own accept queue,
unless ``net.ipv4.tcp_migrate_req=1``.

If the supervisor itself dies (even by SIGKILL), Linux sends each worker SIGTERM
(``PR_SET_PDEATHSIG``): they drain and exit rather than hold the port.

Each worker is a distinct node: ``Settings.node_name`` defaults to ``<hostname>/<pid>``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Settings.workers' upper bound.
MAX_WORKERS = 64
#: Restart back-off of a worker slot: first delay, ceiling, and the uptime after which
#: a death counts as a fresh one (the delay starts again from the first).
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_S = 30.0
#: The exit status of a worker that cannot bind its port (uvicorn's STARTUP_FAILURE).
STARTUP_FAILURE = 3
#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------- how many


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """CPUs allowed by the cgroup v2 ``cpu.max`` quota of this process's cgroup or any of
    its parents, rounded up (a 1.5-CPU quota is 2 busy workers' worth); None without one."""
    try:
        lines = membership.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:  # not cgroup v2
        return None
    limits: list[int] = []
    folder = root / path.lstrip("/")
    while folder == root or root in folder.parents:
        with contextlib.suppress(OSError, ValueError):
            quota, period = (folder / "cpu.max").read_text(encoding="ascii").split()[:2]
            if quota != "max":
                limits.append(max(1, math.ceil(int(quota) / int(period))))
        folder = folder.parent
    return min(limits, default=None)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity), capped by a cgroup v2 quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_limit()
    return min(cpus, quota) if quota is not None else cpus


def parse_count(text: str) -> int:
    """``--workers``: a number from 1 to 64, or ``auto`` (:func:`available_cpus`)."""
    if text.strip().lower() == "auto":
        return min(available_cpus(), MAX_WORKERS)
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_WORKERS} (or 'auto'): {count}")
    return count


# ---------------------------------------------------------------- the worker's side


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` that other workers may bind too
    (``SO_REUSEPORT``); raises OSError if it cannot. It is not listening yet: uvicorn's
    ``create_server`` listens once the app's start-up is over, so the kernel hands this
    worker no connection before it can answer (a restarted worker's first seconds)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def port_is_free(host: str, port: int) -> None:
    """Raise OSError if something already listens on ``host:port`` — another program,
    or a voicebridge whose workers the new ones would silently share the port with."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind(address)  # no SO_REUSEPORT: fails on any listener, ours included


def die_with_supervisor(supervisor_pid: int) -> bool:
    """Ask Linux to SIGTERM this worker (a drain) when its supervisor dies, even by
    SIGKILL, so no worker is left holding the port. False if it is already gone."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == supervisor_pid


# ---------------------------------------------------------------- the supervisor


def exit_status(returncode: int) -> str:
    """``exit status 1`` / ``killed by SIGKILL``, from a Popen returncode."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def restart_delay(last_s: float | None, uptime_s: float) -> float:
    """Seconds before restarting a worker that died after ``uptime_s``; ``last_s``: the
    delay before its previous restart (None: never restarted)."""
    if last_s is None or uptime_s >= BACKOFF_RESET_S:
        return BACKOFF_MIN_S
    return min(last_s * 2, BACKOFF_MAX_S)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    started: float  # time.monotonic()


class Supervisor:
    """Keeps ``count`` workers running ``command``; see the module docstring."""

    def __init__(self, command: Sequence[str], count: int) -> None:
        self.command = list(command)
        self.count = count
        self.live: dict[int, Worker] = {}  # slot -> its running worker
        self.due: dict[int, float] = {}  # slot -> when to restart it (monotonic)
        self.delay: dict[int, float] = {}  # slot -> the delay of its last restart
        self.starts: dict[int, int] = {}  # slot -> how many workers it has started
        self.state = "running"  # -> "draining" (SIGTERM) -> "stopping" (SIGINT)
        self._signals: collections.deque[int] = collections.deque()

    def run(self) -> int:
        """Start the workers; return 0 once all have exited after a SIGTERM/SIGINT."""
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            for slot in range(self.count):
                self._start(slot)
            while self.live or self.due:
                self._sleep(wake_r)
                self._handle_signals()
                self._reap()
                self._restart_due()
        finally:
            for worker in self.live.values():  # only after a bug: leave nothing behind
                worker.proc.terminate()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        log.info("supervisor: all workers have exited")
        return 0

    def _on_signal(self, sig: int, frame: object) -> None:
        self._signals.append(sig)  # acted on by the main loop; the wake-up fd woke it

    def _sleep(self, wake_r: int) -> None:
        """Until a signal (SIGCHLD included) or the next restart is due."""
        timeout = max(0.0, min(self.due.values()) - time.monotonic()) if self.due else None
        select.select([wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake_r, 512):
                pass

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig == signal.SIGCHLD:
                continue
            self.due.clear()  # nothing is restarted once asked to stop
            if sig == signal.SIGTERM and self.state == "running":
                self.state = "draining"
                forward = signal.SIGTERM
            else:
                self.state = "stopping"
                forward = signal.SIGINT
            log.warning(
                "supervisor: %s: sending %s to %d worker(s) (%s)",
                signal.Signals(sig).name,
                forward.name,
                len(self.live),
                "each drains its calls" if forward == signal.SIGTERM else "exit at once",
            )
            for worker in self.live.values():
                worker.proc.send_signal(forward)

    def _reap(self) -> None:
        now = time.monotonic()
        for slot, worker in list(self.live.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            del self.live[slot]
            pid, uptime = worker.proc.pid, now - worker.started
            if self.state != "running":
                log.info("worker %d (pid %d) exited (%s)", slot, pid, exit_status(code))
                continue
            self._schedule(slot, uptime)
            log.error(
                "worker %d (pid %d) exited unexpectedly (%s) after %.1f s; restarting in %.1f s",
                slot,
                pid,
                exit_status(code),
                uptime,
                self.delay[slot],
            )

    def _schedule(self, slot: int, uptime_s: float) -> None:
        self.delay[slot] = restart_delay(self.delay.get(slot), uptime_s)
        self.due[slot] = time.monotonic() + self.delay[slot]

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, due in list(self.due.items()):
            if due <= now:
                del self.due[slot]
                self._start(slot)

    def _start(self, slot: int) -> None:
        self.starts[slot] = self.starts.get(slot, 0) + 1
        env = dict(os.environ)
        base = env.get("NODE_ID")
        if base:  # each worker process is its own node; a restarted one is a new node
            env["NODE_ID"] = f"{base}/w{slot}.{self.starts[slot]}"
        try:
            proc = subprocess.Popen(self.command, env=env)
        except OSError as exc:
            self._schedule(slot, 0.0)
            log.error("worker %d not started (%s); retrying in %.1f s", slot, exc, self.delay[slot])
            return
        self.live[slot] = Worker(proc, time.monotonic())
        log.info("worker %d started (pid %d)", slot, proc.pid)


def supervise(
    count: int, host: str, port: int, *, program: Sequence[str] = ("-m", "voicebridge", "serve")
) -> int:
    """``voicebridge serve`` with ``count`` > 1 workers on ``host:port``: the
    supervisor's exit status (3 if the port is taken). ``program``: how a worker is run
    after ``python`` (the simulator's scaled-clock server passes its own)."""
    try:
        port_is_free(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return STARTUP_FAILURE
    command = [sys.executable, *program, "--host", host, "--port", str(port)]
    command += ["--worker-of", str(os.getpid())]
    log.info(
        "supervisor (pid %d): %d workers on %s:%d, each with its own SO_REUSEPORT socket",
        os.getpid(),
        count,
        host,
        port,
    )
    return Supervisor(command, count).run()
