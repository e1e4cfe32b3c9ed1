"""S11 (scale-out.md §6.4): ``voicebridge serve --workers 2`` (r1) behind HAProxy next to
a one-process node (r2). The kernel spreads r1's connections over its workers; a worker
killed with SIGKILL is restarted and its calls follow S4a (ACS re-dials); SIGTERM to the
supervisor drains both workers (S5b: their calls move to r2).

At speed 1: ``python -m voicebridge.sim.serve --speed S`` runs one process whatever
``--workers`` says (a worker re-executes ``voicebridge serve``, without the scaled clock),
so this module runs the whole cluster in real time, with 14 s calls."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from tests.cluster.conftest import caller_audio, running
from tests.cluster.helpers import (
    assert_outcomes,
    ended,
    eventually,
    hung_up_by_bridge,
    media_nodes,
    mid_call,
)
from voicebridge.sim.cluster import Cluster
from voicebridge.sim.fake_acs import FakeCall

pytestmark = pytest.mark.asyncio

CALLS = 10


def worker_ids(calls: list[FakeCall]) -> set[str]:
    """Node ids of r1's workers seen by the fake: every id but the other replica's."""
    seen: set[str] = set()
    for call in calls:
        seen |= {n for n in media_nodes(call) if n != "r2"}
        seen |= {str(cb["node"]) for cb in call.callbacks_by if cb.get("node") not in (None, "r2")}
    return seen


async def test_s11_workers_share_calls_survive_a_killed_worker_and_drain_together() -> None:
    pcm: np.ndarray = caller_audio(14.0)
    async with running(
        "workers",
        speed=1.0,
        replicas=2,
        workers={"r1": 2},
        drain_mode="migrate",
        acs_faults={"acs-redial-on-drop": None},
    ) as cluster:
        r1 = cluster.nodes["r1"]
        workers = r1.worker_pids()
        assert len(workers) == 2, workers
        calls = await cluster.place_calls(CALLS, pcm, stagger_s=0.1)
        await cluster.wait_owned(calls)
        await mid_call(calls, 3.0)
        assert len(worker_ids(calls)) == 2, [media_nodes(c) for c in calls]
        os.kill(workers[0], signal.SIGKILL)  # its calls: ACS re-dials (S4a)
        await eventually(
            _worker_pids(cluster),
            lambda pids: len(pids) == 2 and workers[0] not in pids,
            20,
            "the supervisor restarts the killed worker",
        )
        owned = await cluster.wait_owned([c for c in calls if not c.ended.is_set()])
        on_r1 = [c for c in calls if owned.get(c.correlation_id, "r2") != "r2"]
        r1.signal(signal.SIGTERM)  # drains both workers: their calls move (S5b)
        assert await r1.wait(60) == 0
        outcomes = await ended(cluster, calls, 60)
        assert_outcomes(cluster, outcomes)
        assert not [c for c in calls if hung_up_by_bridge(cluster, c)]
        for call in on_r1:
            assert media_nodes(call)[-1] == "r2", media_nodes(call)


def _worker_pids(cluster: Cluster) -> Callable[[], Awaitable[list[int]]]:
    async def probe() -> list[int]:
        return cluster.nodes["r1"].worker_pids()

    return probe
