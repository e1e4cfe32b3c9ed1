"""S11 (scale-out.md §6.4): ``voicebridge serve --workers 2`` (r1) behind HAProxy next to
a one-process node (r2). The kernel spreads r1's connections over its workers; a worker
killed with SIGKILL is restarted and its calls follow S4a (ACS re-dials); SIGTERM to the
supervisor drains both workers (S5b: the calls move to r2)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.conftest import running
from tests.cluster.helpers import ended, eventually, hung_up_by_bridge, media_nodes, mid_call
from voicebridge.sim.cluster import Cluster

pytestmark = pytest.mark.asyncio(loop_scope="module")

REDIAL = {"acs-redial-on-drop": None}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running(
        "workers", replicas=2, workers={"r1": 2}, drain_mode="migrate", acs_faults=REDIAL
    ) as c:
        yield c


def on_r1(node_id: str) -> bool:
    """A worker of r1 (its node id names r1; r2 is the other replica)."""
    return node_id.startswith("r1")


async def test_s11_workers_share_connections_and_a_killed_worker_comes_back(
    cluster: Cluster, long_pcm: np.ndarray
) -> None:
    r1 = cluster.nodes["r1"]
    workers = r1.worker_pids()
    assert len(workers) == 2, workers
    calls = await cluster.place_calls(8, long_pcm, stagger_s=0.1)
    await cluster.wait_owned(calls)
    await mid_call(calls, 3.0)
    r1_workers = {n for c in calls for n in media_nodes(c) if on_r1(n)}
    assert len(r1_workers) == 2, [media_nodes(c) for c in calls]  # both workers took calls
    os.kill(workers[0], signal.SIGKILL)
    await eventually(
        lambda: _pids(cluster),
        lambda pids: len(pids) == 2 and workers[0] not in pids,
        20,
        "the supervisor restarts the killed worker",
    )
    outcomes = await ended(cluster, calls, 60)
    assert all(o == "caller_hung_up" for o in outcomes.values()), outcomes
    assert not [c for c in calls if hung_up_by_bridge(cluster, c)]


async def _pids(cluster: Cluster) -> list[int]:
    return cluster.nodes["r1"].worker_pids()


async def test_s11_sigterm_to_the_supervisor_drains_both_workers(
    cluster: Cluster, long_pcm: np.ndarray
) -> None:
    await cluster.heal()
    calls = await cluster.place_calls(6, long_pcm, stagger_s=0.1)
    owned = await cluster.wait_owned(calls)
    mine = [c for c in calls if on_r1(owned[c.correlation_id])]
    assert mine, owned
    await mid_call(calls, 2.0)
    r1 = cluster.nodes["r1"]
    r1.signal(signal.SIGTERM)
    assert await r1.wait(60) == 0
    outcomes = await ended(cluster, calls, 60)
    assert all(o == "caller_hung_up" for o in outcomes.values()), outcomes
    for call in mine:
        assert media_nodes(call)[-1] == "r2", media_nodes(call)
        assert not hung_up_by_bridge(cluster, call)
