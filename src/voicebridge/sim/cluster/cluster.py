"""The whole offline cluster (:class:`Cluster`): redis-server, the Voice Live emulator and
the fake ACS (in this process), N bridge nodes, and HAProxy in front of them
(scale-out.md §6.2).

Everything binds 127.0.0.1 on free ports. The fake ACS rings the balancer's
``/api/incoming-call``; every node's ``PUBLIC_BASE_URL`` is the balancer, so callbacks and
the media dial go through it too, each request to the next node in turn. ``async with
Cluster(options) as cluster:`` stops everything on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from voicebridge.sim.cluster.haproxy import HAProxy, ServerSlot
from voicebridge.sim.cluster.node import BridgeNode
from voicebridge.sim.cluster.redis_server import RedisServer
from voicebridge.sim.cluster.report import call_report, final_outcome, read_segments
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs, FakeCall
from voicebridge.sim.faults import FaultValue
from voicebridge.sim.ports import free_port

__all__ = ["EMULATOR_KEY", "Cluster", "ClusterOptions", "url_key"]

EMULATOR_KEY = "cluster-emulator-key"

#: Node settings of the harness (scale-out.md §6.2, sped up: HAProxy checks every 0.5 s,
#: so a short route settle is enough). Options' ``env`` overrides them.
DEFAULT_NODE_ENV = {
    "EXPOSE_NODE_ID": "true",
    "DRAIN_MODE": "wait",
    "DRAIN_ROUTE_SETTLE_S": "2",
    "DRAIN_MIGRATE_DEADLINE_S": "10",
    "DRAIN_GRACE_S": "60",
    "NODE_HEARTBEAT_S": "0.5",
    "OWNER_LOST_AFTER_S": "3",
    "ACS_RECONNECT_GRACE_S": "3",
    "MAX_CONCURRENT_CALLS": "50",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
}


def url_key() -> str:
    """A fresh base64 URL key (32 random bytes)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class ClusterOptions:
    """One cluster.

    ``replicas`` nodes ``r1..rN`` start behind HAProxy; ``spares`` more server slots
    (``r{N+1}``...) are declared disabled for :meth:`Cluster.add_node`. ``speed`` runs the
    nodes, the fake and the emulator that many times real time. ``env`` is added to every
    node's environment (after :data:`DEFAULT_NODE_ENV` and the cluster's own settings),
    ``node_env[name]`` to one node's; ``workers[name]`` starts that node as ``--workers N``.
    ``workdir`` keeps every file there (default: a temporary directory removed on exit).
    """

    replicas: int = 3
    spares: int = 0
    speed: float = 4.0
    acs_rate: int = 16000
    voicelive_rate: int = 24000
    drain_mode: str = "wait"
    #: The URL keys every node starts with (``CALL_URL_KEYS``), the first signing.
    url_keys: tuple[str, ...] = ("k1",)
    env: dict[str, str] = field(default_factory=dict)
    node_env: dict[str, dict[str, str]] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)
    acs_faults: dict[str, FaultValue] = field(default_factory=dict)
    voicelive_faults: dict[str, FaultValue] = field(default_factory=dict)
    emulator: dict[str, Any] = field(default_factory=dict)
    hangup_after_audio_s: float = 1.0
    workdir: Path | None = None
    progress: Callable[[str], None] | None = None

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


