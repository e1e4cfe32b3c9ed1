"""``voicebridge loadtest --replicas N``: the load test's calls through the offline cluster
(:mod:`voicebridge.sim.cluster`): redis-server, N bridge nodes and HAProxy in front of
them, with the same emulator, fake ACS generators and Call Automation router as a
one-bridge run (:class:`ClusterProcesses`, :func:`run_cluster_load`).

The report is the one-bridge report (:func:`~.report.summarise`) over the nodes taken
together, plus ``cluster``:

* the bridge's figures are summed over the nodes: CPU (``bridge_cpu_s`` is every node's),
  RSS (sum of the nodes' peaks), counters, outcomes;
* ``inbound_latency_ms`` / ``outbound_latency_ms`` / ``loop_lag_ms``: ``count`` summed,
  ``p50``/``p99``/``max`` the *highest node's* (a node's own histogram percentiles cannot
  be merged exactly; the highest one bounds what a call saw, and compares with a
  one-bridge run measured the same way). ``cluster.relay_p99_ms_merged`` is the p99 of
  every node's ``voicebridge_relay_latency_seconds`` buckets added up (bucket
  resolution), per direction;
* ``cluster``: ``replicas``, per node its relay p99s, outcomes and CPU seconds, the
  balancer's per-node session counts, ``redis_commands`` (during the run),
  ``redis_ops_per_s``, and ``forwarded_total`` (callbacks forwarded between nodes:
  ``voicebridge_cluster_events_total{event="forwarded"}``).

Nothing is pinned: the nodes, the load side and Redis share the machine's CPUs, so this
tests that calls work through the balancer at load (nothing lost, none failed), and
what a node costs there; a node's capacity stays a one-bridge figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from voicebridge.sim.cluster.cluster import DEFAULT_NODE_ENV, url_key
from voicebridge.sim.cluster.haproxy import HAProxy, ServerSlot
from voicebridge.sim.cluster.node import BridgeNode
from voicebridge.sim.cluster.redis_server import RedisServer
from voicebridge.sim.cluster.report import histogram_quantile, metric_sums
from voicebridge.sim.cluster.simulate import cluster_events
from voicebridge.sim.ports import free_port
from voicebridge.tools.loadtest import procfs
from voicebridge.tools.loadtest.children import Child, bridge_env
from voicebridge.tools.loadtest.options import STARTUP_TIMEOUT_S, LoadOptions, call_plan
from voicebridge.tools.loadtest.report import summarise
from voicebridge.tools.loadtest.runner import Processes

__all__ = ["ClusterProcesses", "merge_stats", "run_cluster_load"]


class ClusterProcesses(Processes):
    """:class:`~.runner.Processes` with the one bridge replaced by the cluster: Redis,
    ``options.replicas`` nodes and HAProxy on :attr:`port` (so :attr:`base`, the
    webhook's host, is the balancer). :attr:`bridge` is node r1 (for log tails only)."""

    def __init__(self, options: LoadOptions) -> None:
        super().__init__(options)
        self.replicas = int(options.replicas or 1)
        self.redis = RedisServer(self.workdir / "redis")
        self.nodes: list[BridgeNode] = []
        self.haproxy: HAProxy | None = None
        self.bridge_cpus = self.load_cpus = None  # nothing pinned

    async def _start_bridge(self, voicelive_port: int) -> Child:
        await self.redis.start()
        slots = [ServerSlot(f"r{i}", free_port()) for i in range(1, self.replicas + 1)]
        self.haproxy = HAProxy(self.workdir / "haproxy", slots, port=self.port)
        keys = f"k1:{url_key()}"
        for slot in slots:
            env = bridge_env(
                self.options,
                port=slot.port,
                voicelive=f"http://127.0.0.1:{voicelive_port}",
                router=self.router,
                access_key=self.access_key,
                resource_id=self.resource_id,
                log_dir=self.workdir / slot.name / "logs",
            )
            env |= DEFAULT_NODE_ENV | {
                "LOG_LEVEL": "WARNING",
                "PUBLIC_BASE_URL": f"http://127.0.0.1:{self.port}",
                "REDIS_URL": self.redis.url,
                "CALL_URL_KEYS": keys,
                "MAX_NODES": str(self.replicas),
                "MAX_CONCURRENT_CALLS": env["MAX_CONCURRENT_CALLS"],
            }
            env |= self.options.bridge_env
            node = BridgeNode(
                slot.name, slot.port, env, self.workdir / slot.name, speed=self.options.speed
            )
            self.nodes.append(node)
        await asyncio.gather(*(n.start(wait=False) for n in self.nodes))
        first = self.nodes[0]
        assert first.proc is not None
        return Child(f"bridge-{first.name}", first.proc.proc, first.log_path)

    async def _wait_ready(self) -> None:
        await asyncio.gather(*(n.wait_ready(STARTUP_TIMEOUT_S) for n in self.nodes))
        assert self.haproxy is not None
        await self.haproxy.start()

    def node_pids(self) -> dict[str, int]:
        return {n.name: n.pid for n in self.nodes if n.pid is not None}

    def pids(self) -> dict[str, int]:
        children = [self.emulator, *self.generators]
        return {c.name: c.pid for c in children} | self.node_pids()

    async def stats(self, objects: bool = False) -> dict[str, Any]:
        """Every node's ``/api/stats``, merged (:func:`merge_stats`)."""
        per = await self.node_stats()
        return merge_stats(list(per.values()))

    async def node_stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            if node.running:
                status, body, _ = await node.get("/api/stats")
                if status == 200 and isinstance(body, dict):
                    out[node.name] = body
        return out

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)
        if self.haproxy is not None:
            with contextlib.suppress(Exception):
                await self.haproxy.stop()
        with contextlib.suppress(Exception):
            await self.redis.stop()
        await super().stop()


