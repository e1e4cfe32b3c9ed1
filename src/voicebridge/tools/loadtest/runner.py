"""One load test in fresh processes: :func:`run_load`.

Its steps, in order:

1. start every process at once (:meth:`Processes.start`): the ACS router in this
   process, the Voice Live emulator, the generators and the bridge;
2. take the bridge's figures idle, just before the first call (:func:`_before_calls`),
   and with ``--machine-probe`` start timing the machine itself
   (:class:`~voicebridge.tools.loadtest.machine_probe.MachineProbe`);
3. place the calls, and watch the bridge once a second until every generator has
   replied with its calls' results (:func:`_place_calls`, :func:`monitor`);
4. take the figures again once the bridge has wound its calls down
   (:func:`_after_calls`);
5. with a leak check or a fault plan, check the bridge back at idle and its logs
   (:func:`_run_checks`);
6. hand everything to :func:`~voicebridge.tools.loadtest.report.summarise`.

Every process is stopped in ``finally`` (:meth:`Processes.stop`), whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from voicebridge.sim.ports import free_port
from voicebridge.tools.loadtest import procfs, soak
from voicebridge.tools.loadtest.acs_router import AcsRouter
from voicebridge.tools.loadtest.children import (
    EMULATOR_KEY,
    Child,
    bridge_env,
    cpu_plan,
    spawn,
)
from voicebridge.tools.loadtest.machine_probe import MachineProbe
from voicebridge.tools.loadtest.options import (
    SETTLE_TIMEOUT_S,
    STARTUP_TIMEOUT_S,
    LoadOptions,
    call_plan,
    voicelive_call_faults,
)
from voicebridge.tools.loadtest.report import summarise

#: How the load-side workers are started (:mod:`voicebridge.tools.loadtest.loadgen`).
WORKER = ["-m", "voicebridge.tools.loadtest.loadgen"]


async def run_load(options: LoadOptions) -> dict[str, Any]:
    """Run one load test in fresh processes and return its report (:func:`summarise`).

    Raises ``RuntimeError`` (with the failing process's log tail) if the test itself
    could not run. Every process is stopped before this returns or raises.
    """
    options.validate()
    procs = Processes(options)
    # The machine's own speed only when asked for: it is not a property of the bridge.
    probe = MachineProbe(procs.bridge_cpus) if options.machine_probe else None
    # This process is load side too (the router, the monitor): off the bridge's CPU.
    own_cpus = os.sched_getaffinity(0) if procs.load_cpus else None
    if procs.load_cpus:
        os.sched_setaffinity(0, procs.load_cpus)
    try:
        await procs.start()
        start = await _before_calls(procs, probe)
        samples, replies = await _place_calls(procs, start)
        end = await _after_calls(procs, start, probe)
        checks = await _run_checks(procs, start, replies)
        return summarise(
            options,
            stats=end.stats,
            generators=replies,
            emulator=end.emulator,
            cpu=end.cpu,
            wall_s=end.wall_s,
            memory={"idle": start.memory, "end": end.memory},
            samples=samples,
            contention=end.contention,
            pinned={
                "bridge": sorted(procs.bridge_cpus or ()),
                "load": sorted(procs.load_cpus or ()),
            },
            faults=procs.faults,
            checks=checks,
            machine=probe.fields(samples, options.calls) if probe is not None else None,
            beside_bridge=start.beside_bridge,
        )
    finally:
        if probe is not None:
            await probe.stop()  # a no-op once stopped
        await procs.stop()
        if own_cpus:
            os.sched_setaffinity(0, own_cpus)


# --------------------------------------------------------------------------- the processes


class Processes:
    """The processes of one run and how to reach them: :meth:`start` starts them all,
    :meth:`stop` stops every one that was started."""

    bridge: Child
    emulator: Child
    generators: list[Child]

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.faults = options.fault_plan()
        self.workdir = Path(tempfile.mkdtemp(prefix="voicebridge-loadtest-"))
        self.children: list[Child] = []
        self.router = AcsRouter()
        self.session: aiohttp.ClientSession | None = None
        self.bridge_cpus, self.load_cpus = cpu_plan(options.pin)
        # One Call Automation resource, whichever generator placed a call: the HMAC key the
        # bridge signs with and the JWT audience it checks are shared.
        self.access_key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.resource_id = str(uuid.uuid4())
        self.port = 0
        self.base = ""

    @property
    def log_dir(self) -> Path:
        """The bridge's ``LOG_DIR``: one JSONL file per call."""
        return self.workdir / "logs"

    async def start(self) -> None:
        """Start everything at once (imports take seconds): ports are chosen up front and
        the router holds requests until the generators are known. Returns once the
        bridge is ready; ``RuntimeError`` if a process fails to start."""
        await self.router.start()
        self.port, voicelive_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.emulator = await self._start_emulator(voicelive_port)
        self.generators = [await self._start_generator(k) for k in range(self.options.generators)]
        self.bridge = await self._start_bridge(voicelive_port)
        await self.emulator.receive(STARTUP_TIMEOUT_S)
        await self.router.set_generators(
            [(await g.receive(STARTUP_TIMEOUT_S))["endpoint"] for g in self.generators]
        )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        await self._wait_ready()
        self.options.say(
            f"bridge pid {self.bridge.pid} on {self.base}"
            + (f", pinned to CPU {min(self.bridge_cpus)}" if self.bridge_cpus else "")
            + f"; emulator pid {self.emulator.pid}; "
            f"generator pid(s) {[g.pid for g in self.generators]}"
        )
        await asyncio.sleep(0.5)  # let start-up work (JWKS fetch, first imports) finish

    async def _spawn(
        self,
        name: str,
        args: list[str],
        cpus: set[int] | None,
        env: dict[str, str] | None = None,
        protocol: bool = True,
    ) -> Child:
        child = await spawn(name, args, workdir=self.workdir, cpus=cpus, env=env, protocol=protocol)
        self.children.append(child)
        return child

    async def _start_emulator(self, port: int) -> Child:
        config: dict[str, Any] = {
            "api_key": EMULATOR_KEY,
            "speed": self.options.speed,
            "port": port,
        }
        if self.faults is not None:
            config["call_faults"] = voicelive_call_faults(self.options, self.faults)
        args = [*WORKER, "emulator", json.dumps(config)]
        return await self._spawn("emulator", args, cpus=self.load_cpus)

    async def _start_generator(self, k: int) -> Child:
        config = {
            "access_key": self.access_key,
            "resource_id": self.resource_id,
            "acs_rate": self.options.acs_rate,
            "speed": self.options.speed,
        }
        args = [*WORKER, "generator", json.dumps(config)]
        return await self._spawn(f"generator-{k}", args, cpus=self.load_cpus)

    async def _start_bridge(self, voicelive_port: int) -> Child:
        env = bridge_env(
            self.options,
            port=self.port,
            voicelive=f"http://127.0.0.1:{voicelive_port}",
            router=self.router,
            access_key=self.access_key,
            resource_id=self.resource_id,
            log_dir=self.log_dir,
        )
        # `voicebridge serve`, with the simulator's media clock at the load's speed
        args = ["-m", "voicebridge.sim.serve", "--speed", repr(float(self.options.speed))]
        return await self._spawn("bridge", args, cpus=self.bridge_cpus, env=env, protocol=False)

    def pids(self) -> dict[str, int]:
        """Every process of the test by name; this one is ``orchestrator``."""
        children = [self.bridge, self.emulator, *self.generators]
        return {c.name: c.pid for c in children} | {"orchestrator": os.getpid()}

    async def stats(self, objects: bool = False) -> dict[str, Any]:
        """The bridge's ``GET /api/stats`` (``objects``: ``GET /debug/stats?trim=1``, its
        ``process`` with the census and a heap trim)."""
        assert self.session is not None
        path = "/debug/stats?trim=1" if objects else "/api/stats"
        async with self.session.get(f"{self.base}{path}") as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def _wait_ready(self) -> None:
        assert self.session is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.bridge.proc.returncode is not None:
                raise RuntimeError(f"the bridge exited during start-up:\n{self.bridge.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.session.get(f"{self.base}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the bridge was not ready within {STARTUP_TIMEOUT_S:.0f} s")

    async def settled_stats(self) -> dict[str, Any]:
        """``/api/stats`` once no call is active and every call has an outcome — each
        call's histograms and counters are merged before its outcome is recorded — or
        after :data:`~.options.SETTLE_TIMEOUT_S`, whatever it says then."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            stats = await self.stats()
            ended = sum(stats.get("calls_by_outcome", {}).values())
            if stats["active_calls"] == 0 and ended >= self.options.calls:
                return stats
            if time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.children), return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        await self.router.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- the steps


@dataclass
class _Start:
    """The figures just before the first call, to take differences from."""

    pids: dict[str, int]
    target: soak.Target
    idle_probe: dict[str, Any] | None
    beside_bridge: tuple[str, ...]
    memory: dict[str, float]
    cpu: dict[str, float]
    bridge_wait_s: float
    machine: dict[str, float]
    bridge_cpu: dict[str, float]
    wall: float


@dataclass
class _End:
    """What the run cost, once the bridge has wound its calls down."""

    stats: dict[str, Any]
    wall_s: float
    cpu: dict[str, float]
    contention: dict[str, float]
    memory: dict[str, float]
    emulator: dict[str, Any]


async def _before_calls(procs: Processes, probe: MachineProbe | None) -> _Start:
    """The leak check's idle probe (with ``leak_check``), the machine probe started (with
    ``machine_probe``), then every counter the report takes differences of."""
    pids = procs.pids()
    target = soak.Target(
        pid=procs.bridge.pid,
        port=procs.port,
        log_dir=procs.log_dir,
        others={k: v for k, v in pids.items() if k != "bridge"},
        get_stats=procs.stats,
    )
    idle_probe = await soak.probe(target, census=True) if procs.options.leak_check else None
    beside_bridge: tuple[str, ...] = ()
    if probe is not None and (probe_pid := await probe.start()) is not None:
        pids[probe.name] = probe_pid  # its CPU is ours, not "other load"
        beside_bridge = (probe.name,)
    memory = procfs.memory_mb(procs.bridge.pid)
    cpu = {name: procfs.cpu_seconds(pid) for name, pid in pids.items()}
    bridge_wait_s = procfs.runqueue_wait_s(procs.bridge.pid)
    machine, bridge_cpu = procfs.cpu_times(), procfs.cpu_times(procs.bridge_cpus)
    return _Start(
        pids=pids,
        target=target,
        idle_probe=idle_probe,
        beside_bridge=beside_bridge,
        memory=memory,
        cpu=cpu,
        bridge_wait_s=bridge_wait_s,
        machine=machine,
        bridge_cpu=bridge_cpu,
        wall=time.monotonic(),
    )


async def _place_calls(
    procs: Processes, start: _Start
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every generator gets its share of the call plan at once; until every one has
    replied, :func:`monitor` samples the bridge. ``(samples, replies)``."""
    options = procs.options
    procs.emulator.send({"cmd": "mark"})
    run = {
        "cmd": "run",
        "t0": start.wall + 0.2,
        "webhook": f"{procs.base}/api/incoming-call",
        "seconds": options.seconds,
        "timeout_s": options.timeout_s,
    }
    for generator, calls in zip(procs.generators, call_plan(options, procs.faults), strict=True):
        generator.send(run | {"calls": calls})
    waiting = [asyncio.create_task(g.receive(options.timeout_s + 30)) for g in procs.generators]
    try:
        samples = await monitor(procs, waiting, start.wall)
    finally:
        for task in waiting:
            task.cancel()  # a no-op for those that replied
        await asyncio.gather(*waiting, return_exceptions=True)
    for task in waiting:
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(str(task.exception()))
    return samples, [task.result() for task in waiting]


async def _after_calls(procs: Processes, start: _Start, probe: MachineProbe | None) -> _End:
    """The bridge's settled ``/api/stats``, every counter's difference since ``start``,
    the machine probe finished (if it ran), and the emulator's totals."""
    stats = await procs.settled_stats()
    wall_s = time.monotonic() - start.wall
    cpu = {name: procfs.cpu_seconds(pid) - start.cpu[name] for name, pid in start.pids.items()}
    machine, on_bridge_cpu = procfs.cpu_times(), procfs.cpu_times(procs.bridge_cpus)
    contention = {
        "bridge_runqueue_wait_s": procfs.runqueue_wait_s(procs.bridge.pid) - start.bridge_wait_s,
        "machine_tasks_s": machine["tasks"] - start.machine["tasks"],
        "machine_irq_s": machine["irq"] - start.machine["irq"],
        "machine_steal_s": machine["steal"] - start.machine["steal"],
        "bridge_cpu_tasks_s": on_bridge_cpu["tasks"] - start.bridge_cpu["tasks"],
    }
    memory = procfs.memory_mb(procs.bridge.pid)
    if probe is not None:
        await probe.finish(start.wall)
    procs.emulator.send({"cmd": "stats", "by_call": procs.faults is not None})
    emulator = await procs.emulator.receive(30)
    emulator["rss_mb"] = procfs.memory_mb(start.pids["emulator"])["hwm"]
    return _End(stats, wall_s, cpu, contention, memory, emulator)


async def _run_checks(
    procs: Processes, start: _Start, replies: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """With a leak check or a fault plan: the leak report (after a settle), the per-call
    logs and the bridge's log scanned (:mod:`~voicebridge.tools.loadtest.soak`)."""
    options = procs.options
    if not (options.leak_check or procs.faults is not None):
        return None
    checks: dict[str, Any] = {}
    if start.idle_probe is not None:
        # Nothing talks to the router once every call has ended: closing it closes the
        # bridge's pooled Call Automation connections from our side (as Call
        # Automation's idle timeout would), and the generators have closed their
        # callback connections likewise (loadgen.generator). The bridge must then
        # release those sockets; one it keeps shows as CLOSE_WAIT.
        await procs.router.stop()
        options.say(f"all calls ended; settling ({options.settle_s:g} s, then until idle)")
        settled = await soak.settle(start.target, start.idle_probe, settle_s=options.settle_s)
        checks["leaks"] = soak.leak_report(
            start.idle_probe,
            settled,
            calls=options.calls,
            peak_rss_mb=procfs.memory_mb(procs.bridge.pid)["hwm"],
        )
    checks["call_logs"] = soak.read_call_logs(procs.log_dir)
    checks["bridge_log"] = soak.scan_bridge_log(
        procs.bridge.log_path, _faults_by_call(replies, procs.faults)
    )
    return checks


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


async def monitor(
    procs: Processes, waiting: list[asyncio.Task[dict[str, Any]]], wall_start: float
) -> list[dict[str, Any]]:
    """Every second until every generator has replied (or one failed): the bridge's CPU %
    over that second, its active calls, and the running maxima of its loop lag and
    outbound latency (one cheap ``/api/stats`` request a second)."""
    bridge = procs.bridge
    samples: list[dict[str, Any]] = []
    last_cpu, last_t = procfs.cpu_seconds(bridge.pid), time.monotonic()
    while True:
        done, pending = await asyncio.wait(waiting, timeout=1.0)
        if not pending or any(task.exception() for task in done):
            return samples
        if bridge.proc.returncode is not None:
            raise RuntimeError(f"the bridge exited during the run:\n{bridge.log_tail()}")
        now, cpu = time.monotonic(), procfs.cpu_seconds(bridge.pid)
        sample: dict[str, Any] = {"t": round(now - wall_start, 2), "active": None}
        sample["cpu_pct"] = pct = round(100 * (cpu - last_cpu) / (now - last_t), 1)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, KeyError):
            stats = await procs.stats()
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
            procs.options.say(
                f"  t={now - wall_start:5.1f} s  active calls {active}, bridge CPU {pct:.0f} %"
            )
