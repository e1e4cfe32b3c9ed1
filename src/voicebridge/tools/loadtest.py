"""``voicebridge loadtest``: N concurrent simulated calls against ONE bridge process.

What runs where (everything binds 127.0.0.1 on free ports; nothing leaves loopback):

* **the bridge** — ``python -m voicebridge serve``, configured by environment variables
  as a deployment would be: one uvicorn process, one event loop, so at most one core.
  Its CPU time and peak RSS come from ``/proc/<pid>``; relay latency, event-loop lag,
  counters and outcomes from its own ``GET /api/stats`` once every call has ended.
* **the Voice Live emulator** and **``--generators K`` fake ACS callers** — worker
  processes of :mod:`voicebridge.tools.loadgen`. Callers play the shipped caller
  recording looped to ``--seconds``, each from a different point of it, so turns,
  answers and barge-ins are spread over time rather than hitting every call at once.
* **this process** — the orchestrator, and the one Call Automation endpoint the bridge
  is configured with (``ACS_CONNECTION_STRING``): :class:`AcsRouter` forwards each REST
  request to the generator that owns the call. Only call set-up, token keys and
  hang-up pass through it; media and callbacks go straight between a generator and
  the bridge.

**One core.** When the machine has two CPUs or more, the bridge is pinned to one of
them and every other process to the rest, so its figures are one-core figures and the
load side cannot take its time. Other tenants of the machine still can: the report says
how much CPU processes outside the test used and how long the bridge's event loop sat
runnable waiting for a CPU. Whether the load side kept up is measured too (its loop lag,
GC pauses, and how overdue the callers' frames were), not assumed.

**Units.** A *call-second* is one second of media-clock time of one call (frames sent
x 20 ms, counted by the callers), so costs compare across ``--speed`` and call lengths.
Latencies are wall-clock ms. :func:`summarise` documents every reported field.

**Faults and soak.** ``--fault NAME[=ARG]`` (repeatable) with ``--fault-fraction F``
gives a seeded share of the calls one fault each, the rest running normally; ``--soak``
is 100 calls x 60 s with :data:`~voicebridge.tools.soak.SOAK_FAULTS` sprinkled over 30 %
of them, and the leak checks: the bridge's tasks, descriptors and memory idle before the
first call against the same after the last one ended, every call's log and outcome, and
its stderr scanned for unhandled exceptions (:mod:`voicebridge.tools.soak`).

Processes are stopped in ``finally`` (stdin EOF, SIGTERM, SIGKILL to each process group),
and each child asks the kernel to kill it if this process dies first (see
:data:`_LAUNCHER`), so no run leaves orphans.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from voicebridge.sim.fake_acs import ISSUER
from voicebridge.tools import soak, speedref
from voicebridge.tools.loadgen import CLEAN_END, FRAME_S, LINE_LIMIT

_T = TypeVar("_T")

#: The bridge's environment switch for ``/api/stats?objects=1`` (an object census);
#: the same name as :data:`voicebridge.routes.health.CENSUS_ENV`, which imports FastAPI.
CENSUS_ENV = "VOICEBRIDGE_STATS_CENSUS"

EMULATOR_KEY = "loadtest-emulator-key"
MODEL = "gpt-realtime"
#: Pass mark for relay latency p99, per direction (issue 5).
P99_LIMIT_MS = 10.0
#: The load side kept up while its loop lag and caller-frame lateness (p99, ms) stay at
#: or under this: above it, frames reach the bridge in clumps and the figures describe
#: the generator as much as the bridge.
LOAD_SIDE_LIMIT_MS = 10.0
#: Wall seconds for a process to start listening, and for the bridge to wind its calls
#: down after the last caller hung up.
STARTUP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0


@dataclass
class LoadOptions:
    """One load test.

    ``seconds`` is caller audio per call (media-clock seconds); a call lasts a little
    longer, as the caller hangs up 1 s after the agent's last word. ``ramp_s`` spreads
    call starts evenly over that many wall seconds (``None``: ``min(5, seconds / 4)``).
    ``speed`` runs the bridge, the emulator and the callers that many times real time.
    ``bridge_env`` is added last to the bridge's environment (to compare settings).

    ``faults`` (``NAME[=ARG]`` specs), ``fault_fraction`` and ``fault_seed`` sprinkle
    faults over the calls (:func:`voicebridge.tools.soak.plan_faults`). ``leak_check``
    measures the bridge idle before the first call and ``settle_s`` after the last one
    ended, and scans its logs (:mod:`voicebridge.tools.soak`).
    """

    calls: int = 10
    seconds: float = 20.0
    ramp_s: float | None = None
    speed: float = 1.0
    generators: int = 1
    acs_rate: int = 16000
    voicelive_rate: int = 24000
    pin: bool = True
    bridge_env: dict[str, str] = field(default_factory=dict)
    p99_limit_ms: float = P99_LIMIT_MS
    progress: Callable[[str], None] | None = None
    faults: list[str] = field(default_factory=list)
    fault_fraction: float = soak.DEFAULT_FAULT_FRACTION
    fault_seed: int = 0
    leak_check: bool = False
    settle_s: float = soak.SETTLE_S

    @property
    def ramp(self) -> float:
        return min(5.0, self.seconds / 4) if self.ramp_s is None else self.ramp_s

    @property
    def timeout_s(self) -> float:
        """Wall seconds after the first call before a call that has not ended fails: the
        audio and the longest shipped answer at ``speed``, the ramp, and a wide margin."""
        return (self.seconds + 15.0) / self.speed + self.ramp + 60.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option that is out of range."""
        if self.calls < 1:
            raise ValueError("--calls must be at least 1")
        if self.seconds <= 0 or self.speed <= 0:
            raise ValueError("--seconds and --speed must be positive")
        if self.ramp < 0:
            raise ValueError("--ramp must not be negative")
        if not 1 <= self.generators <= 32:
            raise ValueError("--generators must be 1..32")
        if not 0.0 <= self.fault_fraction <= 1.0:
            raise ValueError("--fault-fraction must be within 0..1")
        if self.settle_s < 0:
            raise ValueError("--settle must not be negative")
        soak.parse_specs(self.faults, self.seconds)

    def fault_plan(self) -> list[soak.PlannedFault | None] | None:
        """Per call index its fault or None; None (no plan at all) without ``faults``."""
        if not self.faults:
            return None
        specs = soak.parse_specs(self.faults, self.seconds)
        return soak.plan_faults(self.calls, specs, self.fault_fraction, self.fault_seed)


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        # The command name (field 2) may hold spaces: split after its closing ")".
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """``{"rss": VmRSS, "hwm": VmHWM}`` of process ``pid`` in MB (VmHWM is peak RSS)."""
    out = {"rss": 0.0, "hwm": 0.0}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out["rss" if line.startswith("VmRSS") else "hwm"] = int(line.split()[1]) / 1024
    return out


def runqueue_wait_s(pid: int) -> float:
    """Seconds the main thread of ``pid`` — the event loop — was runnable but waiting for
    a CPU (``/proc/<pid>/schedstat``): time other processes took, which shows up as loop
    lag and latency the bridge's own code did not cause."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as fh:
        return int(fh.read().split()[1]) / 1e9


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


async def _speedref(cpus: set[int] | None, *args: str) -> asyncio.subprocess.Process | None:
    """``python -m voicebridge.tools.speedref`` on the first of ``cpus``, stdout piped;
    None if it cannot be started."""
    cmd = [sys.executable, "-m", "voicebridge.tools.speedref", *args]
    if cpus:
        cmd += ["--cpu", str(min(cpus))]
    try:
        return await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return None


async def speed_reference(cpus: set[int] | None) -> dict[str, float]:
    """:mod:`voicebridge.tools.speedref` in a child process on ``cpus`` (the bridge's,
    while it is idle): the machine's speed now, for comparing runs made at other times.
    An empty dict if it could not run (the report must not fail for want of it)."""
    proc = await _speedref(cpus)
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
    """``speedref --probe`` on the bridge's CPU for the length of the calls: once a second,
    the CPU time of a small fixed loop (:mod:`voicebridge.tools.speedref`)."""

    def __init__(self, proc: asyncio.subprocess.Process | None) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, cpus: set[int] | None) -> SpeedProbe:
        return cls(await _speedref(cpus, "--probe"))

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
                probe = json.loads(line)
                probes.append((float(probe["t"]), float(probe["ms"])))
        return probes


#: A probe this many times slower than the machine's fast figure counts as slow.
SLOW_PROBE = 1.4
#: The speed probe's name among the run's processes.
PROBE = "speed-probe"


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
        fast = min(fast, reference * speedref.PROBE_LOOPS / speedref.PYTHON_LOOPS)
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


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """``(bridge CPUs, load-side CPUs)``: the last allowed CPU for the bridge alone, the
    others for everything else; ``(None, None)`` when not pinning or with one CPU."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return {allowed[-1]}, set(allowed[:-1])


