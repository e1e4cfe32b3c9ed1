"""The FastAPI application: ``create_app(settings)`` with a lifespan that owns the
shared clients (Call Automation, the Voice Live credential) and the call registry.

Routes reach the :class:`AppContext` through :data:`voicebridge.deps.CtxDep`; they are
imported by :func:`create_app` (``deps`` imports this module for the type).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from azure.communication.callautomation.aio import CallAutomationClient
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicebridge import __version__, logs, telemetry
from voicebridge.acs import client as acs_client
from voicebridge.calls import Call, CallOutcome, CallRegistry
from voicebridge.clock import Clock, RealClock
from voicebridge.config import Settings
from voicebridge.outbound import Outbound
from voicebridge.profiles import credential_key, profiles_of
from voicebridge.security import (
    URL_TOKEN_GRACE_S,
    CallUrlSigner,
    JwksCache,
    TokenValidator,
    entra_token_validator,
)
from voicebridge.stats import ServiceStats
from voicebridge.voicelive.session import make_credential

if TYPE_CHECKING:
    from voicebridge.cluster.node import ClusterNode

log = logging.getLogger(__name__)


class AppContext:
    """What every route needs: settings, clients, the registry, background tasks."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        # The relay's one clock: real time, unless the simulator injects a faster one.
        self.clock: Clock = clock or RealClock()
        self.stats = ServiceStats()
        # Off (a no-op) unless APPLICATIONINSIGHTS_CONNECTION_STRING is set.
        self.telemetry = telemetry.setup(settings)
        self.registry = CallRegistry(
            log_dir=settings.log_dir,
            stats=self.stats,
            # Tokens outlive the longest call by 15 minutes, so late callbacks still pass.
            signer=CallUrlSigner(
                settings.call_url_key_ring(),
                lifetime_s=settings.max_call_duration_s + URL_TOKEN_GRACE_S,
            ),
        )
        # Many nodes (REDIS_URL): the shared call state; None runs one process alone.
        self.cluster: ClusterNode | None = None
        if settings.clustered:  # imported only then: redis imports the OpenTelemetry SDK
            from voicebridge.cluster.node import ClusterNode

            self.cluster = ClusterNode(settings, self.stats)
        if self.cluster is not None:
            self.registry.on_end = self._shared_end
            logs.node = self.cluster.name
        # Outbound calls (POST /api/calls): auth, rate limit, idempotency, their status.
        self.outbound = Outbound(settings, self.clock.wall_now)
        self.registry.on_outbound_end = self.outbound.book.ended
        self.acs_tokens = acs_token_validator(settings)
        self.eventgrid_tokens = eventgrid_token_validator(settings)
        # The per-number profiles (PROFILES_FILE; the default one alone without it).
        self.profiles = profiles_of(settings)
        # AzureKeyCredential, a static token or DefaultAzureCredential (make_credential):
        # the default profile's, and one per distinct credential of the profiles.
        self.voicelive_credential: Any = None
        self.credentials: dict[tuple[str, str], Any] = {}
        self.acs: CallAutomationClient | None = None  # built by start(), before any request
        self.ready = False
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        for profile in self.profiles:
            key = credential_key(profile.settings)
            if key not in self.credentials:
                self.credentials[key] = make_credential(profile.settings)
        self.voicelive_credential = self.credential_for(self.settings)
        self.acs = acs_client.make_client(self.settings)
        self.telemetry.observe(self.stats, lambda: self.registry.active)
        self.spawn(self.stats.loop.watch(interval_s=0.05), name="loop-lag")
        for name, validator in (
            ("ACS", self.acs_tokens),
            ("Entra", self.eventgrid_tokens),
            ("Entra (outbound)", self.outbound.auth.tokens),
        ):
            if validator is not None:  # warm the key cache; a failure retries on first use
                self.spawn(_prefetch(validator.keys, name), name=f"jwks-{name}")
        if self.acs_tokens is None:
            log.warning(
                "!!! ACS_JWT_VALIDATION=false: callbacks and media sockets are NOT "
                "authenticated beyond the per-call URL key. Development only. !!!"
            )
        if self.settings.mode == "agent" and self.settings.voicelive_model:
            log.warning(
                "VOICELIVE_MODEL=%s is ignored in agent mode: the agent %s names its own "
                "model, and model is never sent with agent parameters",
                self.settings.voicelive_model,
                self.settings.agent_name,
            )
        self.ready = True
        if self.cluster is not None:
            from voicebridge.cluster import service

            self.cluster.local_calls = lambda: self.registry.active
            self.cluster.orphan = functools.partial(service.end_orphan, self)
            self.cluster.ready = True
            await self.cluster.start()

    async def stop(self) -> None:
        """Cancel what runs and close the clients. Every step is bounded
        (:data:`STOP_STEP_S`): a process asked to exit exits, and names what held it up."""
        self.ready = False
        for call in list(self.registry.by_id.values()):
            if call.media_task is not None:
                call.media_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await cancelled(self._tasks, "background task")
        for call in list(self.registry.by_id.values()):  # never got media: close their logs
            self.registry.end(call, CallOutcome.SHUTDOWN)
        if self.cluster is not None:
            await bounded(self.cluster.stop(), "leaving the cluster")
            logs.node = None
        if self.acs is not None:
            await bounded(self.acs.close(), "closing the Call Automation client")
        for credential in self.credentials.values():
            close = getattr(credential, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def credential_for(self, settings: Settings) -> Any:
        """The Voice Live credential for ``settings`` (a profile's): one object per
        distinct credential, built at start."""
        key = credential_key(settings)
        credential = self.credentials.get(key)
        if credential is None:  # a configuration that was not a profile at start
            credential = self.credentials[key] = make_credential(settings)
        return credential

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

    async def drain(self, grace_s: float) -> None:
        """Stop taking calls, let live ones finish for ``grace_s``, then end the rest
        politely (goodbye prompt, hang-up). Readiness is false from the first moment,
        so Container Apps stops routing new work here (docs/reliability.md)."""
        self.draining = True
        self.ready = False
        if self.cluster is not None:
            self.cluster.ready = False
            await self.cluster.beat()  # other nodes stop counting this one's capacity
            if self.settings.drain_mode == "migrate":
                from voicebridge.cluster import service

                await service.migrate_calls(self)
        active = self.registry.active
        log.warning("draining: %d live call(s), up to %.0f s to finish", active, grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registry.empty.wait(), grace_s)
        calls = list(self.registry.by_id.values())
        if calls:
            log.warning("drain grace over: ending %d call(s) with a goodbye", len(calls))
        for call in calls:
            call.drain_now.set()
            if call.relay is None:  # still ringing or answering: no media to speak on
                with logs.call_context(call):
                    await self.hang_up(call)
                    self.registry.end(call, CallOutcome.DRAINED)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registry.empty.wait(), 20.0)
        log.warning("drained")

    async def call_state(self, call: Call) -> str:
        """``connected`` / ``gone`` / ``unknown`` (or another ACS state) for ``call``."""
        if call.disconnected.is_set() or not call.call_connection_id or self.acs is None:
            return "gone"
        return await acs_client.call_state(self.acs, call.call_connection_id)

    async def hang_up(self, call: Call) -> None:
        """Hang up ``call`` through Call Automation (idempotent, never raises). Never a
        call that another node has taken over since: it goes on there."""
        if self.cluster is not None and await self.cluster.moved_away(call):
            log.info("call %s moved to another node: not hanging up", call.label)
            call.moved.set()
            return
        call.we_hung_up = True  # the CallDisconnected that follows is our own doing
        if call.call_connection_id and self.acs is not None:
            await acs_client.hang_up(self.acs, call.call_connection_id)

    async def transfer(self, call: Call, target: str) -> None:
        """Ask Call Automation to transfer ``call`` to ``target`` (E.164 or an ACS user),
        with the number that was called as caller id; raises if ACS refuses."""
        if not call.call_connection_id or self.acs is None:
            raise RuntimeError("the call has no connection id yet")
        await acs_client.transfer(self.acs, call.call_connection_id, target, caller_id=call.callee)

    def _shared_end(self, call: Call) -> None:
        """Many nodes: the call record learns the outcome (unless the call moved on)."""
        assert self.cluster is not None
        self.cluster.disown(call)
        if call.outcome is not None and call.outcome is not CallOutcome.MOVED:
            self.spawn(
                self.cluster.ended(call.id, call.outcome, we_hung_up=call.we_hung_up),
                name=f"ended-{call.id}",
            )


