"""The FastAPI application: ``create_app(settings)`` with a lifespan that owns the
shared clients (Call Automation, the Voice Live credential) and the call registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI

from voicebridge import __version__
from voicebridge.acs import client as acs_client
from voicebridge.calls import Call, CallRegistry
from voicebridge.config import Settings
from voicebridge.routes import calls, health, media
from voicebridge.stats import ServiceStats
from voicebridge.voicelive.session import make_credential

log = logging.getLogger(__name__)


class AppContext:
    """What every route needs: settings, clients, the registry, background tasks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = ServiceStats()
        self.registry = CallRegistry(log_dir=settings.log_dir, stats=self.stats)
        self.voicelive_credential: Any = None
        self.acs: Any = None
        self.ready = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.voicelive_credential = make_credential(self.settings)
        self.acs = acs_client.make_client(self.settings)
        self.spawn(self.stats.watch_loop(), name="loop-lag")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for call in list(self.registry.by_key.values()):
            if call.media_task is not None:
                call.media_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.acs is not None:
            await self.acs.close()
        close = getattr(self.voicelive_credential, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def hang_up(self, call: Call) -> None:
        """Hang up ``call`` through Call Automation (idempotent, never raises)."""
        if call.call_connection_id and self.acs is not None:
            await acs_client.hang_up(self.acs, call.call_connection_id)


def create_app(settings: Settings) -> FastAPI:
    """The bridge service for ``settings``."""
    ctx = AppContext(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.start()
        log.info(
            "voicebridge %s ready: %s mode, Voice Live at %s, ACS audio %d Hz",
            __version__,
            settings.mode,
            settings.voicelive_host,
            settings.acs_audio_rate,
        )
        try:
            yield
        finally:
            await ctx.stop()

    app = FastAPI(title="voicebridge", version=__version__, lifespan=lifespan)
    app.state.ctx = ctx
    app.include_router(calls.router)
    app.include_router(media.router)
    app.include_router(health.router)
    return app
