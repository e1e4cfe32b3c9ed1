"""The processes a load test starts: how each is launched (:func:`spawn`, :class:`Child`),
on which CPUs (:func:`cpu_plan`), and the bridge's environment (:func:`bridge_env`).

Processes are launched and stopped as the cluster harness's are
(:mod:`voicebridge.sim.cluster.procs`: stdin EOF, SIGTERM, then SIGKILL to each process
group; each child is killed by the kernel if this process dies first), so no run leaves
orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicebridge.sim.cluster.procs import Proc, launch
from voicebridge.tools.loadtest.loadgen import LINE_LIMIT

if TYPE_CHECKING:
    from voicebridge.tools.loadtest.acs_router import AcsRouter
    from voicebridge.tools.loadtest.options import LoadOptions

EMULATOR_KEY = "loadtest-emulator-key"
MODEL = "gpt-realtime"


class Child(Proc):
    """A child process leading its own process group (:class:`Proc`: launched with
    ``PR_SET_PDEATHSIG``, stopped by group); :meth:`stop` ends the group.

    Load-side workers speak the line protocol of
    :mod:`voicebridge.tools.loadtest.loadgen` on stdin/stdout (they exit by themselves at
    stdin EOF); everything a child writes to stderr goes to ``log_path``.
    """

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
                f"{self.name} exited (status {self.proc.returncode}):\n{self.log_tail(15)}"
            )
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}\n{self.log_tail(15)}")
        return reply


async def spawn(
    name: str,
    args: list[str],
    *,
    workdir: Path,
    cpus: set[int] | None,
    env: dict[str, str] | None = None,
    protocol: bool = True,
) -> Child:
    """``python <args>`` (:func:`~voicebridge.sim.cluster.procs.launch`), cwd ``workdir``
    (never the caller's directory: its ``.env`` must not configure the bridge), on
    ``cpus`` (None: any), logging to ``workdir/<name>.log``. ``protocol``: stdin/stdout
    are pipes for the line protocol; otherwise stdout is logged with stderr."""
    log_path = workdir / f"{name}.log"
    log_path.unlink(missing_ok=True)
    proc = await launch(
        name,
        sys.executable,
        args,
        log_path=log_path,
        env=env,
        cwd=workdir,
        cpus=cpus,
        pipes=protocol,
        pipe_limit=LINE_LIMIT,
    )
    return Child(name, proc.proc, log_path)


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
