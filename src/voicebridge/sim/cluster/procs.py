"""Child processes of the simulators (the cluster harness, the load test): how each is
launched (:func:`launch`), stopped (:meth:`Proc.stop`) and looked at (:func:`process_tree`,
:func:`tcp_peers`).

Every child starts as a tiny Python launcher that asks the kernel to SIGKILL it when this
process dies (``PR_SET_PDEATHSIG`` survives ``execv``), optionally pins itself to CPUs (every
thread of the program inherits the affinity), and then becomes the real program in place
(same pid). So a harness killed by SIGKILL, or a test run stopped with Ctrl-C, leaves no
redis-server, haproxy or bridge behind. Each child leads its own process group;
:meth:`Proc.stop` signals the group, so a bridge's worker processes go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

__all__ = ["Proc", "launch", "pid_alive", "process_tree", "tcp_peers"]

# argv: <parent pid> <CPUs, comma-separated, or ""> <program> <argv0> <args...>. The
# getppid() check covers a parent that died before prctl ran.
_LAUNCHER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(70)
if sys.argv[2]:
    os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})
os.execv(sys.argv[3], sys.argv[4:])
"""


class Proc:
    """One child process leading its own process group; output goes to ``log_path``."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the child's output ("" if there is none)."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself (not its group); a no-op once it exited."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def wait(self, timeout_s: float | None = None) -> int:
        """Its exit status; ``TimeoutError`` after ``timeout_s`` wall seconds."""
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to the group, then SIGKILL ``grace_s`` later; then SIGKILL whatever the
        leader left in its group. A child reading a stdin pipe gets its EOF first, and
        ``grace_s`` to exit by itself. Idempotent."""
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace_s)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


async def launch(
    name: str,
    program: str,
    args: list[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    cpus: set[int] | None = None,
    pipes: bool = False,
    pipe_limit: int = 2**16,
) -> Proc:
    """Start ``program args...`` (``program``: an absolute path) through the launcher, in
    a new session, on ``cpus`` (None: any), output to ``log_path`` (appended). ``pipes``:
    stdin and stdout are pipes (lines up to ``pipe_limit`` bytes), only stderr is logged;
    otherwise stdin is closed and stdout goes to the log too."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = await asyncio.to_thread(open, log_path, "ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LAUNCHER,
            str(os.getpid()),
            ",".join(str(c) for c in sorted(cpus or ())),
            program,
            program,
            *args,
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else log,
            stderr=log,
            env=env,
            cwd=cwd,
            start_new_session=True,
            limit=pipe_limit,
        )
    finally:
        log.close()  # the child has its own descriptor
    return Proc(name, proc, log_path)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        if pid_alive(current):
            out.append(current)
        todo.extend(children.get(current, []))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def tcp_peers(pids: list[int], remote_port: int) -> list[int]:
    """Local ports of the established IPv4 TCP connections that any of ``pids`` holds to
    ``127.0.0.1:remote_port`` (from ``/proc/net/tcp``): e.g. a bridge's Redis
    connections, to kill exactly those with ``CLIENT KILL ADDR``."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    ports: list[int] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state != "01" or inode not in inodes:  # 01: ESTABLISHED
                continue
            if int(remote.split(":")[1], 16) == remote_port:
                ports.append(int(local.split(":")[1], 16))
    return sorted(ports)
