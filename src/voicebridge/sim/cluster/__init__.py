"""The offline cluster harness (scale-out.md §6): real ``redis-server`` and ``haproxy``
(Debian packages) on free loopback ports with generated configs, N bridge node
subprocesses, and the in-process fake ACS and Voice Live emulator.

* :mod:`.binaries` — finding ``redis-server`` and ``haproxy``, and what to say when they are
  missing (``sudo apt-get install -y redis-server haproxy``);
* :mod:`.procs` — launching and stopping child processes (none outlives the harness);
* :mod:`.redis_server` — :class:`RedisServer`;
* :mod:`.haproxy` — :class:`HAProxy` and its runtime API;
* :mod:`.node` — :class:`BridgeNode`;
* :mod:`.cluster` — :class:`Cluster`, all of it as one async context manager;
* :mod:`.report` — what happened to each call across the nodes (``cluster-report.json``);
* :mod:`.simulate` — ``voicebridge simulate --replicas N``.

Like the rest of ``voicebridge.sim``, none of this is in the production image.
"""

from __future__ import annotations

from voicebridge.sim.cluster.binaries import INSTALL_HINT, MissingBinaries, missing_message
from voicebridge.sim.cluster.cluster import Cluster, ClusterOptions
from voicebridge.sim.cluster.haproxy import HAProxy, ServerSlot
from voicebridge.sim.cluster.node import NODE_HEADER, BridgeNode
from voicebridge.sim.cluster.redis_server import RedisServer

__all__ = [
    "INSTALL_HINT",
    "NODE_HEADER",
    "BridgeNode",
    "Cluster",
    "ClusterOptions",
    "HAProxy",
    "MissingBinaries",
    "RedisServer",
    "ServerSlot",
    "missing_message",
]
