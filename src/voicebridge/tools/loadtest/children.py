"""The processes a load test starts: how each is launched (:func:`spawn`, :class:`Child`),
on which CPUs (:func:`cpu_plan`), and the bridge's environment (:func:`bridge_env`).

Processes are stopped with stdin EOF, SIGTERM, then SIGKILL to each process group
(:meth:`Child.stop`), and each child asks the kernel to kill it if this process dies
first (see :data:`_LAUNCHER`), so no run leaves orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicebridge.tools.loadtest.loadgen import LINE_LIMIT

if TYPE_CHECKING:
    from voicebridge.tools.loadtest.acs_router import AcsRouter
    from voicebridge.tools.loadtest.options import LoadOptions

EMULATOR_KEY = "loadtest-emulator-key"
MODEL = "gpt-realtime"

# Every child starts as this script and then becomes the real command in place (execv:
# same pid). PR_SET_PDEATHSIG survives exec, so the kernel kills the child if this
# process dies, even by SIGKILL; the getppid() check covers a parent that died before
# prctl ran. Affinity is set before exec so every thread of the command inherits it.
_LAUNCHER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(70)
if sys.argv[2]:
    os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})
os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
"""


class Child:
    """A child process leading its own process group; :meth:`stop` ends the group.

    Load-side workers speak the line protocol of
    :mod:`voicebridge.tools.loadtest.loadgen` on stdin/stdout; everything a child writes
    to stderr goes to ``log_path``.
    """

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def receive(self, timeout_s: float) -> dict[str, Any]:
        """The next reply; ``RuntimeError`` if the child reported an error, died, or
        said nothing for ``timeout_s``."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: no reply within {timeout_s:.0f} s") from None
        if not line:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2)
            raise RuntimeError(
                f"{self.name} exited (status {self.proc.returncode}):\n{self.log_tail()}"
            )
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}\n{self.log_tail()}")
        return reply

    async def stop(self, grace_s: float = 5.0) -> None:
        """End the process group: workers get stdin EOF first (they exit by themselves),
        then every child SIGTERM, then SIGKILL, ``grace_s`` apart."""
        proc = self.proc
        steps = [0, signal.SIGTERM, signal.SIGKILL]
        if proc.stdin is None:
            steps.remove(0)
        elif not proc.stdin.is_closing():
            proc.stdin.close()
        for sig in steps:
            if proc.returncode is not None:
                break
            if sig:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the leader left in its group


async def spawn(
    name: str,
    args: list[str],
    *,
    workdir: Path,
    cpus: set[int] | None,
    env: dict[str, str] | None = None,
    protocol: bool = True,
) -> Child:
    """``python <args>`` through :data:`_LAUNCHER`, in a new session, cwd ``workdir``
    (never the caller's directory: its ``.env`` must not configure the bridge), on
    ``cpus`` (None: any). ``protocol``: stdin/stdout are pipes for the line protocol;
    otherwise stdout is logged with stderr."""
    log_path = workdir / f"{name}.log"
    log = await asyncio.to_thread(open, log_path, "wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LAUNCHER,
            str(os.getpid()),
            ",".join(str(c) for c in sorted(cpus or ())),
            *args,
            stdin=asyncio.subprocess.PIPE if protocol else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if protocol else log,
            stderr=log,
            env=env,
            cwd=workdir,
            start_new_session=True,
            limit=LINE_LIMIT,
        )
    finally:
        log.close()  # the child has its own descriptor
    return Child(name, proc, log_path)


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """``(bridge CPUs, load-side CPUs)``: the last allowed CPU for the bridge alone, the
    others for everything else; ``(None, None)`` when not pinning or with one CPU."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return {allowed[-1]}, set(allowed[:-1])


def bridge_env(
    options: LoadOptions,
    *,
    port: int,
    voicelive: str,
    router: AcsRouter,
    access_key: str,
    resource_id: str,
    log_dir: Path,
) -> dict[str, str]:
    """The bridge's environment, as a deployment would set it.

    Every variable the bridge's Settings could read is dropped from the inherited
    environment first: a stray ``AGENT_NAME`` in the caller's shell must not change what
    is measured. ACS token validation stays on (it is part of what a call costs) and the
    concurrent-call limit is lifted above ``calls``. With ``leak_check``, the bridge
    serves the object census (``GET /debug/stats``: ``DEBUG_ENDPOINTS=true``).
    """
    from voicebridge.config import DEBUG_ENDPOINTS_ENV, Settings

    names: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None) or ([alias] if isinstance(alias, str) else [])
        names.update(str(choice).upper() for choice in choices)
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env |= {
        "VOICELIVE_ENDPOINT": voicelive,
        "VOICELIVE_API_KEY": EMULATOR_KEY,
        "VOICELIVE_MODEL": MODEL,
        "ACS_CONNECTION_STRING": f"endpoint={router.endpoint}/;accesskey={access_key}",
        "ACS_JWT_VALIDATION": "true",
        "ACS_RESOURCE_ID": resource_id,
        "ACS_JWT_ISSUER": router.issuer,
        "ACS_OPENID_CONFIG_URL": router.openid_config_url,
        "MAX_CONCURRENT_CALLS": str(max(100, 2 * options.calls)),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_DIR": str(log_dir),
        "LOG_LEVEL": "WARNING",
        "ACS_AUDIO_RATE": str(options.acs_rate),
        "VOICELIVE_AUDIO_RATE": str(options.voicelive_rate),
        # No call-control tools: the looped caller says goodbye now and then, and a call
        # the agent ends early would make call-seconds (what is measured) vary.
        "CALL_TOOLS": "none",
    }
    env |= options.bridge_env
    if options.leak_check:
        env[DEBUG_ENDPOINTS_ENV] = "true"
    return env
