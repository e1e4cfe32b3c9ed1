"""A real HAProxy in front of the bridge nodes (:class:`HAProxy`): the stand-in for the
Container Apps ingress (round robin per request, readiness-driven routing), with its
runtime API on a unix socket for stats, drains and a rolling deploy."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebridge.sim.cluster.binaries import binary
from voicebridge.sim.cluster.procs import Proc, launch
from voicebridge.sim.ports import free_port

__all__ = ["BACKEND", "HAProxy", "ServerSlot"]

#: The backend's name in the generated config (``bridges/<server>`` in runtime commands).
BACKEND = "bridges"
START_TIMEOUT_S = 20.0
#: Health check cadence: a draining node is DOWN within ``inter x fall`` (1 s).
CHECK = "check inter 500 fall 2 rise 1"


@dataclass
class ServerSlot:
    """One ``server`` line: its name (the node id), port, and whether it starts disabled
    (a spare for a rolling deploy, enabled later with :meth:`HAProxy.enable`)."""

    name: str
    port: int
    disabled: bool = False


class HAProxy:
    """``haproxy -db`` with a generated config in ``workdir``.

    * frontend on 127.0.0.1 and a free port (:attr:`url`);
    * backend ``balance roundrobin``, ``option httpchk GET /readyz`` (200 expected),
      every server ``check inter 500 fall 2 rise 1``;
    * ``timeout tunnel 1h`` so media WebSockets outlive any call, generous client/server
      timeouts;
    * an admin stats socket (``stats socket <workdir>/haproxy.sock level admin``):
      :meth:`show_stat`, :meth:`set_server_state`, :meth:`enable`.

    Requests are balanced one by one (no ``prefer-last-server``), as the Container Apps
    ingress does: callbacks of one call land on different nodes. A connection refused by a
    node that died and is not DOWN yet is redispatched to another server on the first
    retry (``option redispatch 1``), instead of HAProxy's default of retrying the same
    server three times a second apart.
    """

    def __init__(self, workdir: Path, servers: list[ServerSlot], port: int | None = None) -> None:
        self.workdir = workdir
        self.servers = list(servers)
        self.port = port or free_port()
        self.proc: Proc | None = None
        self._short_dir: Path | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the nodes' ``PUBLIC_BASE_URL``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        """The admin socket: in the work directory unless that path is too long for a
        unix socket (108 bytes on Linux; pytest's temporary directories can be longer),
        then in a short directory of its own."""
        path = self.workdir / "haproxy.sock"
        if len(str(path).encode()) < 100:
            return path
        if self._short_dir is None:
            self._short_dir = Path(tempfile.mkdtemp(prefix="vbhap-"))
        return self._short_dir / "haproxy.sock"

    @property
    def config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    def config_text(self) -> str:
        lines = [
            "global",
            f"    stats socket {self.socket_path} mode 600 level admin",
            "    stats timeout 30s",
            "    maxconn 4000",
            "    hard-stop-after 3s",
            "",
            "defaults",
            "    mode http",
            "    option forwardfor",
            # A connection refused by a dead node (killed, not yet DOWN) is retried on
            # another server at once, as an ingress routes around a dead endpoint; without
            # this HAProxy retries the same server a second apart and then answers 503.
            "    retries 2",
            "    option redispatch 1",
            "    timeout connect 2s",
            "    timeout client 1h",
            "    timeout server 1h",
            "    timeout tunnel 1h",
            "    timeout http-request 15s",
            "    timeout http-keep-alive 15s",
            "    timeout check 2s",
            "",
            "frontend public",
            f"    bind 127.0.0.1:{self.port}",
            f"    default_backend {BACKEND}",
            "",
            f"backend {BACKEND}",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
        ]
        for slot in self.servers:
            extra = " disabled" if slot.disabled else ""
            lines.append(f"    server {slot.name} 127.0.0.1:{slot.port} {CHECK}{extra}")
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    async def start(self, *, wait_up: bool = True) -> None:
        """Check the config (``haproxy -c``), start it, wait for the admin socket and
        (``wait_up``) every enabled server UP; ``RuntimeError`` with the log otherwise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        check = await asyncio.create_subprocess_exec(
            binary("haproxy"),
            "-c",
            "-f",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await check.communicate()
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected its config:\n{out.decode(errors='replace')}")
        self.proc = await launch(
            "haproxy",
            binary("haproxy"),
            ["-db", "-f", str(self.config_path)],
            log_path=self.workdir / "haproxy.log",
            cwd=self.workdir,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not self.proc.running:
                raise RuntimeError(f"haproxy exited at start:\n{self.proc.log_tail()}")
            with contextlib.suppress(OSError):
                stat = await self.show_stat()
                enabled = [s.name for s in self.servers if not s.disabled]
                if not wait_up or all(stat.get(n, {}).get("status") == "UP" for n in enabled):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy: servers not UP in time:\n{self.proc.log_tail()}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop(grace_s=4.0)
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    async def command(self, line: str) -> str:
        """One runtime API command on the admin socket; its whole answer."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.socket_path)), 5
        )
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return data.decode(errors="replace")

    async def show_stat(self) -> dict[str, dict[str, Any]]:
        """Per server of the backend: ``status`` (UP, DOWN, MAINT, DRAIN, ...),
        ``scur`` (current sessions), ``stot`` (total sessions), ``check_status``,
        ``lastchg`` (s since the last status change)."""
        text = await self.command("show stat")
        if not text.startswith("# "):
            raise OSError(f"unexpected 'show stat' answer: {text[:200]!r}")
        rows = csv.DictReader(io.StringIO(text[2:]))
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row.get("pxname") != BACKEND or row.get("svname") in ("BACKEND", "FRONTEND"):
                continue
            out[str(row["svname"])] = {
                "status": row.get("status", ""),
                "scur": _int(row.get("scur")),
                "stot": _int(row.get("stot")),
                "check_status": row.get("check_status", ""),
                "lastchg": _int(row.get("lastchg")),
            }
        return out

    async def set_server_state(self, name: str, state: str) -> str:
        """``set server bridges/<name> state ready|drain|maint``; HAProxy's answer
        (empty when it accepted the command)."""
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f"state must be ready, drain or maint, not {state!r}")
        answer = await self.command(f"set server {BACKEND}/{name} state {state}")
        if answer.strip():
            raise RuntimeError(f"haproxy: set server {name} state {state}: {answer.strip()}")
        return answer

    async def enable(self, name: str) -> None:
        """Take a spare server (declared ``disabled``) out of maintenance: health checks
        start, and it gets traffic once ``/readyz`` answers 200."""
        await self.set_server_state(name, "ready")
        for slot in self.servers:
            if slot.name == name:
                slot.disabled = False

    async def wait_status(self, name: str, statuses: tuple[str, ...], timeout_s: float) -> str:
        """Wait until server ``name``'s status is one of ``statuses`` (a bounded wait);
        its status, or ``TimeoutError`` saying the last one seen."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            with contextlib.suppress(OSError):
                last = str((await self.show_stat()).get(name, {}).get("status", ""))
                if last in statuses:
                    return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy server {name}: status {last!r}, not {statuses}")
            await asyncio.sleep(0.1)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