async def _prefetch(keys: JwksCache, name: str) -> None:
    try:
        await keys.refresh()
    except Exception as exc:
        log.warning(
            "%s signing keys not fetched at start-up (%s); will retry on first use",
            name,
            type(exc).__name__,
        )


def acs_token_validator(settings: Settings) -> TokenValidator | None:
    """The ACS Call Automation JWT check (None only when explicitly turned off)."""
    if not settings.acs_jwt_validation:
        return None
    assert settings.acs_resource_id is not None  # enforced by Settings
    keys = JwksCache(
        jwks_url=settings.acs_jwks_url, openid_config_url=settings.acs_openid_config_url
    )
    return TokenValidator(
        keys,
        issuers=[settings.acs_jwt_issuer],
        audience=settings.acs_resource_id,
        leeway_s=settings.jwt_leeway_s,
    )


def eventgrid_token_validator(settings: Settings) -> TokenValidator | None:
    """The Entra check for protected Event Grid delivery, when configured."""
    tenant = settings.eventgrid_entra_tenant_id
    if not tenant or not settings.eventgrid_entra_audience:
        return None
    return entra_token_validator(
        tenant,
        settings.eventgrid_entra_audience,
        openid_config_url=settings.eventgrid_entra_openid_config_url,
        leeway_s=settings.jwt_leeway_s,
    )


