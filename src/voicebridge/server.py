"""``voicebridge serve``: the bridge on uvicorn, in one process or, with ``--workers N``,
in N worker processes under a small supervisor (:mod:`voicebridge.workers`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from voicebridge import workers
from voicebridge.errors import ConfigError

if TYPE_CHECKING:
    from voicebridge.app import AppContext
    from voicebridge.clock import Clock
    from voicebridge.config import Settings

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default: PORT or 8000)")
    parser.add_argument(
        "--workers",
        type=workers.parse_count,
        metavar="N|auto",
        help="worker processes, each its own node on the same port (SO_REUSEPORT), under a "
        "supervisor that drains them all on SIGTERM; auto = the CPUs available "
        "(default: WORKERS or 1)",
    )
    # A worker of `--workers N`: the supervisor's pid (set by the supervisor only).
    parser.add_argument("--worker-of", type=int, metavar="PID", help=argparse.SUPPRESS)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn settings the bridge relies on, shared by ``serve`` and the simulator."""
    return {
        "proxy_headers": True,  # Container Apps terminates TLS in front of us
        "forwarded_allow_ips": "*",
        "ws_per_message_deflate": False,  # audio does not compress; deflate only costs CPU
        # A media frame above the limit closes the socket (1009) before it is buffered.
        "ws_max_size": settings.max_media_message_bytes,
        "h11_max_incomplete_event_size": 64 * 1024,
        "timeout_graceful_shutdown": int(settings.drain_grace_s) + 5,
        "log_config": None,
        # Measured with `voicebridge loadtest --calls 100`: the sans-I/O websockets
        # implementation costs 6.8 ms CPU per call-second, legacy websockets and wsproto
        # 7.5. Pinned so a uvicorn default change cannot silently cost 10 %.
        "ws": "websockets-sansio",
    }


@contextlib.asynccontextmanager
async def in_this_loop(
    server: uvicorn.Server, sock: socket.socket, name: str
) -> AsyncIterator[None]:
    """Run ``server`` on ``sock`` as a task of the running loop (the simulator, the
    browser phone): the block starts once it has started (its start-up error raised),
    and on exit it is asked to stop and given 10 s."""
    task = asyncio.create_task(server.serve(sockets=[sock]), name=name)
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"{name} stopped during start-up")
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait({task}, timeout=10)


#: Container objects allocated (net) before a young collection; CPython's default is 700.
GC_GEN0_THRESHOLD = 5000


def tune_gc() -> None:
    """Keep the garbage collector from stalling every live call (docs/performance.md).

    Start-up leaves ~95 000 tracked objects (FastAPI, pydantic, the Azure SDKs, numpy)
    that are never garbage, yet each full collection walked them all: 45-53 ms with
    every call's audio held up. :func:`gc.freeze` moves them out of the collector's
    sight. A larger young generation promotes fewer short-lived media objects (queued
    frames live ~160 ms), so full collections of what calls allocate come rarer.
    Measured at 150 calls: worst GC pause 45-53 ms -> 5-15 ms.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM drains instead of closing every socket.

    Plain uvicorn closes open WebSockets (1012) as soon as it shuts down, which would
    cut every live call at each revision rollout. Here the first SIGTERM starts
    :meth:`AppContext.drain` — readiness false, no new calls, live calls finish or hear
    a goodbye after ``DRAIN_GRACE_S`` — and only then lets uvicorn exit. A second
    SIGTERM, or SIGINT, exits at once.
    """

    def __init__(self, config: uvicorn.Config, ctx: AppContext) -> None:
        super().__init__(config)
        self.ctx = ctx
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the app's lifespan has run: start-up is over
        tune_gc()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain is None and not self.should_exit:
            asyncio.get_running_loop().call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain = asyncio.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self.ctx.drain(self.ctx.settings.drain_grace_s)
        finally:
            self.should_exit = True


def run(
    args: argparse.Namespace,
    *,
    clock: Clock | None = None,
    worker_program: Sequence[str] = ("-m", "voicebridge", "serve"),
) -> int:
    """``voicebridge serve`` (``clock``: only ``python -m voicebridge.sim.serve`` passes
    one, with ``worker_program`` to run its workers with the same clock)."""
    from voicebridge import logs
    from voicebridge.config import load_settings

    try:
        settings = load_settings()  # checked here, once, before any worker starts
    except ConfigError as exc:
        print(f"voicebridge: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    host = args.host or settings.host
    port = args.port or settings.port
    worker_of: int | None = getattr(args, "worker_of", None)
    count = getattr(args, "workers", None) or settings.workers
    if worker_of is not None or count == 1:
        return serve(settings, host, port, clock=clock, worker_of=worker_of)
    if not settings.clustered:
        print(
            f"voicebridge: configuration error: {count} workers need REDIS_URL (and "
            "CALL_URL_KEYS): without shared call state a call's media socket or callback "
            "that lands on another worker fails the call; run one worker, or set REDIS_URL",
            file=sys.stderr,
        )
        return 2
    return workers.supervise(count, host, port, program=worker_program)


def serve(
    settings: Settings, host: str, port: int, *, clock: Clock | None, worker_of: int | None
) -> int:
    """One process of the bridge: uvicorn binding ``host:port`` itself, or, as a worker
    of supervisor ``worker_of``, on its own ``SO_REUSEPORT`` socket."""
    from voicebridge.app import create_app

    sockets: list[socket.socket] | None = None
    if worker_of is not None:
        if not workers.die_with_supervisor(worker_of):
            return 0  # the supervisor is gone already
        try:
            sockets = [workers.reuseport_socket(host, port)]
        except OSError as exc:
            log.error("cannot bind %s:%d: %s", host, port, exc)
            return workers.STARTUP_FAILURE
        log.info("worker %s on %s:%d (SO_REUSEPORT)", settings.node_name, host, port)
    app = create_app(settings, clock=clock)
    config = uvicorn.Config(app, host=host, port=port, **uvicorn_options(settings))
    ctx: AppContext = app.state.ctx
    DrainingServer(config, ctx).run(sockets=sockets)
    return 0