class Cluster:
    """redis-server + emulator + fake ACS + N :class:`BridgeNode` + :class:`HAProxy`.

    Attributes once started: :attr:`redis`, :attr:`emulator`, :attr:`acs`,
    :attr:`nodes` (by name, every node ever started), :attr:`haproxy`, :attr:`keys`
    (URL keys ``k1``, ``k2`` by kid; nodes sign with ``k1`` unless told otherwise),
    :attr:`scale_token`. :attr:`calls` lists every call placed.
    """

    def __init__(self, options: ClusterOptions | None = None) -> None:
        self.options = options or ClusterOptions()
        opts = self.options
        if opts.replicas < 1:
            raise ValueError("replicas must be at least 1")
        self._own_workdir = opts.workdir is None
        self.workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="voicebridge-cluster-"))
        self.keys = {"k1": url_key(), "k2": url_key()}
        self.scale_token = secrets.token_urlsafe(24)
        self.redis = RedisServer(self.workdir / "redis")
        self.emulator = VoiceLiveEmulator(
            api_key=EMULATOR_KEY,
            speed=opts.speed,
            faults=opts.voicelive_faults,
            **opts.emulator,
        )
        self.acs = FakeAcs(
            acs_rate=opts.acs_rate,
            speed=opts.speed,
            faults=opts.acs_faults,
            hangup_after_audio_s=opts.hangup_after_audio_s,
        )
        total = opts.replicas + opts.spares
        self.slots = [
            ServerSlot(f"r{i}", free_port(), disabled=i > opts.replicas)
            for i in range(1, total + 1)
        ]
        self.haproxy = HAProxy(self.workdir / "haproxy", self.slots)
        self.nodes: dict[str, BridgeNode] = {}
        self.calls: list[FakeCall] = []
        self.started = False

    # ---------------------------------------------------------------- addresses

    @property
    def url(self) -> str:
        """The balancer: ``PUBLIC_BASE_URL`` of every node."""
        return self.haproxy.url

    @property
    def webhook(self) -> str:
        """Where the fake ACS posts ``IncomingCall``: the balancer."""
        return f"{self.url}/api/incoming-call"

    def url_keys(self, *kids: str) -> str:
        """``CALL_URL_KEYS`` for these kids, the first signing (default ``k1``)."""
        return ",".join(f"{kid}:{self.keys[kid]}" for kid in (kids or ("k1",)))

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start everything; returns when every node is ready and UP at the balancer."""
        opts = self.options
        await self.redis.start()
        await self.emulator.start()
        await self.acs.start()
        opts.say(
            f"redis {self.redis.url}, emulator {self.emulator.endpoint}, "
            f"fake ACS {self.acs.endpoint}, balancer {self.url}"
        )
        first = [slot for slot in self.slots if not slot.disabled]
        nodes = [self._make_node(slot.name) for slot in first]
        # The balancer's checks find the nodes as they come up.
        await asyncio.gather(*(n.start(wait=False) for n in nodes))
        await asyncio.gather(*(n.wait_ready() for n in nodes), self.haproxy.start(wait_up=False))
        await self.wait_up([n.name for n in nodes])
        self.started = True
        opts.say(f"nodes {', '.join(f'{n.name}:{n.port}' for n in nodes)} up behind the balancer")

    async def stop(self) -> None:
        """Stop everything that was started (idempotent): the fake first (no new
        requests), then nodes, balancer, Redis and the emulator."""
        with contextlib.suppress(Exception):
            await self.acs.stop()
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.haproxy.stop()
        with contextlib.suppress(Exception):
            await self.redis.stop()
        with contextlib.suppress(Exception):
            await self.emulator.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def child_pids(self) -> list[int]:
        """Every process the cluster started that is still alive (with workers)."""
        pids = [p for n in self.nodes.values() for p in n.pids()]
        for proc in (self.redis.proc, self.haproxy.proc):
            if proc is not None and proc.running:
                pids.append(proc.pid)
        return pids

    # ---------------------------------------------------------------- nodes

    def node_env(self, name: str, port: int) -> dict[str, str]:
        """A node's environment: the fake ACS, the emulator, Redis, the balancer."""
        opts = self.options
        env = dict(DEFAULT_NODE_ENV)
        env |= {
            "NODE_ID": name,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PUBLIC_BASE_URL": self.url,
            "LOG_DIR": str(self.workdir / name / "logs"),
            "REDIS_URL": self.redis.url,
            "CALL_URL_KEYS": self.url_keys(*opts.url_keys),
            "SCALE_METRIC_TOKEN": self.scale_token,
            "MAX_NODES": str(opts.replicas + opts.spares),
            "DRAIN_MODE": opts.drain_mode,
            "CONTAINER_APP_REVISION": "a",
            "VOICELIVE_ENDPOINT": self.emulator.endpoint,
            "VOICELIVE_API_KEY": EMULATOR_KEY,
            "VOICELIVE_MODEL": "gpt-realtime",
            "ACS_CONNECTION_STRING": self.acs.connection_string,
            "ACS_RESOURCE_ID": self.acs.resource_id,
            "ACS_JWT_ISSUER": self.acs.issuer,
            "ACS_OPENID_CONFIG_URL": self.acs.openid_config_url,
            "ACS_JWT_VALIDATION": "true",
            "ACS_AUDIO_RATE": str(opts.acs_rate),
            "VOICELIVE_AUDIO_RATE": str(opts.voicelive_rate),
        }
        env |= opts.env
        env |= opts.node_env.get(name, {})
        return env

    def _make_node(self, name: str, env: dict[str, str] | None = None) -> BridgeNode:
        slot = next(s for s in self.slots if s.name == name)
        node = BridgeNode(
            name,
            slot.port,
            self.node_env(name, slot.port) | (env or {}),
            self.workdir / name,
            speed=self.options.speed,
            workers=self.options.workers.get(name),
        )
        self.nodes[name] = node
        return node

    async def add_node(
        self, env: dict[str, str] | None = None, *, enable: bool = True
    ) -> BridgeNode:
        """Start a node in the next spare slot (``env`` on top of its environment), and
        (``enable``) enable it at the balancer and wait until it is UP there."""
        spare = next((s for s in self.slots if s.disabled and s.name not in self.nodes), None)
        if spare is None:
            raise RuntimeError("no spare balancer slot left (ClusterOptions.spares)")
        node = self._make_node(spare.name, env)
        await node.start()
        if enable:
            await self.haproxy.enable(node.name)
            await self.wait_up([node.name])
        return node

    async def wait_up(self, names: Iterable[str], timeout_s: float = 30.0) -> None:
        """Until the balancer has these servers UP (a bounded wait)."""
        for name in names:
            await self.haproxy.wait_status(name, ("UP",), timeout_s)

    def live_nodes(self) -> list[BridgeNode]:
        return [n for n in self.nodes.values() if n.running]

    # ---------------------------------------------------------------- calls

    async def place_call(
        self,
        caller_pcm: np.ndarray | bytes,
        *,
        faults: dict[str, FaultValue] | None = None,
        call_connection_id: str | None = None,
        via: BridgeNode | None = None,
    ) -> FakeCall:
        """Ring the cluster through the balancer (``via``: straight to that node, as an
        ingress that has not noticed yet that it is draining); returns once the webhook
        replied."""
        pcm = caller_pcm if isinstance(caller_pcm, bytes) else np.asarray(caller_pcm).tobytes()
        call = await self.acs.place_call(
            webhook_url=self.webhook if via is None else f"{via.url}/api/incoming-call",
            caller_pcm=pcm,
            faults=faults,
            call_connection_id=call_connection_id,
        )
        self.calls.append(call)
        return call

    async def place_calls(
        self,
        count: int,
        caller_pcm: np.ndarray | bytes,
        *,
        stagger_s: float = 0.15,
        faults: dict[str, FaultValue] | None = None,
    ) -> list[FakeCall]:
        """``count`` calls, one every ``stagger_s`` wall seconds."""
        calls = []
        for i in range(count):
            if i:
                await asyncio.sleep(stagger_s)
            calls.append(await self.place_call(caller_pcm, faults=faults))
        return calls

    async def redeliver(self, call: FakeCall, times: int = 1) -> int:
        """Post ``call``'s IncomingCall again ``times`` times (Event Grid retries, through
        the balancer); the last delivery's status (each is in ``incoming_deliveries``)."""
        return await self.acs.redeliver_incoming_call(call, self.webhook, times=times)

    @staticmethod
    async def wait_ended(calls: Iterable[FakeCall], timeout_s: float) -> None:
        """Until every call has ended at the fake (a bounded wait; ``TimeoutError``)."""
        pending = [c for c in calls if not c.ended.is_set()]
        if pending:
            await asyncio.wait_for(
                asyncio.gather(*(c.ended.wait() for c in pending)), timeout=timeout_s
            )

    async def owners(self) -> dict[str, str]:
        """Correlation id -> the owner in the call's Redis record (calls with one)."""
        out: dict[str, str] = {}
        with contextlib.suppress(Exception):
            for record in (await self.redis.call_records()).values():
                if record.get("corr") and record.get("owner"):
                    out[record["corr"]] = record["owner"]
        return out

    async def owner_of(self, call: FakeCall) -> str | None:
        """The node that owns ``call`` now: the Redis record, else the node of its last
        media socket at the fake (``media_by``)."""
        owner = (await self.owners()).get(call.correlation_id)
        if owner:
            return owner
        return call.media_by[-1] if call.media_by else None

    async def wait_owned(
        self, calls: Iterable[FakeCall], timeout_s: float = 20.0
    ) -> dict[str, str]:
        """Until every call in ``calls`` has an owner; correlation id -> owner."""
        calls = list(calls)
        deadline = time.monotonic() + timeout_s
        while True:
            owned = {c.correlation_id: await self.owner_of(c) for c in calls}
            if all(owned.values()):
                return {k: str(v) for k, v in owned.items()}
            if time.monotonic() > deadline:
                raise TimeoutError(f"calls without an owner: {owned}")
            await asyncio.sleep(0.1)

    # ---------------------------------------------------------------- outcomes

    def segments(self) -> dict[str, list[dict[str, Any]]]:
        """Every node's conversation logs, by correlation id
        (:func:`~voicebridge.sim.cluster.report.read_segments`)."""
        merged: dict[str, list[dict[str, Any]]] = {}
        for node in self.nodes.values():
            for corr, segs in read_segments(node.name, node.log_dir).items():
                merged.setdefault(corr, []).extend(segs)
        return merged

    async def records(self) -> dict[str, dict[str, Any]]:
        """The Redis call records by correlation id, each with its ``cid`` ({} while
        Redis is down)."""
        with contextlib.suppress(Exception):
            return {
                r["corr"]: r | {"cid": cid}
                for cid, r in (await self.redis.call_records()).items()
                if r.get("corr")
            }
        return {}

    async def outcomes(self, calls: Iterable[FakeCall]) -> dict[str, str | None]:
        """Correlation id -> the bridge's final outcome of the call (the last
        non-``moved`` one in the nodes' logs, else the Redis record's), or None yet."""
        segments, records = self.segments(), await self.records()
        return {
            c.correlation_id: final_outcome(
                segments.get(c.correlation_id, []), records.get(c.correlation_id)
            )[0]
            for c in calls
        }

    async def wait_outcomes(
        self, calls: Iterable[FakeCall], timeout_s: float = 15.0
    ) -> dict[str, str | None]:
        """:meth:`outcomes` once every call has one, or when ``timeout_s`` is up (a
        bounded wait: whatever is known then)."""
        calls = list(calls)
        deadline = time.monotonic() + timeout_s
        while True:
            found = await self.outcomes(calls)
            if all(found.values()) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.2)

    async def call_reports(
        self, calls: Iterable[FakeCall], *, killed: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Per call its entry of ``cluster-report.json``'s ``calls[]``
        (:func:`~voicebridge.sim.cluster.report.call_report`); ``killed``: nodes that
        were SIGKILLed (their segments cannot be counted)."""
        segments, records = self.segments(), await self.records()
        out = []
        for call in calls:
            ids = {call.call_connection_id, call.correlation_id} - {None}
            sessions = [s for s in self.emulator.sessions if s.call_id in ids]
            out.append(
                call_report(
                    call,
                    segments.get(call.correlation_id, []),
                    records.get(call.correlation_id),
                    sessions,
                    voicelive_rate=self.options.voicelive_rate,
                    killed=set(killed),
                )
            )
        return out

    async def heal(self, env: dict[str, dict[str, str]] | None = None) -> None:
        """Start again every node that has exited (``env[name]`` on top of its
        environment), and wait until each is UP at the balancer."""
        dead = [n for n in self.nodes.values() if not n.running]
        for node in dead:
            node.env |= (env or {}).get(node.name, {})
        await asyncio.gather(*(n.start() for n in dead))
        await self.wait_up(n.name for n in dead)

    async def scale_metric(self, node: BridgeNode, *, token: str | None = None) -> tuple[int, Any]:
        """``GET /api/scale-metric`` on ``node`` with the bearer token (``token=""``:
        without one); ``(status, body)``."""
        token = self.scale_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, body, _ = await node.get("/api/scale-metric", headers=headers)
        return status, body

    async def http(self, method: str, url: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
        """One HTTP request: ``(status, text, headers)``."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, url, **kwargs) as resp,
        ):
            return resp.status, await resp.text(), dict(resp.headers)