#: ASGI messages that open a response: HTTP, a WebSocket handshake, a refused handshake.
_RESPONSE_STARTS = frozenset(
    ("http.response.start", "websocket.accept", "websocket.http.response.start")
)


class NodeHeader:
    """``EXPOSE_NODE_ID=true``: name the node that answered in an ``x-voicebridge-node``
    header on every HTTP response and WebSocket handshake (which worker or replica
    served, for the cluster simulator and the workers test). Installed only when the
    setting is on, so it adds nothing to the media path otherwise."""

    def __init__(self, app: ASGIApp, node: str) -> None:
        self.app = app
        self.header = (b"x-voicebridge-node", node.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] in _RESPONSE_STARTS:
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def create_app_from_env() -> FastAPI:
    """``uvicorn --factory voicebridge.app:create_app_from_env``: settings from the
    environment; a bad setting exits with one line naming the variable."""
    from voicebridge.config import load_settings
    from voicebridge.errors import ConfigError

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(f"voicebridge: configuration error: {exc}") from None
    logs.setup(settings.log_level, settings.log_format)
    return create_app(settings)


#: How long each step of shutting down may take before the process goes on without it.
STOP_STEP_S = 5.0


async def cancelled(tasks: Iterable[asyncio.Task[Any]], what: str) -> None:
    """Wait (:data:`STOP_STEP_S` at most) for ``tasks``, already cancelled, to end; log
    by name the ones that did not."""
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=STOP_STEP_S)
    if late:
        names = ", ".join(sorted(t.get_name() for t in late))
        log.error("shutdown: %s(s) still running after %.0f s: %s", what, STOP_STEP_S, names)


async def bounded(step: Awaitable[Any], what: str) -> None:
    """Run one shutdown step for :data:`STOP_STEP_S` at most (then log and go on)."""
    try:
        async with asyncio.timeout(STOP_STEP_S):
            await step
    except TimeoutError:
        log.error("shutdown: %s took more than %.0f s; going on without it", what, STOP_STEP_S)


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    """The bridge service for ``settings``. ``clock``: the relay's clock (default real
    time; the simulator passes ``voicebridge.sim.clock.ScaledClock(speed)``)."""
    from voicebridge import deps
    from voicebridge.routes import assets, calls, debug, health, media, metrics, outbound

    logs.install_record_factory()  # call ids on every record, whoever set up logging
    ctx = AppContext(settings, clock)

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

    app = FastAPI(
        title="voicebridge",
        version=__version__,
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry (when a provider is configured, i.e. telemetry on):
        # one span per request / WebSocket connection, without a span per dependency and
        # endpoint call. Older FastAPI versions keep unknown arguments and ignore them.
        telemetry={"operation_spans": False},
    )
    app.state.ctx = ctx  # read by voicebridge.deps.get_ctx only
    if ctx.cluster is not None:  # callbacks other nodes forward to the calls run here
        ctx.cluster.deliver = functools.partial(calls.deliver, ctx)
    app.add_exception_handler(deps.Refused, deps.refused)
    app.include_router(calls.router)
    app.include_router(media.router)
    app.include_router(health.router)
    app.include_router(assets.router)
    app.include_router(metrics.router)
    if settings.outbound_enabled:  # absent (404) unless OUTBOUND_API_KEYS or _ENTRA_* is set
        app.include_router(outbound.router)
    if settings.expose_node_id:
        app.add_middleware(NodeHeader, node=settings.node_name)
    if settings.debug_endpoints:
        app.include_router(debug.router)
        log.warning(
            "DEBUG_ENDPOINTS=true: GET /debug/stats walks every object of the process on "
            "request. Leak hunting and load tests only; never on a public replica."
        )
    if settings.phone_enabled:  # absent (404) unless PHONE_ENABLED=true (voicebridge.phone)
        from voicebridge.phone import routes as phone

        app.include_router(phone.router)
        log.warning(
            "PHONE_ENABLED=true: the browser phone is on /phone (calls need PHONE_TOKEN). "
            "Development only; never on a public ingress without the token (docs/security.md)."
        )
    return app
