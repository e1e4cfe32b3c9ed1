"""One bridge process of the cluster (:class:`BridgeNode`): ``python -m
voicebridge.sim.serve`` (``voicebridge serve`` with the simulator's media clock) configured
by environment variables as a deployment would be."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from voicebridge.sim.cluster.procs import Proc, launch, process_tree

__all__ = ["NODE_HEADER", "BridgeNode", "settings_env_names"]

#: The response header naming the node (``EXPOSE_NODE_ID=true``).
NODE_HEADER = "x-voicebridge-node"
START_TIMEOUT_S = 60.0


def settings_env_names() -> set[str]:
    """Every environment variable the bridge's Settings could read (upper case)."""
    from voicebridge.config import Settings

    names: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None) or ([alias] if isinstance(alias, str) else [])
        names.update(str(choice).upper() for choice in choices)
    return names


class BridgeNode:
    """A bridge node: a subprocess on ``127.0.0.1:port`` with environment ``env``
    (``NODE_ID`` = :attr:`name`), output (its JSON log lines) to ``<workdir>/node.log``,
    conversation logs in ``<workdir>/logs`` (its ``LOG_DIR``).

    ``speed`` != 1 runs ``python -m voicebridge.sim.serve --speed S`` (the media clock of
    the fake and the emulator); ``workers`` adds ``--workers N`` (each worker is a node of
    its own). Every variable the bridge's Settings reads is dropped from the inherited
    environment first, so the caller's shell cannot change what is tested.
    """

    def __init__(
        self,
        name: str,
        port: int,
        env: dict[str, str],
        workdir: Path,
        *,
        speed: float = 1.0,
        workers: int | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.workdir = workdir
        self.speed = speed
        self.workers = workers
        self.env = dict(env)
        self.proc: Proc | None = None
        self.started_at: float | None = None

    @property
    def url(self) -> str:
        """The node itself, bypassing the balancer."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return Path(self.env.get("LOG_DIR") or self.workdir / "logs")

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def argv(self) -> list[str]:
        args = ["-m", "voicebridge.sim.serve", "--speed", repr(float(self.speed))]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        return args

    def full_env(self) -> dict[str, str]:
        names = settings_env_names()
        env = {k: v for k, v in os.environ.items() if k.upper() not in names}
        env |= {"NODE_ID": self.name, "LOG_DIR": str(self.log_dir)}
        env |= self.env
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def start(self, *, wait: bool = True) -> None:
        """Start the process (and, with ``wait``, :meth:`wait_ready`)."""
        if self.running:
            raise RuntimeError(f"node {self.name} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = await launch(
            f"node-{self.name}",
            sys.executable,
            self.argv(),
            log_path=self.log_path,
            env=self.full_env(),
            cwd=self.workdir,  # never the caller's directory: its .env must not apply
        )
        self.started_at = time.monotonic()
        if wait:
            await self.wait_ready()

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until ``GET /readyz`` on the node itself answers 200 (with ``workers``: from
        every worker, each on a new connection, which the kernel hands to any worker
        listening: one still starting would get none of the first calls);
        ``RuntimeError`` with its log tail if it exits or is not ready in time."""
        deadline = time.monotonic() + timeout_s
        ready: set[str] = set()
        timeout = aiohttp.ClientTimeout(total=2)
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection per GET
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while True:
                if not self.running:
                    raise RuntimeError(f"node {self.name} exited at start:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            ready.add(resp.headers.get(NODE_HEADER, self.name))
                if len(ready) >= (self.workers or 1):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {self.name} not ready in time:\n{self.log_tail()}")
                await asyncio.sleep(0.1 if not ready else 0.02)

    def log_tail(self, lines: int = 30) -> str:
        return self.proc.log_tail(lines) if self.proc is not None else ""

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's main process (the supervisor with ``workers``)."""
        if self.proc is not None:
            self.proc.signal(sig)

    def kill(self) -> None:
        """SIGKILL: the node dies at once, its sockets reset, nothing cleaned up."""
        self.signal(signal.SIGKILL)

    async def wait(self, timeout_s: float | None = None) -> int:
        """Its exit status; ``TimeoutError`` after ``timeout_s`` wall seconds."""
        if self.proc is None:
            raise RuntimeError(f"node {self.name} was never started")
        return await self.proc.wait(timeout_s)

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``, to the node's process group."""
        if self.proc is not None:
            await self.proc.stop(grace_s)

    def pids(self) -> list[int]:
        """The node's process and its descendants (workers), alive."""
        return process_tree(self.proc.pid) if self.running and self.proc is not None else []

    def worker_pids(self) -> list[int]:
        """With ``workers``: the worker processes (the supervisor's descendants)."""
        if self.proc is None:
            return []
        return [p for p in self.pids() if p != self.proc.pid]

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
        """``GET path`` on the node itself: ``(status, JSON or text, headers)``."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"{self.url}{path}", **kwargs) as resp,
        ):
            text = await resp.text()
            body: Any = text
            if resp.content_type == "application/json":
                with contextlib.suppress(ValueError):
                    body = await resp.json()
            return resp.status, body, dict(resp.headers)
