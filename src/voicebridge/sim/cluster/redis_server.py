"""A real ``redis-server`` on a free loopback port with a generated configuration
(:class:`RedisServer`): no persistence, foreground, its own directory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from voicebridge.sim.cluster.binaries import binary
from voicebridge.sim.cluster.procs import Proc, launch, process_tree, tcp_peers
from voicebridge.sim.ports import free_port

__all__ = ["RedisServer"]

START_TIMEOUT_S = 15.0


class RedisServer:
    """``redis-server`` with a generated config in ``workdir``: ``bind 127.0.0.1``, a free
    port, ``save ""``, ``appendonly no``, ``daemonize no``.

    :meth:`start` waits for ``PING``; :meth:`stop` ends it; :meth:`restart` starts it
    again on the same port (empty: nothing is persisted, as after a failover to an empty
    replica). :meth:`client` is a ``redis.asyncio`` client for assertions.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: Proc | None = None
        self._client: aioredis.Redis | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: the nodes' ``REDIS_URL``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.workdir / "redis.conf"

    def config_text(self) -> str:
        return "\n".join(
            [
                "bind 127.0.0.1",
                f"port {self.port}",
                "protected-mode yes",
                "daemonize no",
                'save ""',
                "appendonly no",
                f"dir {self.workdir}",
                'logfile ""',
                "loglevel notice",
                "databases 4",
                "",
            ]
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    async def start(self) -> None:
        """Start it and wait until it answers ``PING``; ``RuntimeError`` with its log
        tail if it exits or does not answer within :data:`START_TIMEOUT_S`."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self.starts += 1
        self.proc = await launch(
            "redis",
            binary("redis-server"),
            [str(self.config_path)],
            log_path=self.workdir / "redis.log",
            cwd=self.workdir,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not self.proc.running:
                raise RuntimeError(f"redis-server exited at start:\n{self.proc.log_tail()}")
            with contextlib.suppress(RedisError, OSError):
                if await self.client().ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING:\n{self.proc.log_tail()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL); the client's connections are dropped."""
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
            self._client = None
        if self.proc is not None:
            await self.proc.stop()

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` wall seconds, start again on the same port."""
        await self.stop()
        if down_s > 0:
            await asyncio.sleep(down_s)
        await self.start()

    def client(self) -> aioredis.Redis:
        """A ``redis.asyncio`` client (strings decoded), made on first use."""
        if self._client is None:
            self._client = aioredis.Redis(
                host="127.0.0.1",
                port=self.port,
                db=0,
                decode_responses=True,
                socket_connect_timeout=2,
                socket_timeout=5,
            )
        return self._client

    async def kill_pubsub(self, pids: list[int] | None = None) -> int:
        """``CLIENT KILL TYPE pubsub``: every subscriber connection, or (``pids``) only
        those held by these processes and their descendants. Returns how many were killed."""
        client = self.client()
        if pids is None:
            killed = await client.execute_command(  # type: ignore[no-untyped-call]
                "CLIENT", "KILL", "TYPE", "pubsub"
            )
            return int(killed)
        tree = [p for pid in pids for p in process_tree(pid)]
        ports = set(tcp_peers(tree, self.port))
        count = 0
        for entry in await client.client_list(_type="pubsub"):
            host, _, port = str(entry.get("addr", "")).rpartition(":")
            if port.isdigit() and int(port) in ports:
                with contextlib.suppress(RedisError):
                    await client.execute_command(  # type: ignore[no-untyped-call]
                        "CLIENT", "KILL", "ADDR", f"{host}:{port}"
                    )
                    count += 1
        return count

    async def call_records(self) -> dict[str, dict[str, Any]]:
        """Every ``vb:call:{cid}`` hash by cid (the key's tail)."""
        client = self.client()
        out: dict[str, dict[str, Any]] = {}
        async for key in client.scan_iter(match="vb:call:*", count=500):
            cid = key[len("vb:call:") :]
            if ":" in cid:  # vb:call:{cid}:tx and other sub-keys
                continue
            with contextlib.suppress(RedisError):
                record = await client.hgetall(key)
                out[cid] = {str(k): v for k, v in record.items()}
        return out

    async def numsub(self, channels: list[str]) -> dict[str, int]:
        """``PUBSUB NUMSUB`` of ``channels``."""
        if not channels:
            return {}
        pairs = await self.client().pubsub_numsub(*channels)
        return {str(name): int(n) for name, n in pairs}

    async def ops(self) -> dict[str, int]:
        """``total_commands_processed`` and pub/sub figures from ``INFO stats``."""
        info = await self.client().info("stats")
        return {
            k: int(info.get(k, 0))
            for k in ("total_commands_processed", "total_connections_received")
        }