def _max_hist(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Histogram summaries of several nodes: count summed, every percentile the highest."""
    if not parts:
        return {}
    merged: dict[str, Any] = {"count": sum(int(p.get("count", 0)) for p in parts)}
    for key in ("p50", "p90", "p99", "max", "mean"):
        values = [float(p[key]) for p in parts if p.get(key) is not None]
        if values:
            merged[key] = max(values)
    return merged


def merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Several nodes' ``/api/stats`` as one: counts and counters summed, histogram
    percentiles the highest node's (see the module docstring)."""
    counters: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for s in stats:
        counters.update({k: v for k, v in s.get("counters", {}).items() if isinstance(v, int)})
        outcomes.update(s.get("calls_by_outcome", {}))
    merged: dict[str, Any] = {
        "active_calls": sum(int(s.get("active_calls", 0)) for s in stats),
        "calls_by_outcome": dict(outcomes),
        "calls_not_conserved": sum(int(s.get("calls_not_conserved", 0)) for s in stats),
        "counters": dict(counters),
        "relay_latency_ms": {
            d: _max_hist([s.get("relay_latency_ms", {}).get(d, {}) for s in stats])
            for d in ("inbound", "outbound")
        },
    }
    for key in ("loop_lag_ms", "gc_pause_ms"):
        merged[key] = _max_hist([s[key] for s in stats if isinstance(s.get(key), dict)])
    return merged


async def run_cluster_load(options: LoadOptions) -> dict[str, Any]:
    """One load test through ``options.replicas`` nodes behind HAProxy; its report (the
    one-bridge fields over the nodes, and ``cluster``). Every process is stopped before
    this returns or raises."""
    options.validate()
    procs = ClusterProcesses(options)
    try:
        await procs.start()
        pids = procs.pids()
        cpu0 = {name: procfs.cpu_seconds(pid) for name, pid in pids.items()}
        idle_rss = sum(procfs.memory_mb(pid)["rss"] for pid in procs.node_pids().values())
        machine0 = procfs.cpu_times()
        ops0 = await procs.redis.ops()
        wall0 = time.monotonic()
        replies = await _run_calls(procs, wall0)
        per_node = await _settled(procs)
        wall_s = time.monotonic() - wall0
        cpu = {name: procfs.cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        machine = procfs.cpu_times()
        node_cpu = {n: cpu.pop(n) for n in procs.node_pids()}
        cpu["bridge"] = sum(node_cpu.values())
        hwm = sum(procfs.memory_mb(pid)["hwm"] for pid in procs.node_pids().values())
        procs.emulator.send({"cmd": "stats", "by_call": False})
        emulator = await procs.emulator.receive(30)
        emulator["rss_mb"] = procfs.memory_mb(pids["emulator"])["hwm"]
        cluster = await _cluster_fields(procs, per_node, node_cpu, ops0, wall_s)
        report = summarise(
            options,
            stats=merge_stats(list(per_node.values())),
            generators=replies,
            emulator=emulator,
            cpu=cpu,
            wall_s=wall_s,
            memory={"idle": {"rss": idle_rss}, "end": {"hwm": hwm}},
            samples=[],
            contention={
                "bridge_runqueue_wait_s": 0.0,
                "machine_tasks_s": machine["tasks"] - machine0["tasks"],
                "machine_irq_s": machine["irq"] - machine0["irq"],
                "machine_steal_s": machine["steal"] - machine0["steal"],
                "bridge_cpu_tasks_s": 0.0,
            },
            pinned={"bridge": [], "load": []},
        )
        return report | {"cluster": cluster}
    finally:
        await procs.stop()


async def _run_calls(procs: ClusterProcesses, wall0: float) -> list[dict[str, Any]]:
    """Every generator gets its share of the plan; their replies once all have ended."""
    options = procs.options
    procs.emulator.send({"cmd": "mark"})
    run = {
        "cmd": "run",
        "t0": wall0 + 0.2,
        "webhook": f"{procs.base}/api/incoming-call",
        "seconds": options.seconds,
        "timeout_s": options.timeout_s,
    }
    for generator, calls in zip(procs.generators, call_plan(options), strict=True):
        generator.send(run | {"calls": calls})
    waiting = [asyncio.create_task(g.receive(options.timeout_s + 30)) for g in procs.generators]
    try:
        while True:
            done, pending = await asyncio.wait(waiting, timeout=5.0)
            if not pending or any(t.exception() for t in done):
                break
            with contextlib.suppress(Exception):
                active = (await procs.stats())["active_calls"]
                options.say(f"  t={time.monotonic() - wall0:5.1f} s  active calls {active}")
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    for task in waiting:
        if not task.cancelled() and task.exception() is not None:
            raise RuntimeError(str(task.exception()))
    return [task.result() for task in waiting]


async def _settled(procs: ClusterProcesses) -> dict[str, dict[str, Any]]:
    """Each node's ``/api/stats`` once no call is active anywhere and every call has an
    outcome, or after :data:`~.options.SETTLE_TIMEOUT_S` (whatever they say then)."""
    from voicebridge.tools.loadtest.options import SETTLE_TIMEOUT_S

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        per = await procs.node_stats()
        merged = merge_stats(list(per.values()))
        ended = sum(merged["calls_by_outcome"].values())
        if merged["active_calls"] == 0 and ended >= procs.options.calls:
            return per
        if time.monotonic() > deadline:
            return per
        await asyncio.sleep(0.1)


async def _cluster_fields(
    procs: ClusterProcesses,
    per_node: dict[str, dict[str, Any]],
    node_cpu: dict[str, float],
    ops0: dict[str, int],
    wall_s: float,
) -> dict[str, Any]:
    """The report's ``cluster`` (see the module docstring)."""
    texts = []
    for node in procs.nodes:
        with contextlib.suppress(Exception):
            status, body, _ = await node.get("/metrics")
            if status == 200:
                texts.append(str(body))
    sums = metric_sums(texts)
    balancer: dict[str, Any] = {}
    if procs.haproxy is not None:
        with contextlib.suppress(Exception):
            balancer = await procs.haproxy.show_stat()
    ops = await procs.redis.ops()
    commands = ops["total_commands_processed"] - ops0["total_commands_processed"]
    forwarded = cluster_events(sums).get("forwarded")
    merged = {
        d: _ms(histogram_quantile(sums, "voicebridge_relay_latency_seconds", 0.99, direction=d))
        for d in ("inbound", "outbound")
    }
    return {
        "replicas": procs.replicas,
        "nodes": [
            {
                "node": name,
                "inbound_p99_ms": s.get("relay_latency_ms", {}).get("inbound", {}).get("p99"),
                "outbound_p99_ms": s.get("relay_latency_ms", {}).get("outbound", {}).get("p99"),
                "calls_by_outcome": s.get("calls_by_outcome", {}),
                "cpu_s": round(node_cpu.get(name, 0.0), 3),
                "balancer_sessions": balancer.get(name, {}).get("stot"),
            }
            for name, s in per_node.items()
        ],
        "relay_p99_ms_merged": merged,
        "redis_commands": commands,
        "redis_ops_per_s": round(commands / wall_s, 1) if wall_s > 0 else None,
        "forwarded_total": forwarded,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
