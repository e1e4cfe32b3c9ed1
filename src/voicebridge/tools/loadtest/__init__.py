"""``voicebridge loadtest``: N concurrent simulated calls against ONE bridge process.

What runs where (everything binds 127.0.0.1 on free ports; nothing leaves loopback):

* **the bridge** — ``python -m voicebridge serve``, configured by environment variables
  as a deployment would be: one uvicorn process, one event loop, so at most one core.
  Its CPU time and peak RSS come from ``/proc/<pid>``; relay latency, event-loop lag,
  counters and outcomes from its own ``GET /api/stats`` once every call has ended.
* **the Voice Live emulator** and **``--generators K`` fake ACS callers** — worker
  processes of :mod:`~voicebridge.tools.loadtest.loadgen`. Callers play the shipped
  caller recording looped to ``--seconds``, each from a different point of it, so turns,
  answers and barge-ins are spread over time rather than hitting every call at once.
* **this process** — the orchestrator, and the one Call Automation endpoint the bridge
  is configured with (``ACS_CONNECTION_STRING``): the
  :class:`~voicebridge.tools.loadtest.acs_router.AcsRouter` forwards each REST request
  to the generator that owns the call. Only call set-up, token keys and hang-up pass
  through it; media and callbacks go straight between a generator and the bridge.

**One core.** When the machine has two CPUs or more, the bridge is pinned to one of
them and every other process to the rest, so its figures are one-core figures and the
load side cannot take its time. Other tenants of the machine still can: the report says
how much CPU processes outside the test used and how long the bridge's event loop sat
runnable waiting for a CPU. Whether the load side kept up is measured too (its loop lag,
GC pauses, and how overdue the callers' frames were), not assumed.

**Units.** A *call-second* is one second of media-clock time of one call (frames sent
x 20 ms, counted by the callers), so costs compare across ``--speed`` and call lengths.
Latencies are wall-clock ms. :mod:`~voicebridge.tools.loadtest.report` documents every
reported field.

**Faults and soak.** ``--fault NAME[=ARG]`` (repeatable) with ``--fault-fraction F``
gives a seeded share of the calls one fault each, the rest running normally; ``--soak``
is 100 calls x 60 s with :data:`~voicebridge.tools.loadtest.soak.SOAK_FAULTS` sprinkled
over 30 % of them, and the leak checks: the bridge's tasks, descriptors and memory idle
before the first call against the same after the last one ended, every call's log and
outcome, and its stderr scanned for unhandled exceptions
(:mod:`~voicebridge.tools.loadtest.soak`).

Processes are stopped in ``finally`` (stdin EOF, SIGTERM, SIGKILL to each process group),
and each child asks the kernel to kill it if this process dies first
(:mod:`~voicebridge.tools.loadtest.children`), so no run leaves orphans.

The modules, in the order a run uses them:

* :mod:`.cli` — the command's arguments and what it does with them;
* :mod:`.options` — :class:`~.options.LoadOptions`, the pass marks, the call plan;
* :mod:`.runner` — :func:`~.runner.run_load`: one run, step by step;
* :mod:`.children` — launching processes, CPU pinning, the bridge's environment;
* :mod:`.acs_router` — the one Call Automation endpoint in front of the generators;
* :mod:`.loadgen` — the load-side worker processes (emulator, generators);
* :mod:`.procfs` — what ``/proc`` says (CPU, memory, threads, descriptors, sockets);
* :mod:`.soak` — the fault plan, the leak checks and the log scans;
* :mod:`.machine_probe` — the speed reference and speed probe of the machine itself;
* :mod:`.report` — the report of a run (:func:`~.report.summarise`);
* :mod:`.text` — its text (:func:`~.text.format_report`);
* :mod:`.search` — ``--find-max`` and ``--sweep``: many runs in a row.

This file imports none of them at the top: the worker processes (``python -m
voicebridge.tools.loadtest.loadgen`` and ``.machine_probe``) import this package first,
and must start as light as their modules alone. The command's modules load when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``voicebridge loadtest`` (:func:`.cli.configure`)."""
    from voicebridge.tools.loadtest import cli

    cli.configure(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``voicebridge loadtest`` (:func:`.cli.run`): its exit status."""
    from voicebridge.tools.loadtest import cli

    return cli.run(args)
