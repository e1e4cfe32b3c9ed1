"""The offline cluster scenarios of scale-out.md §6.4, on real redis-server and haproxy.

Every test here is marked ``cluster`` and skipped, saying how to install them, when
``redis-server`` or ``haproxy`` is missing. Modules share one cluster where that is safe
(``module_cluster``): a test that kills or drains a node leaves the cluster to the next one
after :meth:`~voicebridge.sim.cluster.Cluster.heal`. Sizes are scaled down from the doc to a
2-core machine: fewer calls, media at :data:`SPEED` x real time, short caller audio.

``VOICEBRIDGE_CLUSTER_KEEP=<dir>`` keeps each cluster's files (node logs, conversation logs,
configs) under ``<dir>/<module>`` instead of a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voicebridge.sim.cluster import Cluster, ClusterOptions, missing_message
from voicebridge.sim.simulate import shipped
from voicebridge.sim.wav import read_wav

#: Media clock x real time for the nodes, the fake and the emulator.
SPEED = 4.0
_HERE = Path(__file__).parent
_PROBLEM = missing_message()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.cluster)
            # one cluster at a time under pytest-xdist: they are whole sets of processes
            item.add_marker(pytest.mark.xdist_group("cluster"))
            if _PROBLEM is not None:
                item.add_marker(pytest.mark.skip(reason=_PROBLEM))


def caller_audio(seconds: float | None) -> np.ndarray:
    """The shipped caller at 16 kHz, cut to ``seconds`` (None: all 30 s: four turns)."""
    pcm, rate = read_wav(shipped("caller.wav"))
    assert rate == 16000
    return np.asarray(pcm if seconds is None else pcm[: int(seconds * rate)])


@pytest.fixture(scope="session")
def short_pcm() -> np.ndarray:
    """12 s: the greeting, one caller turn and its answer (3 s wall at SPEED)."""
    return caller_audio(12.0)


@pytest.fixture(scope="session")
def long_pcm() -> np.ndarray:
    """20 s: three caller turns (one a barge-in), 5 s wall at SPEED: long enough to kill
    a node mid-call and see the call go on."""
    return caller_audio(20.0)


@pytest.fixture(scope="session")
def full_pcm() -> np.ndarray:
    """24 s, for drains and outages, which take wall seconds: all but the caller's
    "Thanks, goodbye." (after which the agent would hang up itself, agent_hung_up), so the
    caller hangs up and the CallDisconnected must reach the owner."""
    return caller_audio(24.0)


@contextlib.asynccontextmanager
async def running(name: str, **options: Any) -> AsyncIterator[Cluster]:
    """A cluster at :data:`SPEED` with ``options`` (:class:`ClusterOptions` fields)."""
    keep = os.environ.get("VOICEBRIDGE_CLUSTER_KEEP")
    if keep:
        options["workdir"] = Path(keep) / name
    options.setdefault("speed", SPEED)
    async with Cluster(ClusterOptions(**options)) as cluster:
        yield cluster
