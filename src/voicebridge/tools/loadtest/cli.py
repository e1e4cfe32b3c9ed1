"""The arguments of ``voicebridge loadtest`` (:func:`configure`) and what it does with them
(:func:`run`): one run, ``--find-max``, ``--sweep`` or ``--soak``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from voicebridge.sim.cluster.binaries import missing_message
from voicebridge.tools.loadtest import soak
from voicebridge.tools.loadtest.options import P99_LIMIT_MS, LoadOptions
from voicebridge.tools.loadtest.runner import run_load
from voicebridge.tools.loadtest.search import (
    find_max,
    format_find_max,
    format_sweep,
    plot_sweep,
    sweep,
)
from voicebridge.tools.loadtest.text import format_report

_T = TypeVar("_T")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``voicebridge loadtest``."""
    _run_arguments(parser)
    _search_arguments(parser)
    _fault_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="print exactly one JSON object on stdout"
    )


def _run_arguments(parser: argparse.ArgumentParser) -> None:
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
    add(
        "--replicas",
        type=int,
        metavar="N",
        help="run the calls through N bridge nodes behind HAProxy with Redis (the offline "
        "cluster; needs redis-server and haproxy); compare with a run without it",
    )
    add(
        "--machine-probe",
        action="store_true",
        help="also time the machine itself on the bridge's CPU: a speed reference before and "
        "after the calls, a speed probe once a second during them (how slow the CPU ran)",
    )


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
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


def _fault_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
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


def _counts(text: str) -> list[int]:
    """``--sweep`` value: comma-separated call counts, each at least 1."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of call counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"call counts must be 1 or more: {text!r}")
    return counts


def options_from(args: argparse.Namespace) -> LoadOptions:
    """The :class:`LoadOptions` of the command line; ``ValueError`` saying what is wrong
    with it."""
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--env wants NAME=VALUE, not {item!r}")
        env[name] = value
    if sum(map(bool, (args.soak, args.find_max, args.sweep))) > 1:
        raise ValueError("--soak, --find-max and --sweep do not combine")
    if args.plot is not None and not args.sweep:
        raise ValueError("--plot goes with --sweep")
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
        machine_probe=args.machine_probe,
        replicas=args.replicas,
    )
    if args.replicas is not None and (args.find_max or args.sweep):
        raise ValueError("--replicas does not combine with --find-max or --sweep")
    options.validate()
    return options


def run(args: argparse.Namespace) -> int:
    """0 when the test ran and (for a single run) nothing was lost, no call failed and,
    with leak checks, every check passed; 1 when something was lost or failed, a check
    did not pass, or the test could not run; 2 on bad options."""
    try:
        options = options_from(args)
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
        if options.replicas is not None:
            problem = missing_message()
            if problem is not None:
                print(f"voicebridge loadtest: {problem}", file=sys.stderr)
                return 2
            from voicebridge.tools.loadtest.cluster import run_cluster_load

            report = asyncio.run(_stoppable(run_cluster_load(options)))
        else:
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
