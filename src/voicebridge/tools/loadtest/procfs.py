"""What Linux's ``/proc`` says about a process and the machine: the one place the load test
and its soak checks read it.

* per process — CPU seconds (:func:`cpu_seconds`), memory (:func:`memory_mb`: RSS and
  peak RSS), OS threads (:func:`threads`), time its event loop waited for a CPU
  (:func:`runqueue_wait_s`), and its open descriptors with each TCP socket labelled by
  the process at the other end (:func:`describe_fds`);
* the machine — CPU time of tasks, interrupts and steal per CPU (:func:`cpu_times`) and
  the CPU model (:func:`cpu_model`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections import Counter
from pathlib import Path
from typing import Any

# The status and memory readers are the bridge's own (voicebridge.diagnostics, behind its
# /debug/stats): one RSS reader for the bridge and the load test.
from voicebridge.diagnostics import memory_mb as memory_mb
from voicebridge.diagnostics import proc_status as status

# --------------------------------------------------------------------------- one process


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        # The command name (field 2) may hold spaces: split after its closing ")".
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> int:
    """OS threads of ``pid`` (the event loop, executor workers, library threads)."""
    return int(status(pid).get("Threads", 0))


def runqueue_wait_s(pid: int) -> float:
    """Seconds the main thread of ``pid`` — the event loop — was runnable but waiting for
    a CPU (``/proc/<pid>/schedstat``): time other processes took, which shows up as loop
    lag and latency the bridge's own code did not cause."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as fh:
        return int(fh.read().split()[1]) / 1e9


# --------------------------------------------------------------------------- the machine


def cpu_times(cpus: set[int] | None = None) -> dict[str, float]:
    """CPU seconds since boot from ``/proc/stat``, summed over ``cpus`` (None: all):
    ``tasks`` (user + nice + system: what processes' own CPU times add up to), ``irq``
    (hard and soft interrupts, loopback networking included, charged to no process) and
    ``steal`` (taken by the hypervisor for other guests)."""
    out = {"tasks": 0.0, "irq": 0.0, "steal": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            name, *fields = line.split()
            if not name.startswith("cpu"):
                break
            if (cpus is None and name != "cpu") or (cpus is not None and name[3:] == ""):
                continue
            if cpus is not None and int(name[3:]) not in cpus:
                continue
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            out["tasks"] += (user + nice + system) / tick
            out["irq"] += (irq + softirq) / tick
            out["steal"] += steal / tick
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- descriptors

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}
_SOCKET = re.compile(r"^socket:\[(\d+)\]$")


def tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for the TCP sockets of ``pid``'s
    network namespace (``/proc/<pid>/net/tcp`` and ``tcp6``)."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}", encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    f = line.split()
                    local, remote, state, inode = f[1], f[2], f[3], int(f[9])
                    if inode:
                        table[inode] = (
                            int(local.rsplit(":", 1)[1], 16),
                            int(remote.rsplit(":", 1)[1], 16),
                            _TCP_STATES.get(state, state),
                        )
        except OSError:
            continue
    return table


def fd_targets(pid: int) -> list[str]:
    """What each open descriptor of ``pid`` points at (``readlink``); closed-meanwhile
    descriptors are skipped."""
    out: list[str] = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    return out


def _inodes(targets: list[str]) -> set[int]:
    return {int(m[1]) for t in targets if (m := _SOCKET.match(t))}


def _kind(target: str, log_dir: Path | None) -> str:
    """What a descriptor that is not a socket points at, as :func:`describe_fds` counts it."""
    if target.startswith("anon_inode:"):
        return target
    if target.startswith("pipe:"):
        return "pipe"
    if log_dir is not None and target.startswith(str(log_dir)):
        return "call log"
    return "file"


def describe_fds(
    pid: int, listen_port: int, others: dict[str, int], log_dir: Path | None = None
) -> dict[str, Any]:
    """The open descriptors of ``pid`` (a server listening on ``listen_port``).

    ``total``; ``kinds`` (``socket``, ``pipe``, ``anon_inode:[eventpoll]``..., ``call
    log`` for files under ``log_dir``, ``file`` for other files); ``tcp``, each TCP
    socket labelled ``listening``, ``from <process>`` (accepted on ``listen_port``) or
    ``to <process>``, where the process owning the other end is looked up among
    ``others`` (name -> pid), with the state appended when not ESTABLISHED; and
    ``close_wait``, sockets the peer closed and ``pid`` never did (a leak)."""
    targets = fd_targets(pid)
    table = tcp_table(pid)
    port_owner: dict[int, str] = {}
    for name, other in others.items():
        for inode in _inodes(fd_targets(other)):
            if inode in table:
                port_owner[table[inode][0]] = name
    kinds: Counter[str] = Counter()
    tcp: Counter[str] = Counter()
    for target in targets:
        match = _SOCKET.match(target)
        if match is None:
            kinds[_kind(target, log_dir)] += 1
            continue
        kinds["socket"] += 1
        entry = table.get(int(match[1]))
        if entry is None:
            tcp["not tcp (unix, udp)"] += 1
            continue
        local, remote, state = entry
        if state == "LISTEN":
            tcp["listening"] += 1
            continue
        label = f"{'from' if local == listen_port else 'to'} {port_owner.get(remote, '?')}"
        tcp[label if state == "ESTABLISHED" else f"{label} ({state})"] += 1
    return {
        "total": len(targets),
        "kinds": dict(sorted(kinds.items())),
        "tcp": dict(sorted(tcp.items())),
        "close_wait": sum(n for k, n in tcp.items() if "CLOSE_WAIT" in k),
    }