def _speed_text(speed: dict[str, dict[str, float]]) -> str:
    """The speed reference for the text report ("" when it did not run)."""
    parts = [
        f"{when} {ref['python_ms']:.1f}/{ref['loopback_ms']:.1f}"
        for when, ref in speed.items()
        if ref
    ]
    return f"; speed reference python/loopback ms {', '.join(parts)}" if parts else ""


def _probe_text(probe: dict[str, Any]) -> str:
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


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- child processes

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

    Load-side workers speak the line protocol of :mod:`voicebridge.tools.loadgen` on
    stdin/stdout; everything a child writes to stderr goes to ``log_path``.
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


def free_port() -> int:
    """A free loopback TCP port now (for a server whose URL must be known before it runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- ACS router

_CALL_PATH = re.compile(r"^/calling/callConnections/(?P<cid>[^/:]+)")
#: Requests that name a ringing call by its ``incomingCallContext``: only the generator
#: that placed the call knows it.
_BY_CONTEXT = ("/calling/callConnections:answer", "/calling/callConnections:reject")
_JWKS_PATH = "/calling/keys"
_OPENID_PATH = "/calling/.well-known/acsopenidconfiguration"
# Hop-by-hop and framing headers belong to each connection; everything else (Host,
# x-ms-date, x-ms-content-sha256, Authorization) is forwarded as is for the HMAC.
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te"})
_HOP_REPLY = _HOP | {"content-encoding", "date", "server"}


class AcsRouter:
    """One Call Automation endpoint in front of several fake ACS generators.

    Requests are forwarded with method, raw path, headers and body untouched, so the
    bridge's HMAC signature (over ``Host`` and the path; every generator has the same
    access key) verifies at the generator. ``:answer`` and ``:reject`` go to every
    generator at once and the reply of the one that knows the ``incomingCallContext`` is
    returned — the others answer 400 and change nothing; the call connection id in an
    answer routes that call's later requests. The router serves the OpenID configuration
    and a JWKS with every generator's signing key, so the bridge validates each
    generator's tokens as it would Call Automation's.

    It listens (:meth:`start`) before the generators are up, so the bridge can start
    alongside them; requests wait until :meth:`set_generators` has run.
    """

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self.generators: list[str] = []
        self.owner: dict[str, str] = {}  # call connection id -> generator
        self.endpoint = ""
        self._jwks: dict[str, Any] = {"keys": []}
        self._ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def openid_config_url(self) -> str:
        return self.endpoint + _OPENID_PATH

    async def start(self) -> None:
        """Listen on a free loopback port (:attr:`endpoint`)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.endpoint = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def set_generators(self, endpoints: list[str]) -> None:
        """Route to these fake ACS endpoints, and serve their signing keys."""
        assert self._session is not None
        for target in endpoints:
            async with self._session.get(target + _JWKS_PATH) as resp:
                resp.raise_for_status()
                self._jwks["keys"] += (await resp.json())["keys"]
        self.generators = list(endpoints)
        self._ready.set()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(self._ready.wait(), STARTUP_TIMEOUT_S)
        if request.method == "GET" and request.path == _JWKS_PATH:
            return web.json_response(self._jwks)
        if request.method == "GET" and request.path == _OPENID_PATH:
            config = {"issuer": self.issuer, "jwks_uri": self.endpoint + _JWKS_PATH}
            return web.json_response(config | {"id_token_signing_alg_values_supported": ["RS256"]})
        body = await request.read()
        if request.path in _BY_CONTEXT and len(self.generators) > 1:
            replies = await asyncio.gather(
                *(self._forward(target, request, body) for target in self.generators)
            )
            chosen = next((i for i, reply in enumerate(replies) if reply[0] < 400), 0)
            status, data, headers = replies[chosen]
            if status < 400 and data:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self.owner[json.loads(data)["callConnectionId"]] = self.generators[chosen]
        else:
            match = _CALL_PATH.match(request.path)
            target = self.owner.get(match["cid"], "") if match else ""
            status, data, headers = await self._forward(target or self.generators[0], request, body)
        return web.Response(status=status, body=data, headers=headers)

    async def _forward(
        self, target: str, request: web.Request, body: bytes
    ) -> tuple[int, bytes, CIMultiDict[str]]:
        assert self._session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        url = URL(target + request.raw_path, encoded=True)  # the path exactly as signed
        async with self._session.request(
            request.method, url, data=body, headers=headers, allow_redirects=False
        ) as resp:
            data = await resp.read()
            kept = ((k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_REPLY)
            return resp.status, data, CIMultiDict(kept)


# --------------------------------------------------------------------------- one run


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
    concurrent-call limit is lifted above ``calls``.
    """
    from voicebridge.config import Settings

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
        "MEDIA_CLOCK_SPEED": repr(float(options.speed)),
        "ACS_AUDIO_RATE": str(options.acs_rate),
        "VOICELIVE_AUDIO_RATE": str(options.voicelive_rate),
    }
    return env | options.bridge_env


def call_plan(
    options: LoadOptions, faults: list[soak.PlannedFault | None] | None = None
) -> list[list[dict[str, Any]]]:
    """Per generator, its calls (dealt round-robin): ``index``, ``start_s`` (evenly over
    the ramp, wall seconds after t0) and ``phase`` (where in the caller recording the call
    starts, evenly spread over it). With a fault plan (:meth:`LoadOptions.fault_plan`)
    every call also gets its ``call_connection_id`` (:func:`~voicebridge.tools.soak.call_ids`)
    and ``expect_end`` (caller-side ends that are clean for its fault), and a call with an
    ``acs-*`` fault its ``faults``."""
    plan: list[list[dict[str, Any]]] = [[] for _ in range(options.generators)]
    n = options.calls
    ids = soak.call_ids(n, options.fault_seed) if faults is not None else []
    for i in range(n):
        spec: dict[str, Any] = {"index": i, "start_s": options.ramp * i / n, "phase": i / n}
        if faults is not None:
            fault = faults[i]
            spec["call_connection_id"] = ids[i]
            spec["expect_end"] = list((fault.expected if fault else soak.DEFAULT_EXPECTED)[1])
            if fault is not None and fault.target == "acs":
                spec["faults"] = {fault.name: fault.value}
        plan[i % options.generators].append(spec)
    return plan


def voicelive_call_faults(
    options: LoadOptions, faults: list[soak.PlannedFault | None]
) -> dict[str, dict[str, Any]]:
    """The emulator's ``call_faults``: call connection id -> its ``voicelive-*`` fault."""
    ids = soak.call_ids(options.calls, options.fault_seed)
    return {
        ids[i]: {f.name: f.value}
        for i, f in enumerate(faults)
        if f is not None and f.target == "voicelive"
    }


async def _stats(
    session: aiohttp.ClientSession, base: str, objects: bool = False
) -> dict[str, Any]:
    async with session.get(f"{base}/api/stats" + ("?objects=1&trim=1" if objects else "")) as resp:
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json()
        return data


async def _wait_ready(session: aiohttp.ClientSession, base: str, bridge: Child) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if bridge.proc.returncode is not None:
            raise RuntimeError(f"the bridge exited during start-up:\n{bridge.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the bridge was not ready within {STARTUP_TIMEOUT_S:.0f} s")


async def _wait_settled(session: aiohttp.ClientSession, base: str, calls: int) -> dict[str, Any]:
    """``/api/stats`` once no call is active and ``calls`` calls have an outcome — each
    call's histograms and counters are merged before its outcome is recorded — or after
    :data:`SETTLE_TIMEOUT_S`, whatever it says then."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        stats = await _stats(session, base)
        ended = sum(stats.get("calls_by_outcome", {}).values())
        if (stats["active_calls"] == 0 and ended >= calls) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


async def run_load(options: LoadOptions) -> dict[str, Any]:
    """Run one load test in fresh processes and return its report (:func:`summarise`).

    Raises ``RuntimeError`` (with the failing process's log tail) if the test itself
    could not run. Every process is stopped before this returns or raises.
    """
    options.validate()
    say = options.progress or (lambda _msg: None)
    faults = options.fault_plan()
    workdir = Path(tempfile.mkdtemp(prefix="voicebridge-loadtest-"))
    children: list[Child] = []
    router: AcsRouter | None = None
    session: aiohttp.ClientSession | None = None
    probe = SpeedProbe(None)
    bridge_cpus, load_cpus = cpu_plan(options.pin)
    # One Call Automation resource, whichever generator placed a call: the HMAC key the
    # bridge signs with and the JWT audience it checks are shared.
    access_key = base64.b64encode(secrets.token_bytes(32)).decode()
    resource_id = str(uuid.uuid4())
    # This process is load side too (the router, the monitor): off the bridge's CPU.
    own_cpus = os.sched_getaffinity(0) if load_cpus else None
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    try:
        # Everything starts at once (imports take seconds): ports are chosen up front
        # and the router holds requests until the generators are known.
        router = AcsRouter()
        await router.start()
        port, voicelive_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        worker = ["-m", "voicebridge.tools.loadgen"]
        emu_config: dict[str, Any] = {
            "api_key": EMULATOR_KEY,
            "speed": options.speed,
            "port": voicelive_port,
        }
        if faults is not None:
            emu_config["call_faults"] = voicelive_call_faults(options, faults)
        emulator = await spawn(
            "emulator",
            [*worker, "emulator", json.dumps(emu_config)],
            workdir=workdir,
            cpus=load_cpus,
        )
        children.append(emulator)
        gen_config = {
            "access_key": access_key,
            "resource_id": resource_id,
            "acs_rate": options.acs_rate,
            "speed": options.speed,
        }
        for k in range(options.generators):
            children.append(
                await spawn(
                    f"generator-{k}",
                    [*worker, "generator", json.dumps(gen_config)],
                    workdir=workdir,
                    cpus=load_cpus,
                )
            )
        generators = children[1:]
        env = bridge_env(
            options,
            port=port,
            voicelive=f"http://127.0.0.1:{voicelive_port}",
            router=router,
            access_key=access_key,
            resource_id=resource_id,
            log_dir=workdir / "logs",
        )
        if options.leak_check:
            env[CENSUS_ENV] = "1"
        bridge = await spawn(
            "bridge",
            ["-m", "voicebridge", "serve"],
            workdir=workdir,
            cpus=bridge_cpus,
            env=env,
            protocol=False,
        )
        children.insert(0, bridge)
        await emulator.receive(STARTUP_TIMEOUT_S)
        await router.set_generators(
            [(await g.receive(STARTUP_TIMEOUT_S))["endpoint"] for g in generators]
        )
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await _wait_ready(session, base, bridge)
        say(
            f"bridge pid {bridge.pid} on {base}"
            + (f", pinned to CPU {min(bridge_cpus)}" if bridge_cpus else "")
            + f"; emulator pid {emulator.pid}; generator pid(s) {[g.pid for g in generators]}"
        )
        await asyncio.sleep(0.5)  # let start-up work (JWKS fetch, first imports) finish

        pids = {c.name: c.pid for c in children} | {"orchestrator": os.getpid()}
        client = session

        async def get_stats(objects: bool) -> dict[str, Any]:
            return await _stats(client, base, objects)

        target = soak.Target(
            pid=bridge.pid,
            port=port,
            log_dir=workdir / "logs",
            others={k: v for k, v in pids.items() if k != "bridge"},
            get_stats=get_stats,
        )
        idle_probe = await soak.probe(target, census=True) if options.leak_check else None
        speed_before = await speed_reference(bridge_cpus)
        probe = await SpeedProbe.start(bridge_cpus)
        if probe.pid is not None:  # its CPU is ours, not "other load"
            pids[PROBE] = probe.pid
        mem_idle = memory_mb(bridge.pid)
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wait_start = runqueue_wait_s(bridge.pid)
        machine_start, bridge_cpu_start = cpu_times(), cpu_times(bridge_cpus)
        wall_start = time.monotonic()
        emulator.send({"cmd": "mark"})
        run = {
            "cmd": "run",
            "t0": wall_start + 0.2,
            "webhook": f"{base}/api/incoming-call",
            "seconds": options.seconds,
            "timeout_s": options.timeout_s,
        }
        for generator, calls in zip(generators, call_plan(options, faults), strict=True):
            generator.send(run | {"calls": calls})
        waiting = [asyncio.create_task(g.receive(options.timeout_s + 30)) for g in generators]
        try:
            samples = await _monitor(waiting, session, base, bridge, say, wall_start)
        finally:
            for task in waiting:
                task.cancel()  # a no-op for those that replied
            await asyncio.gather(*waiting, return_exceptions=True)
        for task in waiting:
            if not task.cancelled() and task.exception() is not None:
                raise RuntimeError(str(task.exception()))
        replies = [task.result() for task in waiting]
        stats = await _wait_settled(session, base, options.calls)
        wall_s = time.monotonic() - wall_start
        cpu = {name: cpu_seconds(pid) - cpu_start[name] for name, pid in pids.items()}
        machine, on_bridge_cpu = cpu_times(), cpu_times(bridge_cpus)
        contention = {
            "bridge_runqueue_wait_s": runqueue_wait_s(bridge.pid) - wait_start,
            "machine_tasks_s": machine["tasks"] - machine_start["tasks"],
            "machine_irq_s": machine["irq"] - machine_start["irq"],
            "machine_steal_s": machine["steal"] - machine_start["steal"],
            "bridge_cpu_tasks_s": on_bridge_cpu["tasks"] - bridge_cpu_start["tasks"],
        }
        mem_end = memory_mb(bridge.pid)
        probes = await probe.stop()
        speed = {"before": speed_before, "after": await speed_reference(bridge_cpus)}
        emulator.send({"cmd": "stats", "by_call": faults is not None})
        emulator_stats = await emulator.receive(30)
        emulator_stats["rss_mb"] = memory_mb(pids["emulator"])["hwm"]
        checks: dict[str, Any] | None = None
        if options.leak_check or faults is not None:
            checks = {}
            if idle_probe is not None:
                # Nothing talks to the router once every call has ended: closing it
                # closes the bridge's pooled Call Automation connections from our side
                # (as Call Automation's idle timeout would), and the generators have
                # closed their callback connections likewise (loadgen.generator). The
                # bridge must then release those sockets; one it keeps shows as
                # CLOSE_WAIT.
                await router.stop()
                say(f"all calls ended; settling ({options.settle_s:g} s, then until idle)")
                settled = await soak.settle(target, idle_probe, settle_s=options.settle_s)
                checks["leaks"] = soak.leak_report(
                    idle_probe,
                    settled,
                    calls=options.calls,
                    peak_rss_mb=memory_mb(bridge.pid)["hwm"],
                )
            checks["call_logs"] = soak.read_call_logs(workdir / "logs")
            checks["bridge_log"] = soak.scan_bridge_log(
                bridge.log_path, _faults_by_call(replies, faults)
            )
        return summarise(
            options,
            stats=stats,
            generators=replies,
            emulator=emulator_stats,
            cpu=cpu,
            wall_s=wall_s,
            memory={"idle": mem_idle, "end": mem_end},
            samples=samples,
            contention=contention,
            pinned={"bridge": sorted(bridge_cpus or ()), "load": sorted(load_cpus or ())},
            speed=speed,
            probes=[(t - wall_start, ms) for t, ms in probes],
            faults=faults,
            checks=checks,
        )
    finally:
        await probe.stop()  # a no-op once stopped
        await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)
        if session is not None:
            await session.close()
        if router is not None:
            await router.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if own_cpus:
            os.sched_setaffinity(0, own_cpus)


def _faults_by_call(
    replies: list[dict[str, Any]], faults: list[soak.PlannedFault | None] | None
) -> dict[str, soak.PlannedFault | None]:
    """Call connection id and correlation id of every call -> its fault (or None)."""
    out: dict[str, soak.PlannedFault | None] = {}
    for reply in replies:
        for c in reply["calls"]:
            fault = faults[int(c["index"])] if faults is not None else None
            for key in ("call_connection_id", "correlation_id"):
                if c.get(key):
                    out[c[key]] = fault
    return out


async def _monitor(
    waiting: list[asyncio.Task[dict[str, Any]]],
    session: aiohttp.ClientSession,
    base: str,
    bridge: Child,
    say: Callable[[str], None],
    wall_start: float,
) -> list[dict[str, Any]]:
    """Every second until every generator has replied (or one failed): the bridge's CPU %
    over that second, its active calls, and the running maxima of its loop lag and
    outbound latency (one cheap ``/api/stats`` request a second)."""
    samples: list[dict[str, Any]] = []
    last_cpu, last_t = cpu_seconds(bridge.pid), time.monotonic()
    while True:
        done, pending = await asyncio.wait(waiting, timeout=1.0)
        if not pending or any(task.exception() for task in done):
            return samples
        if bridge.proc.returncode is not None:
            raise RuntimeError(f"the bridge exited during the run:\n{bridge.log_tail()}")
        now, cpu = time.monotonic(), cpu_seconds(bridge.pid)
        sample: dict[str, Any] = {"t": round(now - wall_start, 2), "active": None}
        sample["cpu_pct"] = pct = round(100 * (cpu - last_cpu) / (now - last_t), 1)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, KeyError):
            stats = await _stats(session, base)
            # Running maxima: the second in which one jumps is when the worst stall was.
            sample |= {
                "active": stats["active_calls"],
                "loop_lag_max_ms": stats["loop_lag_ms"]["max"],
                "outbound_max_ms": stats["relay_latency_ms"]["outbound"]["max"],
            }
        samples.append(sample)
        active = sample["active"]
        last_cpu, last_t = cpu, now
        if len(samples) % 5 == 0:
            say(f"  t={now - wall_start:5.1f} s  active calls {active}, bridge CPU {pct:.0f} %")


# --------------------------------------------------------------------------- the report


def _link(sent: int, received: int) -> dict[str, int]:
    return {"sent": sent, "received": received, "lost": sent - received}


def summarise(
    options: LoadOptions,
    *,
    stats: dict[str, Any],
    generators: list[dict[str, Any]],
    emulator: dict[str, Any],
    cpu: dict[str, float],
    wall_s: float,
    memory: dict[str, dict[str, float]],
    samples: list[dict[str, Any]],
    contention: dict[str, float],
    pinned: dict[str, list[int]],
    speed: dict[str, dict[str, float]] | None = None,
    probes: list[tuple[float, float]] | None = None,
    faults: list[soak.PlannedFault | None] | None = None,
    checks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of one run.

    * ``cpu_s_per_call_s`` (and ``cpu_ms_per_call_s``) — bridge CPU seconds (user +
      system, ``/proc/<pid>/stat``) from the first call until the bridge had finished
      the last, divided by the call-seconds of all calls. Set-up and hang-up are part of
      what a call costs, so they are included.
    * ``bridge_cpu_pct`` — that CPU as % of one core over the run; ``_full`` is the mean
      of the 1 s samples taken while every call was up, ``_peak`` the highest sample;
      ``cpu_ms_per_call_s_steady`` is ``_full`` per call-second (no set-up, no hang-up).
    * ``rss_mb`` — the bridge's peak RSS (VmHWM); ``rss_mb_idle`` its RSS before the first
      call; ``rss_mb_per_call`` = (peak - idle) / calls.
    * ``inbound_latency_ms`` / ``outbound_latency_ms`` / ``loop_lag_ms`` — the bridge's own
      histograms from ``/api/stats`` (count, p50, p99, max). Loop lag covers the
      bridge's whole life, including the second of start-up before the first call;
      ``worst_stall`` says when its maximum happened (``ramp-up``/``steady``/
      ``wind-down``). Relay histograms are merged as calls end, so only loop lag can
      be placed in time.
    * ``conservation`` — each link of the audio path as ``sent``/``received``/``lost``:
      caller frames and samples into the bridge; caller audio resampled and appended
      to Voice Live (expected from what the callers sent) and as the emulator received
      it; agent audio from the emulator into the bridge; frames from the bridge to the
      callers; and the callers' play queues (heard + flushed by StopAudio + left).
      ``frames_lost``/``samples_lost`` add up the absolute differences of the frame and
      sample links. ``calls_not_conserved`` is the bridge's own per-call verdict, which
      also covers agent audio inside the bridge (sent, or dropped by barge-in).
    * ``calls_failed`` — calls that did not end cleanly on either side: the caller saw
      anything but its own hang-up (or a protocol error), or the bridge recorded an
      outcome other than ``caller_hung_up``; ``failures`` says why (first 10).
    * ``load_side`` — worst over load processes: loop lag, GC pauses, how overdue the
      next caller frame was (``send_slip_ms``), CPU %, and the emulator's peak RSS.
      ``load_side_ok`` is false when a loop-lag or slip p99 is above
      :data:`LOAD_SIDE_LIMIT_MS`.
    * ``contention`` — what else ran: ``other_load_cores``, CPU that processes outside
      this test used (machine task time minus ours, per wall second);
      ``bridge_core_shared_pct``, the part of that on the bridge's pinned CPU (% of the
      run); ``irq_cores`` and ``steal_cores``, interrupt time (loopback networking,
      charged to no process) and time the hypervisor gave to other guests; and
      ``bridge_runqueue_wait_pct``, the share of the run the bridge's event loop was
      runnable but waiting for a CPU — the direct measure of interference. When
      ``noisy``, latency and loop lag include other people's work (CPU per call-second
      hardly changes).
    * ``held`` — relay p99 within ``p99_limit_ms`` both ways, nothing lost, none failed.
    * ``machine.speed_reference_ms`` — :mod:`voicebridge.tools.speedref` timed on the
      bridge's CPU just ``before`` the calls and just ``after`` them (``python_ms``,
      ``loopback_ms``): how fast the machine itself was, so that runs from different
      hours can be compared. ``machine.speed_probe`` — the same CPU probed once a second
      during the calls (:func:`probe_summary`; each CPU sample gets its ``probe_ms``):
      ``slow_share`` is the share of seconds in which the CPU itself ran slow, and
      ``full_fast``/``full_slow`` the bridge's mean CPU % in the seconds with every call
      up, apart by the probe.

    With a fault plan (``faults``) some of this changes, because a socket aborted by a
    fault loses whatever was in flight on it, by design:

    * ``conservation``, ``frames_lost``, ``samples_lost`` cover the calls *without* a
      fault only, link by link from per-call figures (the bridge's from each call's
      ``counters`` log line, the emulator's by call id); ``conservation_faulted`` is the
      same over the faulted calls, for information. ``calls_not_conserved`` (the
      bridge's own per-call verdict, which counts gap losses) still covers every call.
    * ``calls_failed`` — calls whose caller-side end or bridge outcome (from its log)
      is not the one expected for its fault (:data:`~voicebridge.tools.soak.
      EXPECTED_OUTCOMES`), or whose log does not end with ``call_ended``.
    * ``faults`` — the specs, which calls got which, and what fired (emulator and
      callers). ``voicelive_reconnects`` — the bridge's counter.

    With ``checks`` (leak check, or any fault plan): ``call_logs`` (each per-call log
    ends with ``call_ended``; outcomes from the logs, clean or not per
    :data:`~voicebridge.tools.soak.CLEAN_OUTCOMES`), ``bridge_log`` (unhandled
    exceptions, ERROR lines by kind and class, WARNING lines by kind), ``leaks``
    (:func:`voicebridge.tools.soak.leak_report`) and ``soak`` (every check's verdict and
    ``ok``, all of them).
    """
    n = options.calls
    calls = [c for reply in generators for c in reply["calls"]]
    counters = stats.get("counters", {})

    def total(key: str) -> int:
        return sum(int(c[key]) for c in calls)

    call_s = total("frames_sent") * FRAME_S
    call_logs: dict[str, Any] = (checks or {}).get("call_logs", {})
    fault_info: dict[str, Any] | None = None
    if faults is None:
        conservation = conservation_links(
            calls,
            counters,
            emulator["input_samples"],
            emulator["output_samples"],
            options.voicelive_rate,
        )
    else:
        by_call = emulator.get("by_call", {})
        plain = [c for c in calls if faults[int(c["index"])] is None]
        faulted = [c for c in calls if faults[int(c["index"])] is not None]

        def links(subset: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
            summed: Counter[str] = Counter()
            for c in subset:
                entry = call_logs.get(c.get("correlation_id") or "", {})
                summed.update(
                    {k: int(v) for k, v in (entry.get("counters") or {}).items() if _int(v)}
                )
            vl = [by_call.get(c.get("call_connection_id") or "", {}) for c in subset]
            return conservation_links(
                subset,
                summed,
                sum(int(v.get("input_samples", 0)) for v in vl),
                sum(int(v.get("output_samples", 0)) for v in vl),
                options.voicelive_rate,
            )

        conservation = links(plain)
        fault_info = _fault_summary(faults, calls, emulator) | {
            "fraction": options.fault_fraction,
            "seed": options.fault_seed,
            "conservation_faulted": links(faulted),
        }
    frames_lost = sum(abs(v["lost"]) for k, v in conservation.items() if k.endswith("_frames"))
    samples_lost = sum(abs(v["lost"]) for k, v in conservation.items() if k.endswith("_samples"))

    outcomes = dict(stats.get("calls_by_outcome", {}))
    failures = [f"call {c['index']}: {c['failure']}" for c in calls if c["failure"]]
    failures += [f"fake ACS: {e}" for reply in generators for e in reply["internal_errors"]]
    if faults is None:
        unclean = n - int(outcomes.get(CLEAN_END, 0))
        if unclean:
            failures.append(f"bridge outcomes {outcomes}")
        calls_failed = max(sum(1 for c in calls if c["failure"]) + n - len(calls), unclean)
    else:
        bad = {int(c["index"]) for c in calls if c["failure"]} | (
            set(range(n)) - {int(c["index"]) for c in calls}
        )
        for c in calls:
            i = int(c["index"])
            fault = faults[i]
            expected = (fault.expected if fault else soak.DEFAULT_EXPECTED)[0]
            got = call_logs.get(c.get("correlation_id") or "", {}).get("outcome")
            if got not in expected:
                bad.add(i)
                failures.append(
                    f"call {i}"
                    + (f" ({fault.spec})" if fault else "")
                    + f": bridge outcome {got or 'not logged'}, expected {' or '.join(expected)}"
                )
        calls_failed = len(bad)

    def worst(key: str, stat: str) -> float:
        return max((float(reply[key][stat]) for reply in generators), default=0.0)

    lags = {
        "generator_loop_lag_ms": {s: worst("loop_lag_ms", s) for s in ("p99", "max")},
        "send_slip_ms": {s: worst("send_slip_ms", s) for s in ("p99", "max")},
        "emulator_loop_lag_ms": {s: float(emulator["loop_lag_ms"][s]) for s in ("p99", "max")},
    }
    load_side_ok = max(lag["p99"] for lag in lags.values()) <= LOAD_SIDE_LIMIT_MS
    load_side: dict[str, Any] = lags | {
        "generator_gc_pause_ms": {s: worst("gc_pause_ms", s) for s in ("p99", "max")},
        "emulator_gc_pause_ms": {s: emulator["gc_pause_ms"][s] for s in ("p99", "max")},
        "generator_cpu_pct": [
            round(100 * v / wall_s, 1) for k, v in cpu.items() if k.startswith("generator-")
        ],
        "emulator_cpu_pct": round(100 * cpu["emulator"] / wall_s, 1),
        "emulator_rss_mb": round(float(emulator.get("rss_mb", 0.0)), 1),
    }
    ours_on_bridge_cpu = cpu["bridge"] + cpu.get(PROBE, 0.0)
    shared_s = contention["bridge_cpu_tasks_s"] - ours_on_bridge_cpu if pinned["bridge"] else 0.0
    interference = {
        "other_load_cores": round(
            max(0.0, contention["machine_tasks_s"] - sum(cpu.values())) / wall_s, 2
        ),
        "bridge_core_shared_pct": round(100 * max(0.0, shared_s) / wall_s, 1),
        "irq_cores": round(contention["machine_irq_s"] / wall_s, 2),
        "steal_cores": round(contention["machine_steal_s"] / wall_s, 2),
        "bridge_runqueue_wait_pct": round(100 * contention["bridge_runqueue_wait_s"] / wall_s, 2),
    }
    interference["noisy"] = (
        interference["bridge_runqueue_wait_pct"] > 2.0
        or interference["bridge_core_shared_pct"] > 5.0
        or interference["steal_cores"] > 0.05
    )

    relay = stats.get("relay_latency_ms", {})
    inbound, outbound = relay.get("inbound", {}), relay.get("outbound", {})
    limit = options.p99_limit_ms
    held = (
        float(inbound.get("p99", 0.0)) <= limit
        and float(outbound.get("p99", 0.0)) <= limit
        and frames_lost == samples_lost == calls_failed == 0
        and stats.get("calls_not_conserved", 0) == 0
    )
    bridge_cpu = cpu["bridge"]
    full = [s["cpu_pct"] for s in samples if s["active"] == n]
    # With every call up, N calls make N x speed call-seconds per wall second.
    steady = sum(full) / len(full) * 10 / (n * options.speed) if full else None
    peak_mb, idle_mb = memory["end"]["hwm"], memory["idle"]["rss"]
    extra: dict[str, Any] = {}
    if fault_info is not None:
        extra["faults"] = fault_info
        extra["voicelive_reconnects"] = int(counters.get("voicelive_reconnects", 0))
    if checks is not None:
        extra |= _checks_summary(
            checks,
            n=n,
            outcomes=outcomes,
            lost=frames_lost + samples_lost,
            calls_failed=calls_failed,
            not_conserved=int(stats.get("calls_not_conserved", 0)),
        )
        extra.setdefault("voicelive_reconnects", int(counters.get("voicelive_reconnects", 0)))
    return extra | {
        "calls": n,
        "seconds": options.seconds,
        "ramp_s": options.ramp,
        "speed": options.speed,
        "generators": options.generators,
        "rates": {"acs_hz": options.acs_rate, "voicelive_hz": options.voicelive_rate},
        "call_seconds": round(call_s, 2),
        "mean_call_s": round(call_s / max(1, len(calls)), 2),
        "wall_s": round(wall_s, 2),
        "cpu_s_per_call_s": round(bridge_cpu / call_s, 6) if call_s else None,
        "cpu_ms_per_call_s": round(1000 * bridge_cpu / call_s, 3) if call_s else None,
        "bridge_cpu_s": round(bridge_cpu, 3),
        "bridge_cpu_pct": round(100 * bridge_cpu / wall_s, 1),
        "bridge_cpu_pct_full": round(sum(full) / len(full), 1) if full else None,
        "bridge_cpu_pct_peak": max((s["cpu_pct"] for s in samples), default=0.0),
        "cpu_ms_per_call_s_steady": round(steady, 3) if steady is not None else None,
        "worst_stall": _worst_stall(samples, n, options.ramp),
        "rss_mb": round(peak_mb, 1),
        "rss_mb_idle": round(idle_mb, 1),
        "rss_mb_per_call": round((peak_mb - idle_mb) / n, 3),
        "inbound_latency_ms": inbound,
        "outbound_latency_ms": outbound,
        "loop_lag_ms": stats.get("loop_lag_ms", {}),
        "gc_pause_ms": stats.get("gc_pause_ms", {}),
        "frames_lost": frames_lost,
        "samples_lost": samples_lost,
        "calls_failed": calls_failed,
        "calls_not_conserved": stats.get("calls_not_conserved", 0),
        "calls_by_outcome": outcomes,
        "failures": failures[:10],
        "conservation": conservation,
        "barge_ins": {
            "stop_audio": total("stop_audio"),
            "samples_dropped_by_barge_in": counters.get("samples_dropped_by_barge_in", 0),
            "samples_flushed_at_acs": total("samples_flushed"),
        },
        "underrun_frames": total("underrun_frames"),
        "voicelive": {k: emulator[k] for k in ("sessions", "responses", "errors", "close_codes")},
        "load_side": load_side,
        "load_side_ok": load_side_ok,
        "contention": interference,
        "p99_limit_ms": limit,
        "held": held,
        "cpu_samples": samples,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "pinned": pinned,
            "speed_reference_ms": speed or {},
            "speed_probe": probe_summary(probes or [], samples, speed or {}, n),
        },
    }


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def conservation_links(
    calls: list[dict[str, Any]],
    counters: dict[str, Any],
    voicelive_in: int,
    voicelive_out: int,
    voicelive_rate: int,
) -> dict[str, dict[str, int]]:
    """Each link of the audio path as ``sent``/``received``/``lost`` over ``calls`` (the
    callers' results), the bridge's ``counters`` summed over the same calls, and the
    emulator's input and output samples for them (see :func:`summarise`)."""

    def total(key: str) -> int:
        return sum(int(c.get(key, 0)) for c in calls)

    sent_samples = sum(c["frames_sent"] * c["frame_samples"] for c in calls)
    expected_in = sum(
        -(-c["frames_sent"] * c["frame_samples"] * voicelive_rate // c["acs_rate"]) for c in calls
    )
    appended = int(counters.get("voicelive_samples_appended", 0))
    # What the caller's play queue did with what it received; a fault that drops the
    # media socket discards the queue (samples_flushed_by_drop, 0 without faults).
    heard = (
        total("samples_heard")
        + total("samples_flushed")
        + total("samples_queued_at_end")
        + total("samples_flushed_by_drop")
    )
    return {
        "caller_to_bridge_frames": _link(total("frames_sent"), counters.get("acs_frames_in", 0)),
        "caller_to_bridge_samples": _link(sent_samples, counters.get("caller_samples_in", 0)),
        "bridge_inbound_samples": _link(expected_in, appended),
        "bridge_to_voicelive_samples": _link(appended, voicelive_in),
        "voicelive_to_bridge_samples": _link(voicelive_out, counters.get("agent_samples_in", 0)),
        "bridge_to_caller_frames": _link(
            counters.get("acs_frames_out", 0), total("received_frames")
        ),
        "caller_playback_samples": _link(total("received_samples"), heard),
    }


def _fault_summary(
    faults: list[soak.PlannedFault | None], calls: list[dict[str, Any]], emulator: dict[str, Any]
) -> dict[str, Any]:
    """Which calls got which fault, and whether it fired (per call: in the emulator for
    ``voicelive-*``, at the caller for ``acs-*``)."""
    by_call = emulator.get("by_call", {})
    results = {int(c["index"]): c for c in calls}
    by_spec: dict[str, dict[str, Any]] = {}
    for i, fault in enumerate(faults):
        if fault is None:
            continue
        entry = by_spec.setdefault(fault.spec, {"calls": [], "fired": 0})
        entry["calls"].append(i)
        c = results.get(i, {})
        if fault.target == "voicelive":
            fired = by_call.get(c.get("call_connection_id") or "", {}).get("faults_fired", [])
        else:
            fired = c.get("faults_fired", [])
        entry["fired"] += fault.name in fired
    return {
        "specs": sorted(by_spec),
        "faulted_calls": sum(f is not None for f in faults),
        "by_fault": by_spec,
        "voicelive_fired": emulator.get("faults_fired", {}),
        "acs_fired": dict(Counter(name for c in calls for name in set(c.get("faults_fired", [])))),
    }


def _checks_summary(
    checks: dict[str, Any],
    *,
    n: int,
    outcomes: dict[str, int],
    lost: int,
    calls_failed: int,
    not_conserved: int,
) -> dict[str, Any]:
    """``call_logs``, ``bridge_log``, ``leaks`` and the ``soak`` verdict (see
    :func:`summarise`)."""
    logs: dict[str, Any] = checks.get("call_logs", {})
    logged = Counter(str(entry["outcome"]) for entry in logs.values() if entry["outcome"])
    not_ended = sorted(entry["file"] for entry in logs.values() if entry["outcome"] is None)
    unclean = {k: v for k, v in logged.items() if k not in soak.CLEAN_OUTCOMES}
    call_logs = {
        "files": len(logs),
        "outcomes": dict(logged),
        "not_ending_with_call_ended": not_ended[:10],
        "unclean": unclean,
        "match_api_stats": dict(logged) == outcomes,
    }
    bridge_log = checks.get("bridge_log", {})
    leaks = checks.get("leaks")
    verdicts = {
        "no_unhandled_exception": bridge_log.get("unhandled_count", 0) == 0,
        "no_unexpected_error_lines": bridge_log.get("unexpected_errors", 0) == 0,
        "every_call_logged_its_end": len(logs) == n and not not_ended,
        "every_outcome_clean": not unclean and sum(logged.values()) == n,
        "every_outcome_expected": calls_failed == 0,
        "nothing_lost": lost == 0 and not_conserved == 0,
    }
    if leaks is not None:
        verdicts |= {
            "tasks_back_to_idle": leaks["tasks"]["ok"],
            "fds_back_to_idle": leaks["fds"]["ok"],
            "python_memory_back": leaks["python"]["ok"],
            "no_call_state_retained": not leaks["call_state_retained"],
            "memory_back_to_idle": leaks["rss_mb"]["back"],
        }
    return {
        "call_logs": call_logs,
        "bridge_log": bridge_log,
        "leaks": leaks,
        "soak": {"ok": all(verdicts.values()), "checks": verdicts},
    }


def _worst_stall(samples: list[dict[str, Any]], calls: int, ramp_s: float) -> dict[str, Any]:
    """When the bridge's loop-lag maximum was reached: the first 1 s sample that shows
    its final value, and the phase of the run then (``ramp-up`` while calls are still
    being placed, ``steady`` with every call up, ``wind-down`` after)."""
    known = [s for s in samples if "loop_lag_max_ms" in s]
    if not known:
        return {}
    final = known[-1]["loop_lag_max_ms"]
    first = next(s for s in known if s["loop_lag_max_ms"] == final)
    if first["t"] <= ramp_s + 1.0 and first["active"] != calls:
        phase = "ramp-up"
    else:
        phase = "steady" if first["active"] == calls else "wind-down"
    return {"loop_lag_ms": final, "by_t_s": first["t"], "phase": phase}


def _lat(d: dict[str, Any]) -> str:
    return f"p50 {d.get('p50', 0):.2f}  p99 {d.get('p99', 0):.2f}  max {d.get('max', 0):.1f}"


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of one run."""
    ls, cont = r["load_side"], r["contention"]
    full = r["bridge_cpu_pct_full"]
    pinned = r["machine"]["pinned"]["bridge"]
    rows = [
        (
            "calls",
            f"{r['calls']} x {r['seconds']:g} s of caller audio (ramp {r['ramp_s']:g} s, "
            f"speed {r['speed']:g}): mean call {r['mean_call_s']:.1f} s, "
            f"{r['call_seconds']:.0f} call-s in {r['wall_s']:.1f} s",
        ),
        (
            "bridge CPU",
            f"{r['cpu_ms_per_call_s']:.3f} ms per call-second; {r['bridge_cpu_pct']:.1f} % "
            "of a core over the run"
            + (f", {full:.1f} % with all calls up" if full is not None else "")
            + f", peak {r['bridge_cpu_pct_peak']:.0f} %"
            + (
                f"; {r['cpu_ms_per_call_s_steady']:.3f} ms per call-second with all calls up"
                if r["cpu_ms_per_call_s_steady"] is not None
                else ""
            ),
        ),
        (
            "bridge RSS",
            f"{r['rss_mb']:.1f} MB peak (idle {r['rss_mb_idle']:.1f} MB, "
            f"{r['rss_mb_per_call']:+.3f} MB per call)",
        ),
        ("inbound ms", f"{_lat(r['inbound_latency_ms'])}   (ACS frame in -> append out)"),
        ("outbound ms", f"{_lat(r['outbound_latency_ms'])}   (delta in -> frame out, less lead)"),
        (
            "loop lag ms",
            _lat(r["loop_lag_ms"])
            + (
                f"   (worst by t={stall['by_t_s']:g} s, {stall['phase']})"
                if (stall := r["worst_stall"])
                else ""
            ),
        ),
        ("gc pause ms", _lat(r["gc_pause_ms"]) if r.get("gc_pause_ms") else "n/a"),
        (
            "lost",
            f"{r['frames_lost']} frames, {r['samples_lost']} samples; "
            f"calls not conserved {r['calls_not_conserved']}",
        ),
        ("calls failed", f"{r['calls_failed']} of {r['calls']}; outcomes {r['calls_by_outcome']}"),
        (
            "turns",
            f"Voice Live responses {r['voicelive']['responses']}; "
            f"{r['barge_ins']['stop_audio']} StopAudio",
        ),
        (
            "load side",
            f"generator loop lag p99 {ls['generator_loop_lag_ms']['p99']:.2f} / max "
            f"{ls['generator_loop_lag_ms']['max']:.1f} ms, caller frames late p99 "
            f"{ls['send_slip_ms']['p99']:.2f} / max {ls['send_slip_ms']['max']:.1f} ms, "
            f"emulator loop lag p99 {ls['emulator_loop_lag_ms']['p99']:.2f} ms; CPU % "
            f"generators {ls['generator_cpu_pct']}, emulator {ls['emulator_cpu_pct']} "
            f"({ls['emulator_rss_mb']:.0f} MB peak)"
            + ("" if r["load_side_ok"] else "   << did NOT keep up"),
        ),
        (
            "contention",
            f"the bridge's loop waited for its CPU {cont['bridge_runqueue_wait_pct']:.1f} % "
            f"of the time; other processes used {cont['other_load_cores']:.2f} cores "
            f"({cont['bridge_core_shared_pct']:.1f} % of the bridge's CPU), interrupts "
            f"{cont['irq_cores']:.2f}, steal {cont['steal_cores']:.2f}"
            + ("   << latency includes other work" if cont["noisy"] else ""),
        ),
        (
            "machine",
            f"{r['machine']['cpus']} x {r['machine']['cpu_model']}, Python "
            f"{r['machine']['python']}; bridge "
            + (f"pinned to CPU {pinned[0]}, the rest on the others" if pinned else "not pinned")
            + _speed_text(r["machine"].get("speed_reference_ms", {}))
            + _probe_text(r["machine"].get("speed_probe", {})),
        ),
        (
            "verdict",
            ("held" if r["held"] else "NOT held")
            + f" (p99 <= {r['p99_limit_ms']:g} ms both ways, nothing lost, no call failed)",
        ),
    ]
    rows += _soak_rows(r)
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines + [f"  {'':{width}}  {f}" for f in r["failures"]])


def _tcp(fds: dict[str, Any]) -> str:
    tcp = ", ".join(f"{k} {v}" for k, v in fds["tcp"].items()) or "none"
    return f"{fds['total']} ({fds['kinds'].get('socket', 0)} sockets: {tcp})"


def _soak_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows of the fault and soak checks, when the run had them."""
    rows: list[tuple[str, str]] = []
    if "faults" in r:
        f = r["faults"]
        fired = ", ".join(
            f"{spec} {v['fired']}/{len(v['calls'])}" for spec, v in sorted(f["by_fault"].items())
        )
        rows.append(
            (
                "faults",
                f"{f['faulted_calls']} of {r['calls']} calls (fraction {f['fraction']:g}, seed "
                f"{f['seed']}), one each; fired in calls: {fired}",
            )
        )
    if "voicelive_reconnects" in r:
        rows.append(
            ("reconnects", f"Voice Live reconnects (bridge counter) {r['voicelive_reconnects']}")
        )
    leaks = r.get("leaks")
    if leaks:
        m, py = leaks["rss_mb"], leaks["python"]
        pm = m["pymalloc"]
        rows += [
            (
                "memory",
                f"RSS idle {m['idle']:.1f} MB, peak {m['peak']:.1f} MB, after {m['after']:.1f} MB, "
                f"after a heap trim {m['after_trim']:.1f} MB ({m['left_above_idle']:+.1f} MB over "
                "idle"
                + (
                    f", {max(0.0, m['returned_pct']):.0f} % of the growth returned"
                    if m["returned_pct"] is not None
                    else ""
                )
                + ")",
            ),
            (
                "python heap",
                f"arenas {pm['arenas']['before']} -> {pm['arenas']['after']} MiB (high-water "
                f"{pm['arenas_highwater']}), live in them {pm['live_mb']['before']:.1f} -> "
                f"{pm['live_mb']['after']:.1f} MB; RSS over idle not explained by arenas "
                f"{m['unexplained_mb']:+.1f} MB: {'back' if m['back'] else 'NOT back'} (within "
                f"{m['allowed_above_idle']:.1f} MB)",
            ),
            (
                "python memory",
                f"allocated blocks {py['allocated_blocks']['before']} -> "
                f"{py['allocated_blocks']['after']}, objects {py['objects']['before']} -> "
                f"{py['objects']['after']}; the history of ended calls keeps "
                f"{py['retained_by_history']['after'] - py['retained_by_history']['before']:+d} "
                f"objects; unexplained {py['unexplained_blocks']:+d} blocks "
                f"({py['unexplained_blocks_per_call']:+g} per call, allowed "
                f"{py['allowed_blocks']})" + ("" if py["ok"] else "   << NOT back"),
            ),
            (
                "call state",
                "none alive after the calls"
                if not leaks["call_state_retained"]
                else f"still alive: {leaks['call_state_retained']}   << retained",
            ),
            (
                "tasks",
                f"idle {leaks['tasks']['before']}, after {leaks['tasks']['after']} "
                f"(at settle {leaks['tasks_at_settle']})"
                + ("" if leaks["tasks"]["ok"] else "   << leaked")
                + f"; OS threads {leaks['threads']['before']} -> {leaks['threads']['after']}",
            ),
            ("fds idle", _tcp(leaks["fds"]["before"])),
            ("fds at settle", _tcp(leaks["fds"]["at_settle"])),
            (
                "fds after",
                _tcp(leaks["fds"]["after"])
                + f" after {leaks['waited_s']:g} s"
                + ("" if leaks["fds"]["ok"] else f"   << excess {leaks['fds']['excess']}"),
            ),
        ]
    if "call_logs" in r:
        cl, bl = r["call_logs"], r["bridge_log"]
        rows.append(
            (
                "call logs",
                f"{cl['files']} files; outcomes {cl['outcomes']}"
                + ("" if cl["match_api_stats"] else " (differ from /api/stats)")
                + (
                    f"; not ending with call_ended: {cl['not_ending_with_call_ended']}"
                    if cl["not_ending_with_call_ended"]
                    else "; every one ends with call_ended"
                ),
            )
        )
        rows.append(
            (
                "bridge log",
                f"unhandled exceptions {bl['unhandled_count']}; ERROR lines "
                f"{sum(g['count'] for g in bl['errors'])} "
                f"({bl['unexpected_errors']} unexpected); WARNING lines "
                f"{sum(g['count'] for g in bl['warnings'])}",
            )
        )
        for g in bl["errors"]:
            rows.append(("  ERROR", f"{g['count']} x {g['message']} [{g['class']}; {g['faults']}]"))
        for g in bl["warnings"]:
            rows.append(("  WARNING", f"{g['count']} x {g['message']} [{g['faults']}]"))
        for line in bl["unhandled"]:
            rows.append(("  unhandled", line[:300]))
    if "soak" in r:
        failed = [k for k, ok in r["soak"]["checks"].items() if not ok]
        rows.append(
            (
                "soak verdict",
                "every check passed" if r["soak"]["ok"] else f"FAILED: {', '.join(failed)}",
            )
        )
    return rows


# --------------------------------------------------------------------------- find-max


def _step_line(r: dict[str, Any]) -> str:
    """One find-max step on one line, with what failed in brackets."""
    limit = r["p99_limit_ms"]
    why = [
        label
        for label, bad in (
            ("inbound p99", r["inbound_latency_ms"].get("p99", 0) > limit),
            ("outbound p99", r["outbound_latency_ms"].get("p99", 0) > limit),
            ("loss", r["frames_lost"] or r["samples_lost"] or r["calls_not_conserved"]),
            ("failed calls", r["calls_failed"]),
            ("load side lagged", not r["load_side_ok"]),
            ("noisy machine", r["contention"]["noisy"]),
        )
        if bad
    ]
    cpu_pct = r["bridge_cpu_pct_full"] or r["bridge_cpu_pct"]
    probe = r.get("machine", {}).get("speed_probe", {})
    return (
        f"{r['calls']:5d} calls  {'held' if r['held'] else 'FAILED':6s}  "
        + (f"(attempt {r['attempt']})  " if r.get("attempt", 1) > 1 else "")
        + f"in p99 {r['inbound_latency_ms'].get('p99', 0):7.2f}  "
        f"out p99 {r['outbound_latency_ms'].get('p99', 0):7.2f}  "
        f"loop lag p99 {r['loop_lag_ms'].get('p99', 0):7.2f} ms  "
        f"{r['cpu_ms_per_call_s']:.2f} ms/call-s  CPU {cpu_pct:5.1f} %  "
        f"lost {r['frames_lost']}/{r['samples_lost']}  failed {r['calls_failed']}"
        + (f"  CPU slow {100 * probe['slow_share']:.0f} % of s" if probe else "")
        + (f"  [{', '.join(why)}]" if why else "")
    )


async def find_max(
    options: LoadOptions, *, cap: int, retries: int = 1, resolution: float = 0.1
) -> dict[str, Any]:
    """The largest call count that held (:func:`summarise`), each step in fresh processes.

    From ``options.calls``, double until a step fails or ``cap`` is reached, then bisect
    until the gap between the largest count that held and the smallest that failed is
    at most ``resolution`` of the former (and at least 2). A step that fails while the
    machine was ``noisy`` (other processes took the bridge's CPU) is run again, up to
    ``retries`` times, and holds if any attempt held: interference only ever makes a
    run worse, so the best attempt is the closest to what the bridge itself can do.
    ``limited_by`` says whether the load side kept up in the first failing step.
    """
    say = options.progress or (lambda _msg: None)
    steps: list[dict[str, Any]] = []
    good: dict[str, Any] | None = None
    bad: int | None = None
    n = max(1, min(options.calls, cap))
    while True:
        for attempt in range(retries + 1):
            say(f"find-max: {n} calls x {options.seconds:g} s" + (" (again)" if attempt else ""))
            report = await run_load(replace(options, calls=n)) | {"attempt": attempt + 1}
            steps.append(report)
            say("  " + _step_line(report))
            if report["held"] or not report["contention"]["noisy"]:
                break
        if not report["held"]:
            bad = n if bad is None else min(bad, n)
        elif good is None or n > good["calls"]:
            good = report
        good_n = good["calls"] if good else 0
        if bad is None:
            if n >= cap:
                break
            n = min(cap, 2 * n)
        elif bad - good_n <= max(2, int(resolution * good_n)):
            break
        else:
            n = (good_n + bad) // 2
    failed = next((s for s in reversed(steps) if s["calls"] == bad), None)
    limited_by = None
    if failed is not None:
        limited_by = "bridge" if failed["load_side_ok"] else "load side (it did not keep up)"
    elif good is not None:
        limited_by = f"--max-calls {cap}"
    drop = ("conservation", "cpu_samples")
    return {
        "max_calls": good["calls"] if good else 0,
        "calls_per_core": good["calls"] if good else 0,
        "first_failed_calls": bad,
        "limited_by": limited_by,
        "cap": cap,
        "seconds": options.seconds,
        "p99_limit_ms": options.p99_limit_ms,
        "best": good,
        "steps": [{k: v for k, v in s.items() if k not in drop} for s in steps],
        "machine": steps[-1]["machine"],
    }


def _slow_shares(steps: list[dict[str, Any]]) -> list[float]:
    """Each step's ``slow_share`` (the steps the speed probe ran in)."""
    return [
        s["machine"]["speed_probe"]["slow_share"]
        for s in steps
        if s.get("machine", {}).get("speed_probe")
    ]


def format_find_max(result: dict[str, Any]) -> str:
    lines = ["steps:", *("  " + _step_line(s) for s in result["steps"]), ""]
    if result["best"] is None:
        return "\n".join([*lines, "no call count held"])
    lines.append(
        f"max calls held: {result['max_calls']} on one core (smallest failing: "
        f"{result['first_failed_calls']}; limited by {result['limited_by']})"
    )
    slow = _slow_shares(result["steps"])
    if slow:
        # The same build and command have given 150 and 102 an hour apart on a shared
        # VM (docs/performance.md): say how fast the machine was while this one ran.
        lines.append(
            f"the CPU itself ran slow in {100 * min(slow):.0f}-{100 * max(slow):.0f} % of "
            "each step's seconds (speed probe); compare only results made at similar speed"
        )
    return "\n".join([*lines, "", format_report(result["best"])])


# --------------------------------------------------------------------------- sweep

#: What a sweep keeps of each run (the rest is per-run detail).
SWEEP_KEYS = (
    "calls",
    "call_seconds",
    "cpu_ms_per_call_s",
    "cpu_ms_per_call_s_steady",
    "bridge_cpu_pct_full",
    "rss_mb",
    "rss_mb_idle",
    "rss_mb_per_call",
    "inbound_latency_ms",
    "outbound_latency_ms",
    "loop_lag_ms",
    "frames_lost",
    "calls_failed",
    "held",
    "load_side_ok",
    "contention",
    "machine",
)


async def sweep(options: LoadOptions, counts: list[int]) -> dict[str, Any]:
    """One run per call count in ``counts`` (fresh processes each): how cost grows with
    calls. ``steps`` keeps :data:`SWEEP_KEYS` of each report."""
    say = options.progress or (lambda _msg: None)
    steps = []
    for n in counts:
        say(f"sweep: {n} calls x {options.seconds:g} s")
        report = await run_load(replace(options, calls=n))
        say("  " + _step_line(report))
        steps.append({k: report[k] for k in SWEEP_KEYS})
    return {"seconds": options.seconds, "p99_limit_ms": options.p99_limit_ms, "steps": steps}


def format_sweep(result: dict[str, Any]) -> str:
    """The sweep as a table, one line per call count."""
    lines = [
        "  calls  ms/call-s  steady  CPU %   RSS MB  MB/call  in p99  out p99  lag p99  "
        "CPU slow  verdict"
    ]
    for s in result["steps"]:
        slow = s["machine"].get("speed_probe", {}).get("slow_share")
        lines.append(
            f"  {s['calls']:5d}  {s['cpu_ms_per_call_s']:9.2f}  "
            f"{s['cpu_ms_per_call_s_steady'] or 0:6.2f}  {s['bridge_cpu_pct_full'] or 0:5.1f}  "
            f"{s['rss_mb']:7.1f}  {s['rss_mb_per_call']:7.3f}  "
            f"{s['inbound_latency_ms'].get('p99', 0):6.2f}  "
            f"{s['outbound_latency_ms'].get('p99', 0):7.2f}  "
            f"{s['loop_lag_ms'].get('p99', 0):7.2f}  "
            + (f"{100 * slow:6.0f} %  " if slow is not None else "       -  ")
            + ("held" if s["held"] else "FAILED")
        )
    return "\n".join(lines)


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """A small PNG of a sweep: bridge CPU per call-second, and relay p99 per direction,
    against calls (needs matplotlib: the ``sim`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    calls = [s["calls"] for s in steps]
    fig, (cost, lat) = plt.subplots(1, 2, figsize=(9, 3.4))
    cost.plot(calls, [s["cpu_ms_per_call_s"] for s in steps], "o-", label="whole run")
    cost.plot(
        calls, [s["cpu_ms_per_call_s_steady"] or 0 for s in steps], "s--", label="all calls up"
    )
    cost.set_xlabel("concurrent calls")
    cost.set_ylabel("bridge CPU, ms per call-second")
    cost.set_ylim(bottom=0)
    cost.legend()
    for key, label in (("inbound_latency_ms", "inbound"), ("outbound_latency_ms", "outbound")):
        lat.plot(calls, [s[key].get("p99", 0) for s in steps], "o-", label=f"{label} p99")
    lat.axhline(result["p99_limit_ms"], color="tab:red", linestyle=":", label="pass mark")
    lat.set_xlabel("concurrent calls")
    lat.set_ylabel("relay latency p99, ms")
    lat.set_ylim(bottom=0)
    lat.legend()
    slow = _slow_shares(steps)
    machine = (
        f"; the CPU ran slow in {100 * min(slow):.0f}-{100 * max(slow):.0f} % of seconds"
        if slow
        else ""
    )
    fig.suptitle(
        f"voicebridge loadtest sweep ({result['seconds']:g} s calls, one core{machine})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _counts(text: str) -> list[int]:
    """``--sweep`` value: comma-separated call counts, each at least 1."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of call counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"call counts must be 1 or more: {text!r}")
    return counts


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``voicebridge loadtest``."""
    add = parser.add_argument
    add(
        "--calls",
        type=int,
        help="concurrent calls (default 10; first step of --find-max: 25; --soak: 100)",
    )
    add("--seconds", type=float, help="caller audio per call in s (default 20; --soak: 60)")
    add("--ramp", type=float, help="spread call starts over S s (default min(5, seconds/4))")
    add("--speed", type=float, default=1.0, help="media clock x real time, all sides (default 1)")
    add("--generators", type=int, default=1, help="caller (fake ACS) processes (default 1)")
    add("--acs-rate", type=int, choices=(16000, 24000), default=16000)
    add("--voicelive-rate", type=int, choices=(16000, 24000), default=24000)
    add("--no-pin", action="store_true", help="do not give the bridge a CPU of its own")
    add("--env", action="append", default=[], metavar="NAME=VALUE", help="bridge env override")
    add("--p99-limit-ms", type=float, default=P99_LIMIT_MS, help="relay p99 pass mark (10)")
    add("--find-max", action="store_true", help="raise --calls until a step fails")
    add("--max-calls", type=int, default=320, help="--find-max never tries more (default 320)")
    add("--retries", type=int, default=1, help="--find-max: rerun a step failed on a noisy machine")
    add(
        "--sweep",
        type=_counts,
        metavar="N,N,...",
        help="one run per call count (how cost grows with calls), e.g. 10,25,50,100",
    )
    add("--plot", type=Path, metavar="PNG", help="--sweep: also draw it to this PNG file")
    add(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=ARG]",
        help="give some calls this fault (repeatable; each faulted call gets one of them; "
        "names as in 'voicebridge simulate --help')",
    )
    add(
        "--fault-fraction",
        type=float,
        default=soak.DEFAULT_FAULT_FRACTION,
        metavar="F",
        help=f"share of the calls that get a fault (default {soak.DEFAULT_FAULT_FRACTION:g})",
    )
    add("--fault-seed", type=int, default=0, help="which calls get which fault (default 0)")
    add(
        "--soak",
        action="store_true",
        help=f"soak test: {soak.SOAK_CALLS} calls x {soak.SOAK_SECONDS:g} s, unless given, "
        f"with {', '.join(soak.SOAK_FAULTS)} sprinkled (unless --fault is given), and the "
        "leak checks",
    )
    add(
        "--leak-check",
        action="store_true",
        help="compare the bridge idle before and after the calls (implied by --soak and --fault)",
    )
    add(
        "--settle",
        type=float,
        default=soak.SETTLE_S,
        metavar="S",
        help=f"leak check: measure S s after the last call ended (default {soak.SETTLE_S:g})",
    )
    add("--json", action="store_true", help="print exactly one JSON object on stdout")


async def _stoppable(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` so that SIGTERM cancels it like Ctrl-C does: its ``finally`` blocks
    stop every child process (the launcher's parent-death signal covers SIGKILL)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run(args: argparse.Namespace) -> int:
    """0 when the test ran and (for a single run) nothing was lost, no call failed and,
    with leak checks, every check passed; 1 when something was lost or failed, a check
    did not pass, or the test could not run; 2 on bad options."""
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"voicebridge loadtest: --env wants NAME=VALUE, not {item!r}", file=sys.stderr)
            return 2
        env[name] = value
    if sum(map(bool, (args.soak, args.find_max, args.sweep))) > 1:
        print(
            "voicebridge loadtest: --soak, --find-max and --sweep do not combine", file=sys.stderr
        )
        return 2
    if args.plot is not None and not args.sweep:
        print("voicebridge loadtest: --plot goes with --sweep", file=sys.stderr)
        return 2
    calls = args.calls
    if calls is None:
        calls = soak.SOAK_CALLS if args.soak else 25 if args.find_max else 10
    seconds = args.seconds
    if seconds is None:
        seconds = soak.SOAK_SECONDS if args.soak else 20.0
    faults = list(args.fault) or (list(soak.SOAK_FAULTS) if args.soak else [])
    options = LoadOptions(
        calls=calls,
        seconds=seconds,
        ramp_s=args.ramp,
        speed=args.speed,
        generators=args.generators,
        acs_rate=args.acs_rate,
        voicelive_rate=args.voicelive_rate,
        pin=not args.no_pin,
        bridge_env=env,
        p99_limit_ms=args.p99_limit_ms,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        faults=faults,
        fault_fraction=args.fault_fraction,
        fault_seed=args.fault_seed,
        leak_check=bool(args.soak or args.leak_check or faults),
        settle_s=args.settle,
    )
    try:
        options.validate()
    except ValueError as exc:
        print(f"voicebridge loadtest: {exc}", file=sys.stderr)
        return 2
    try:
        if args.find_max:
            search = find_max(options, cap=args.max_calls, retries=max(0, args.retries))
            result = asyncio.run(_stoppable(search))
            print(json.dumps(result) if args.json else format_find_max(result))
            return 0
        if args.sweep:
            result = asyncio.run(_stoppable(sweep(options, args.sweep)))
            if args.plot is not None:
                plot_sweep(result, args.plot)
            print(json.dumps(result) if args.json else format_sweep(result))
            return 0
        report = asyncio.run(_stoppable(run_load(options)))
    except asyncio.CancelledError:
        print("voicebridge loadtest: stopped by SIGTERM", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        print(f"voicebridge loadtest: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else format_report(report))
    lost = report["frames_lost"] or report["samples_lost"] or report["calls_not_conserved"]
    soaked = report.get("soak", {}).get("ok", True)
    return 1 if lost or report["calls_failed"] or not soaked else 0
