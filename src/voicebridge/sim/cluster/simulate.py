"""``voicebridge simulate --replicas N --calls M [--fault NAME ...]``: M calls through a
whole offline cluster (:class:`~voicebridge.sim.cluster.Cluster`), and
``<out>/cluster-report.json``.

The calls are placed through the balancer a little apart (``--stagger``), the cluster
faults below run while they go on, and once every call has ended at the fake ACS and the
nodes have written their outcomes, the report is built (:mod:`.report`):

* ``answer_requests`` (``callConnections:answer`` requests the fake ACS received: one per
  call however many times Event Grid delivered it), ``reject_requests``,
  ``hangup_requests``, ``play_requests``;
* ``calls[]``: per call ``outcome`` (the bridge's final outcome: the last non-``moved``
  ``call_ended`` in the nodes' logs, else the Redis record's), ``outcome_source``,
  ``outcomes_by_node``, ``conserved`` and ``audio`` (sample accounting summed over the
  nodes' segments, :func:`.report.conservation`), ``answered_by``, ``media_by``,
  ``callbacks_by`` (the fake ACS's node attribution), ``media_sockets``,
  ``voicelive_sessions``, ``conversation_kept``, ``media_gaps_s``, ``redis``;
* ``nodes[]``: per node what it answered, owned and ended, the balancer's session counts,
  ERROR lines and unhandled exceptions in its log, its exit status;
* ``fault_actions`` (what the harness did, when), ``balancer``, ``redis`` (commands
  processed during the run), ``metrics`` (the nodes' ``/metrics`` summed:
  ``cluster_events`` by event, ``forwarded_total``, ``takeovers_total``, and
  ``forward_latency_p99_s`` once the nodes export ``voicebridge_forward_latency_seconds``).

Cluster faults (``--fault``, next to the ``acs-*``/``voicelive-*`` ones):

* ``kill-owner``: SIGKILL the node holding the first call's media, mid-call (combine with
  ``acs-redial-on-drop`` or ``acs-silent-on-drop`` for what ACS does next);
* ``sigterm-node``: SIGTERM the node holding the first call's media, mid-call; the nodes
  drain as ``--drain-mode`` says (``wait`` or ``migrate``);
* ``redis-restart[=S]``: stop redis-server mid-call, start it again S wall seconds later
  (default 2), empty;
* ``duplicate-eventgrid``: post each ``IncomingCall`` 2 more times, as Event Grid retries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicebridge.sim.cluster.binaries import MissingBinaries, missing_message
from voicebridge.sim.cluster.cluster import Cluster, ClusterOptions
from voicebridge.sim.cluster.report import (
    histogram_quantile,
    metric_sums,
    node_summary,
    read_segments,
)
from voicebridge.sim.faults import parse_faults

__all__ = [
    "CLUSTER_FAULTS",
    "CLUSTER_FAULT_HELP",
    "ClusterSimOptions",
    "run",
    "run_cluster_sim",
    "split_faults",
    "summary_text",
]

log = logging.getLogger(__name__)

#: Cluster fault name -> one-line help (the harness does these, not the fake or emulator).
CLUSTER_FAULTS = {
    "kill-owner": "SIGKILL the node holding the first call's media, mid-call",
    "sigterm-node": "SIGTERM the node holding the first call's media (--drain-mode)",
    "redis-restart": "=S: stop redis-server mid-call, start it S s later (default 2)",
    "duplicate-eventgrid": "post every IncomingCall 2 more times (Event Grid retries)",
}
CLUSTER_FAULT_HELP = "with --replicas, cluster faults:\n" + "\n".join(
    f"  {name.ljust(22)}  {text}" for name, text in CLUSTER_FAULTS.items()
)
#: Wall seconds the nodes get to write every call's outcome after the fake saw it end.
SETTLE_S = 15.0


@dataclass
class ClusterSimOptions:
    """One ``voicebridge simulate --replicas`` run."""

    replicas: int = 3
    calls: int = 3
    speed: float = 1.0
    acs_rate: int = 16000
    voicelive_rate: int = 24000
    caller_audio: Path | None = None
    faults: list[str] = field(default_factory=list)
    drain_mode: str = "wait"
    out: Path = Path("sim-out")
    stagger_s: float = 0.3
    env: dict[str, str] = field(default_factory=dict)
    progress: Any = None

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


def split_faults(specs: list[str]) -> tuple[dict[str, float | None], list[str]]:
    """``(cluster faults with their argument, the other specs)``; ``ValueError`` for a
    cluster fault given twice or with a bad argument (the others are checked by
    :func:`voicebridge.sim.faults.parse_faults`)."""
    cluster: dict[str, float | None] = {}
    rest: list[str] = []
    for spec in specs:
        name, sep, arg = spec.strip().partition("=")
        name = name.strip().lower()
        if name not in CLUSTER_FAULTS:
            rest.append(spec)
            continue
        if name in cluster:
            raise ValueError(f"fault {name!r} given more than once")
        value: float | None = None
        if sep:
            if name != "redis-restart":
                raise ValueError(f"fault {name!r} takes no argument (got {spec!r})")
            try:
                value = float(arg)
            except ValueError:
                raise ValueError(f"fault {name!r}: S must be a number (got {arg!r})") from None
            if not 0 <= value <= 60:
                raise ValueError(f"fault {name!r}: S must be within 0..60")
        cluster[name] = value
    parse_faults(rest)
    return cluster, rest


# --------------------------------------------------------------------------- the run


async def run_cluster_sim(options: ClusterSimOptions) -> dict[str, Any]:
    """Run the calls through a fresh cluster and return ``cluster-report.json``'s
    content (also written to ``<out>/cluster-report.json``)."""
    from voicebridge.sim.simulate import SimOptions, load_caller

    cluster_faults, other = split_faults(options.faults)
    faults = parse_faults(other)
    pcm, _ = load_caller(
        SimOptions(caller_audio=options.caller_audio, acs_rate=options.acs_rate, out=None)
    )
    audio_s = len(pcm) / options.acs_rate
    options.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(options.out / "cluster", ignore_errors=True)  # a previous run's logs
    cluster_options = ClusterOptions(
        replicas=options.replicas,
        speed=options.speed,
        acs_rate=options.acs_rate,
        voicelive_rate=options.voicelive_rate,
        drain_mode=options.drain_mode,
        acs_faults=faults.acs,
        voicelive_faults=faults.voicelive,
        env=dict(options.env),
        workdir=options.out / "cluster",
        progress=options.progress,
    )
    actions: list[dict[str, Any]] = []
    async with Cluster(cluster_options) as cluster:
        ops_before = await cluster.redis.ops()
        started = time.monotonic()
        first_call: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fault_task = asyncio.create_task(
            _run_faults(cluster, cluster_faults, first_call, audio_s, actions)
        )
        try:
            await _place(cluster, options, pcm, cluster_faults, first_call)
            if "duplicate-eventgrid" in cluster_faults:
                actions.append({"fault": "duplicate-eventgrid", "redeliveries": 2 * options.calls})
            timeout = audio_s / options.speed + 60.0 + options.stagger_s * options.calls
            with contextlib.suppress(TimeoutError):
                await _watch(cluster, options, timeout, started)
        finally:
            if not first_call.done():
                first_call.cancel()
            await asyncio.gather(fault_task, return_exceptions=True)
        if fault_task.done() and not fault_task.cancelled() and fault_task.exception():
            actions.append({"error": repr(fault_task.exception())})
        await _settle(cluster)
        snapshot = await _snapshot(cluster, ops_before)
        report = await build_report(cluster, options, actions, snapshot)
    (options.out / "cluster-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


async def _place(
    cluster: Cluster,
    options: ClusterSimOptions,
    pcm: Any,
    cluster_faults: dict[str, float | None],
    first_call: asyncio.Future[Any],
) -> None:
    for i in range(options.calls):
        if i:
            await asyncio.sleep(options.stagger_s)
        call = await cluster.place_call(pcm)
        if not first_call.done():
            first_call.set_result(call)
        if "duplicate-eventgrid" in cluster_faults:
            await cluster.redeliver(call, 2)


async def _watch(
    cluster: Cluster, options: ClusterSimOptions, timeout_s: float, started: float
) -> None:
    """Until every call ended at the fake (``TimeoutError`` after ``timeout_s``), with a
    progress line every few seconds."""
    deadline = started + timeout_s
    while True:
        live = [c for c in cluster.calls if not c.ended.is_set()]
        if not live:
            return
        if time.monotonic() > deadline:
            raise TimeoutError
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.ended.wait() for c in live)), 3.0)
        ended = sum(1 for c in cluster.calls if c.ended.is_set())
        options.say(
            f"  t={time.monotonic() - started:5.1f} s  calls ended {ended}/{len(cluster.calls)}, "
            f"nodes up {len(cluster.live_nodes())}/{len(cluster.nodes)}"
        )


async def _mid_call(call: Any, audio_s: float, timeout_s: float = 60.0) -> None:
    """Until ``call`` is well into its audio: media flowing and 40 % of the caller's audio
    (at most 8 s of it) played."""
    at_s = min(8.0, 0.4 * audio_s)
    deadline = time.monotonic() + timeout_s
    await asyncio.wait_for(call.media_connected.wait(), timeout_s)
    while call.frames_sent * 0.02 < at_s and not call.ended.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the call never got mid-way")
        await asyncio.sleep(0.02)


async def _run_faults(
    cluster: Cluster,
    faults: dict[str, float | None],
    first_call: asyncio.Future[Any],
    audio_s: float,
    actions: list[dict[str, Any]],
) -> None:
    """The mid-call cluster faults (kill-owner, sigterm-node, redis-restart), in that
    order, once the first call is mid-way; each recorded in ``actions``."""
    wanted = [f for f in ("kill-owner", "sigterm-node", "redis-restart") if f in faults]
    if not wanted:
        return
    call = await first_call
    await _mid_call(call, audio_s)
    t0 = time.monotonic()
    for name in wanted:
        action: dict[str, Any] = {"fault": name, "call": call.correlation_id}
        action["call_time_s"] = round(call.frames_sent * 0.02, 2)
        if name == "redis-restart":
            down_s = faults[name] if faults[name] is not None else 2.0
            await cluster.redis.restart(down_s=float(down_s or 0.0))
            action["down_s"] = down_s
        else:
            owner = await cluster.owner_of(call)
            node = cluster.nodes.get(owner or "")
            action["node"] = owner
            if node is None or not node.running:
                action["error"] = "no live owner found for the call"
            elif name == "kill-owner":
                node.kill()
                await node.wait(10)
            else:
                node.signal(15)
                with contextlib.suppress(TimeoutError):
                    await node.wait(180)
                action["exit_after_s"] = round(time.monotonic() - t0, 2)
            action["exit_status"] = node.returncode if node is not None else None
        actions.append(action)


async def _settle(cluster: Cluster, timeout_s: float = SETTLE_S) -> None:
    """Until every answered call has a final outcome in the logs or Redis (bounded)."""
    await cluster.wait_outcomes(
        [c for c in cluster.calls if c.call_connection_id is not None], timeout_s
    )


async def _snapshot(cluster: Cluster, ops_before: dict[str, int]) -> dict[str, Any]:
    """What must be read while everything still runs: Redis, metrics, balancer stats."""
    metrics: dict[str, str] = {}
    for node in cluster.live_nodes():
        with contextlib.suppress(Exception):
            status, body, _ = await node.get("/metrics")
            if status == 200:
                metrics[node.name] = str(body)
    balancer: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        balancer = await cluster.haproxy.show_stat()
    ops: dict[str, int] = {}
    with contextlib.suppress(Exception):
        ops = await cluster.redis.ops()
    return {
        "records": await cluster.records(),
        "metrics": metrics,
        "balancer": balancer,
        "redis_ops": {
            "commands": ops.get("total_commands_processed", 0)
            - (ops_before.get("total_commands_processed", 0) if cluster.redis.starts == 1 else 0),
            "restarted": cluster.redis.starts > 1,
        },
    }


# --------------------------------------------------------------------------- the report


def _requests(cluster: Cluster, suffix: str) -> int:
    return sum(
        1 for r in cluster.acs.requests if r["method"] == "POST" and str(r["path"]).endswith(suffix)
    )


async def build_report(
    cluster: Cluster,
    options: ClusterSimOptions,
    actions: list[dict[str, Any]],
    snapshot: dict[str, Any],
) -> dict[str, Any]:
    """``cluster-report.json`` (fields in the module docstring)."""
    killed = {str(a["node"]) for a in actions if a.get("fault") == "kill-owner" and a.get("node")}
    calls = await cluster.call_reports(cluster.calls, killed=killed)
    nodes = [
        node_summary(
            node.name,
            read_segments(node.name, node.log_dir),
            cluster.calls,
            returncode=node.returncode,
            balancer=snapshot["balancer"].get(node.name),
            log_path=node.log_path,
        )
        for node in cluster.nodes.values()
    ]
    sums = metric_sums(snapshot["metrics"].values())
    hangups = sum(
        1
        for r in cluster.acs.requests
        if (r["method"] == "DELETE" and r.get("call_connection_id"))
        or str(r["path"]).endswith(":terminate")
    )
    return {
        "replicas": options.replicas,
        "calls_placed": len(cluster.calls),
        "speed": options.speed,
        "drain_mode": options.drain_mode,
        "faults": list(options.faults),
        "fault_actions": actions,
        "answer_requests": _requests(cluster, "/calling/callConnections:answer"),
        "reject_requests": _requests(cluster, "/calling/callConnections:reject"),
        "hangup_requests": hangups,
        "play_requests": _requests(cluster, ":play"),
        "outcomes": dict(Counter(str(c["outcome"]) for c in calls)),
        "calls_conserved": sum(1 for c in calls if c["conserved"]),
        "calls": calls,
        "nodes": nodes,
        "balancer": snapshot["balancer"],
        "redis": snapshot["redis_ops"],
        "metrics": {
            "cluster_events": cluster_events(sums),
            "forwarded_total": cluster_events(sums).get("forwarded"),
            "takeovers_total": cluster_events(sums).get("takeover"),
            "forward_latency_p99_s": histogram_quantile(
                sums, "voicebridge_forward_latency_seconds", 0.99
            ),
        },
        "emulator_sessions": len(cluster.emulator.sessions),
        "fake_acs_internal_errors": list(cluster.acs.internal_errors),
    }


_EVENT = re.compile(r'^voicebridge_cluster_events_total\{(?:[^}]*,)?event="(?P<event>[^"]+)"')


def cluster_events(sums: dict[str, float]) -> dict[str, float]:
    """``voicebridge_cluster_events_total`` summed over the nodes, by ``event``
    (takeover, forwarded, forward_undelivered, handed_off, redis_error, janitor)."""
    out: dict[str, float] = {}
    for key, value in sums.items():
        match = _EVENT.match(key)
        if match is not None:
            out[match["event"]] = out.get(match["event"], 0.0) + value
    return out


def summary_text(report: dict[str, Any]) -> str:
    """A few lines for the terminal, like ``voicebridge simulate``'s."""

    def spread(field_name: str) -> str:
        counts: Counter[str] = Counter()
        for c in report["calls"]:
            value = c.get(field_name)
            for v in value if isinstance(value, list) else [value]:
                if v is not None:
                    counts[str(v)] += 1
        return ", ".join(f"{k}:{n}" for k, n in sorted(counts.items())) or "unknown"

    rows = [
        ("replicas / calls", f"{report['replicas']} / {report['calls_placed']}"),
        ("outcomes", ", ".join(f"{k}:{n}" for k, n in sorted(report["outcomes"].items()))),
        (
            "conserved",
            f"{report['calls_conserved']}/{report['calls_placed']} "
            f"({sum(1 for c in report['calls'] if c['audio']['countable'])} counted at every hop; "
            "others: media on a killed node, or no media at all)",
        ),
        ("answer requests", report["answer_requests"]),
        ("answered by", spread("answered_by")),
        ("media by", spread("media_by")),
        ("fault actions", "; ".join(json.dumps(a) for a in report["fault_actions"]) or "none"),
        (
            "forwarded / takeovers",
            f"{report['metrics']['forwarded_total']} / {report['metrics']['takeovers_total']}",
        ),
        ("redis commands", report["redis"]["commands"]),
    ]
    for node in report["nodes"]:
        rows.append(
            (
                f"node {node['node']}",
                f"answered {node['answered']}, owned {node['segments_owned']}, "
                f"outcomes {node['outcomes']}, errors {node['log']['errors']}, "
                f"unhandled {node['log']['unhandled']}, exit {node['exit_status']}",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """``voicebridge simulate``'s cluster arguments (an argument group)."""
    cluster = parser.add_argument_group(
        "cluster (voicebridge.sim.cluster: needs redis-server and haproxy)",
        description="--fault also takes, " + CLUSTER_FAULT_HELP,
    )
    cluster.add_argument(
        "--replicas",
        type=int,
        help="run N bridge nodes behind HAProxy with Redis; writes cluster-report.json",
    )
    cluster.add_argument("--calls", type=int, help="with --replicas: calls (default 3)")
    cluster.add_argument(
        "--drain-mode",
        choices=("wait", "migrate"),
        help="with --replicas: the nodes' DRAIN_MODE (default wait)",
    )


def run(args: argparse.Namespace) -> int:
    """``voicebridge simulate --replicas N``: 0 when every call has an outcome and is
    conserved, 1 otherwise or when the run failed, 2 on bad options or missing programs."""
    if args.replicas is None:
        print("voicebridge simulate: --calls and --drain-mode go with --replicas", file=sys.stderr)
        return 2
    if getattr(args, "scenario", None):
        print("voicebridge simulate: --scenario does not combine with --replicas", file=sys.stderr)
        return 2
    args.calls = 3 if args.calls is None else args.calls
    args.drain_mode = args.drain_mode or "wait"
    if args.replicas < 1 or args.calls < 1:
        print("voicebridge simulate: --replicas and --calls must be at least 1", file=sys.stderr)
        return 2
    if args.voicelive_endpoint:
        print("voicebridge simulate: --replicas runs the emulator", file=sys.stderr)
        return 2
    try:
        split_faults(args.fault)
    except ValueError as exc:
        print(f"voicebridge simulate: {exc}", file=sys.stderr)
        return 2
    problem = missing_message()
    if problem is not None:
        print(f"voicebridge simulate: {problem}", file=sys.stderr)
        return 2
    options = ClusterSimOptions(
        replicas=args.replicas,
        calls=args.calls,
        speed=args.speed,
        acs_rate=args.acs_rate,
        voicelive_rate=args.voicelive_rate,
        caller_audio=args.caller_audio,
        faults=list(args.fault),
        drain_mode=args.drain_mode,
        out=args.out,
        progress=lambda msg: print(msg, flush=True),
    )
    try:
        report = asyncio.run(run_cluster_sim(options))
    except MissingBinaries as exc:
        print(f"voicebridge simulate: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"voicebridge simulate: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"\nwrote {args.out}/cluster-report.json (node logs in {args.out}/cluster/)\n")
    print(summary_text(report))
    ok = all(c["conserved"] and c["outcome"] is not None for c in report["calls"])
    return 0 if ok else 1
