"""This process as one node of many: Redis calls with fallbacks, heartbeats, the
per-call channels of the calls it owns, and the janitor.

Design (shared/reviews/scale-out.md): the call lives where its media socket lands.
Whatever node answers writes the call record; the node that gets the media socket
claims it (a generation counter) and subscribes to the call's channel; any node that
gets a callback forwards it there. Pub/sub is at-most-once, so the record is the truth:
after every (re)connect the node re-reads the record of each call it owns and acts on
what it missed (ended elsewhere, or claimed by a newer socket).

A Redis outage never ends a call: each method returns ``None`` (or False) when Redis
could not be asked, counts it, and the caller does what one process does alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from voicebridge.cluster.store import REDIS_ERRORS, CallStore, Claim, ClusterView, channel
from voicebridge.config import Settings
from voicebridge.security import URL_TOKEN_GRACE_S
from voicebridge.stats import ServiceStats

if TYPE_CHECKING:
    from voicebridge.calls import Call

log = logging.getLogger(__name__)

#: Seconds a Redis command may take before the node carries on without it.
REDIS_TIMEOUT_S = 1.0
#: How long the pub/sub reader waits for a message before it looks at its to-do list.
LISTEN_POLL_S = 0.1
#: How long an outbound call's record may wait for its media socket (a phone ringing,
#: then answered) before the janitor looks at it as an orphan.
OUTBOUND_RING_GRACE_S = 180.0
#: Background writes (transcripts, conversation ids) waiting at most; more are dropped.
WRITE_QUEUE_MAX = 1000
#: How long stop() waits for the node's cancelled tasks before it leaves anyway.
STOP_WAIT_S = 3.0
#: Orphaned calls the janitor ends at once (each: an ACS query, the 5 s apology, a
#: hang-up). One at a time, a dead node's 100 calls would take over 8 minutes.
ORPHANS_AT_ONCE = 50

Deliver = Callable[["Call", dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Owned:
    call: Call
    gen: int


def make_redis(settings: Settings) -> Redis:
    """The client for REDIS_URL: an access key (in the URL or REDIS_PASSWORD), or an
    Entra token for the app's identity, re-sent before it expires (redis-entraid)."""
    assert settings.redis_url is not None
    options: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT_S,
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "health_check_interval": 5,  # PING idle connections, the pub/sub one included
        "retry_on_timeout": False,
    }
    if settings.redis_auth == "entra":
        from redis_entraid.cred_provider import create_from_default_azure_credential

        options["credential_provider"] = create_from_default_azure_credential(
            ("https://redis.azure.com/.default",)
        )
    elif settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    client: Redis = Redis.from_url(settings.redis_url.get_secret_value(), **options)
    return client


class ClusterNode:
    """One node's view of the cluster (see the module docstring)."""

    def __init__(
        self, settings: Settings, stats: ServiceStats | None = None, redis: Redis | None = None
    ) -> None:
        self.settings = settings
        self.stats = stats or ServiceStats()
        self.name = settings.node_name
        self.redis = redis if redis is not None else make_redis(settings)
        self.store = CallStore(
            self.redis,
            record_ttl_s=settings.max_call_duration_s + URL_TOKEN_GRACE_S,
        )
        self.owned: dict[str, Owned] = {}
        self.ready = False
        self.capacity = settings.max_concurrent_calls
        self.local_calls: Callable[[], int] = lambda: len(self.owned)
        #: Set by the app: run a message for a call this node owns.
        self.deliver: Deliver | None = None
        #: Set by the app: end a call whose owner is gone (janitor), politely.
        self.orphan: Callable[[str, dict[str, str]], Awaitable[None]] | None = None
        self.view: ClusterView | None = None
        self.redis_up = True
        self.counts = self.stats.cluster
        self._subs: dict[str, bool] = {}  # channel -> wanted (True) / to drop (False)
        self._writes: asyncio.Queue[Callable[[], Awaitable[Any]]] = asyncio.Queue(WRITE_QUEUE_MAX)
        self._tasks: list[asyncio.Task[Any]] = []
        self._redis_back = asyncio.Event()
        #: Orphaned calls being ended by this node (call id -> task).
        self.orphans: dict[str, asyncio.Task[None]] = {}
        self._orphan_slots = asyncio.Semaphore(ORPHANS_AT_ONCE)

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        await self.beat()
        for name, coro in (
            ("heartbeat", self._heartbeat_loop()),
            ("listen", self._listen_loop()),
            ("writer", self._writer()),
            ("janitor", self._janitor_loop()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"cluster-{name}"))
        log.info("cluster node %s started (Redis %s)", self.name, "up" if self.redis_up else "DOWN")

    async def stop(self) -> None:
        tasks = [*self._tasks, *self.orphans.values()]
        for task in tasks:
            task.cancel()
        _, late = await asyncio.wait(tasks, timeout=STOP_WAIT_S) if tasks else ((), ())
        if late:
            names = ", ".join(sorted(t.get_name() for t in late))
            log.error(
                "cluster node %s: still running after %.0f s: %s", self.name, STOP_WAIT_S, names
            )
        await self._call(self.store.leave(self.name))
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    async def _call(self, coro: Awaitable[Any]) -> Any:
        """Run one Redis operation; None (counted, logged once per outage) if Redis
        could not be asked."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                result = await coro
        except REDIS_ERRORS as exc:
            self.counts["redis_error"] += 1
            if self.redis_up:
                log.warning("Redis unavailable (%s): carrying on as one node", type(exc).__name__)
            self.redis_up = False
            return None
        if not self.redis_up:
            log.warning("Redis reachable again")
            self._redis_back.set()  # the pub/sub connection comes back now, not at its next try
        self.redis_up = True
        return result

    # ------------------------------------------------------------------ heartbeats

    async def beat(self) -> None:
        info = {
            "ready": "1" if self.ready else "0",
            "calls": str(self.local_calls()),
            "cap": str(self.capacity),
        }
        ttl = self.settings.node_heartbeat_s * 3
        await self._call(self.store.heartbeat(self.name, info, list(self.owned), ttl_s=ttl))
        view = await self._call(self.store.view(ttl_s=ttl))
        if view is not None:
            self.view = view

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_s)
            await self.beat()

    def at_max(self, view: ClusterView) -> bool:
        """No more nodes will come: MAX_NODES are up (or it is unset)."""
        limit = self.settings.max_nodes
        return limit is None or view.ready_nodes >= limit

    # ------------------------------------------------------------------ answering

    async def first_delivery(self, event_id: str, server_call_id: str) -> bool | None:
        return await self._call(self.store.first_delivery(event_id, server_call_id))  # type: ignore[no-any-return]

    async def admit(self, cid: str) -> bool | None:
        """Count a new call; False when every node is full and no more can come."""
        view = self.view
        if view is None:
            return None
        capacity = max(view.capacity, self.capacity if self.ready else 0)
        return await self._call(  # type: ignore[no-any-return]
            self.store.admit(cid, capacity=capacity, at_max=self.at_max(view))
        )

    async def answering(self, call: Call, traceparent: str | None) -> None:
        fields = {
            "corr": call.correlation_id,
            "scid": call.server_call_id,
            "caller": call.caller,
            "callee": call.callee,
            "profile": call.profile,  # the node that runs the call uses its settings
            "answered_by": self.name,
            "answered_at": str(time.time()),
        }
        if traceparent:
            fields["traceparent"] = traceparent
        if call.direction == "outbound":  # dialled by POST /api/calls, with its context
            fields |= {"dir": "outbound", "ctx": json.dumps(call.context, ensure_ascii=False)}
        await self._call(self.store.create(call.id, fields))

    async def remember(self, key: str, value: str) -> str | None:
        """An outbound Idempotency-Key bound to ``value`` on every node, unless it is
        bound already: the value that stands (None: Redis could not be asked)."""
        return await self._call(self.store.remember(key, value, ttl_s=24 * 3600))  # type: ignore[no-any-return]

    async def outbound_admit(
        self, cid: str, profile: str, max_profile: int | None
    ) -> tuple[str, float] | None:
        """The outbound limits of every node together (OUTBOUND_MAX_CONCURRENT, the
        profile's max_concurrent, OUTBOUND_RATE_PER_MIN): ``("ok", 0)``, or the limit that
        refuses (``busy``, ``busy_profile``, ``rate`` with the seconds until a token);
        None: Redis could not be asked (the node's own limits decide)."""
        s = self.settings
        return await self._call(  # type: ignore[no-any-return]
            self.store.outbound_admit(
                cid,
                profile,
                rate_per_min=s.outbound_rate_per_min,
                max_live=s.outbound_max_concurrent,
                max_profile=max_profile,
                stale_after_s=s.max_call_duration_s + OUTBOUND_RING_GRACE_S,
            )
        )

    async def outbound_release(self, cid: str) -> None:
        rate = self.settings.outbound_rate_per_min
        await self._call(self.store.outbound_release(cid, refund_rate_per_min=rate))

    async def recall(self, key: str) -> str | None:
        return await self._call(self.store.recall(key))  # type: ignore[no-any-return]

    async def restore(self, cid: str, **fields: str) -> None:
        await self._call(self.store.restore(cid, fields))

    async def transcript(self, cid: str) -> list[tuple[str, str]]:
        return await self._call(self.store.transcript(cid)) or []

    async def alive(self, node: str) -> bool:
        """The node heartbeats (True when Redis cannot tell: never blame a node blindly)."""
        alive: bool | None = await self._call(self.store.node_alive(node))
        return True if alive is None else alive

    async def update(self, cid: str, **fields: str) -> None:
        await self._call(self.store.update(cid, **fields))

    async def record(self, cid: str) -> dict[str, str] | None:
        return await self._call(self.store.get(cid))  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ owning

    async def claim(self, cid: str) -> Claim | None:
        """Take the call's media here; None when Redis could not be asked."""
        return await self._call(self.store.claim(cid, self.name))  # type: ignore[no-any-return]

    def own(self, call: Call, gen: int) -> None:
        """This node runs ``call`` now: listen on its channel."""
        self.owned[call.id] = Owned(call, gen)
        self._subs[channel(call.id)] = True

    def disown(self, call: Call) -> None:
        if self.owned.pop(call.id, None) is not None:
            self._subs[channel(call.id)] = False

    async def announce_takeover(self, cid: str, gen: int) -> None:
        self.counts["takeover"] += 1
        await self._call(self.store.publish(cid, {"t": "takeover", "gen": gen, "node": self.name}))

    async def ended(self, cid: str, outcome: str, *, we_hung_up: bool) -> None:
        await self._call(self.store.end(cid, outcome, we_hung_up=we_hung_up))

    async def moved_away(self, call: Call) -> bool:
        """True if a newer media socket for ``call`` was claimed by another node (so this
        one must let the call go without hanging up)."""
        owned = self.owned.get(call.id)
        record = await self.record(call.id)
        if record is None or owned is None:
            return False
        return record.get("owner") != self.name and int(record.get("gen", "0")) > owned.gen

    def later(self, write: Callable[[], Awaitable[Any]]) -> None:
        """A write off the audio path (transcripts, conversation id): queued, in order."""
        try:
            self._writes.put_nowait(write)
        except asyncio.QueueFull:
            self.counts["write_dropped"] += 1

    def said(self, call: Call, role: str, text: str) -> None:
        self.later(lambda: self.store.said(call.id, role, text))

    def conversation(self, call: Call, conversation_id: str) -> None:
        self.later(lambda: self.store.update(call.id, conversation_id=conversation_id))

    async def _writer(self) -> None:
        while True:
            write = await self._writes.get()
            await self._call(write())

    # ------------------------------------------------------------------ callbacks

    async def forward(self, cid: str, body: bytes) -> int | None:
        """Send a callback delivery to the call's owner; how many nodes got it."""
        message = {
            "t": "callbacks",
            "body": body.decode("utf-8"),
            "node": self.name,
            "at": time.time(),
        }
        received: int | None = await self._call(self.store.publish(cid, message))
        if received is not None:
            self.counts["forwarded" if received else "forward_undelivered"] += 1
        return received

    # ------------------------------------------------------------------ pub/sub

    async def _listen_loop(self) -> None:
        """Keep one pub/sub connection, re-subscribe after every reconnect, and resync."""
        delay = 0.2
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(f"vb:node:{self.name}")
                listening: set[str] = set()
                for name in list(self._subs):
                    if self._subs[name]:
                        await pubsub.subscribe(name)
                        listening.add(name)
                    else:
                        self._subs.pop(name, None)
                await self.resync()
                if delay > 0.2:  # a reconnect, not the first connection
                    log.info("cluster pub/sub back: listening on %d call(s)", len(listening))
                delay = 0.2
                await self._read(pubsub, listening)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except REDIS_ERRORS as exc:
                self.counts["redis_error"] += 1
                log.info("cluster pub/sub lost (%s); reconnecting", type(exc).__name__)
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            self._redis_back.clear()
            with contextlib.suppress(TimeoutError):  # or as soon as a command got through
                await asyncio.wait_for(self._redis_back.wait(), delay)
            delay = min(delay * 2, 2.0)

    async def _read(self, pubsub: PubSub, listening: set[str]) -> None:
        """Read messages; between reads, (un)subscribe the channels of calls this node
        started or stopped owning (``listening``: what this connection is subscribed to)."""
        while True:
            for name, wanted in list(self._subs.items()):
                if wanted and name not in listening:
                    await pubsub.subscribe(name)
                    listening.add(name)
                    cid = name.removeprefix("vb:call:")
                    if cid in self.owned:  # a message sent before we listened
                        await self._resync_one(self.owned[cid])
                elif not wanted:
                    if name in listening:
                        await pubsub.unsubscribe(name)
                        listening.discard(name)
                    self._subs.pop(name, None)
            message = await pubsub.get_message(timeout=LISTEN_POLL_S)
            if message is None or message.get("type") != "message":
                continue
            cid = message["channel"].decode().removeprefix("vb:call:")
            owned = self.owned.get(cid)
            if owned is None:
                continue
            try:
                data = json.loads(message["data"])
            except ValueError:
                log.warning("unreadable cluster message on %s", message["channel"])
                continue
            await self._on_message(owned, data)

    async def _on_message(self, owned: Owned, data: dict[str, Any]) -> None:
        if data.get("t") == "takeover":
            gen = int(data.get("gen", 0))
            if gen > owned.gen and data.get("node") != self.name:
                log.info(
                    "call %s: media claimed by node %s (generation %d): letting go",
                    owned.call.label,
                    data.get("node"),
                    gen,
                )
                owned.call.moved.set()
            return
        at = data.get("at")
        if isinstance(at, int | float):
            self.stats.forward_ms.add(max(0.0, (time.time() - at) * 1000.0))
        if self.deliver is not None:
            await self.deliver(owned.call, data)

    async def resync(self) -> None:
        """After a (re)connect: act on what the records say of every owned call."""
        for owned in list(self.owned.values()):
            await self._resync_one(owned)

    async def _resync_one(self, owned: Owned) -> None:
        record = await self.store.get(owned.call.id)
        call = owned.call
        if record is None:  # Redis lost it (restarted empty): this node still holds it
            fields = {
                "state": "live",
                "owner": self.name,
                "gen": str(owned.gen),
                "corr": call.correlation_id,
                "ccid": call.call_connection_id or "",
            }
            if call.conversation_id:
                fields["conversation_id"] = call.conversation_id
            await self.store.restore(call.id, fields)
            return
        if int(record.get("gen", "0")) > owned.gen and record.get("owner") != self.name:
            log.info("call %s: claimed by %s meanwhile: letting go", call.label, record["owner"])
            call.moved.set()
        elif record.get("state") == "ended" and self.deliver is not None:
            await self.deliver(call, {"t": "ended", "outcome": record.get("outcome", "")})

    # ------------------------------------------------------------------ janitor

    async def _janitor_loop(self) -> None:
        every = self.settings.node_heartbeat_s * 2
        while True:
            await asyncio.sleep(every)
            if not await self._call(self.store.lock("janitor", self.name, every * 2)):
                continue
            stale = await self._call(self.store.stale_calls(self.settings.owner_lost_after_s))
            for cid in stale or ():
                await self._inspect(cid)

    async def _inspect(self, cid: str) -> None:
        """A live call nobody heartbeated for OWNER_LOST_AFTER_S."""
        if cid in self.owned or cid in self.orphans:
            return
        record = await self.record(cid)
        if record is None or record.get("state") == "ended":
            await self._call(self.store.forget_live(cid))
            return
        owner = record.get("owner", "")
        if owner and await self._call(self.store.node_alive(owner)):
            return  # alive, its heartbeat is late: leave it
        # Still answering (ACS may take a while to dial the media socket), or, for an
        # outbound call, still ringing: its CreateCallFailed (or media) comes first.
        grace = OUTBOUND_RING_GRACE_S if record.get("dir") == "outbound" else 60
        if not owner and time.time() - float(record.get("answered_at", "0")) < grace:
            return
        if self.orphan is not None:
            self.counts["janitor"] += 1
            await self._call(self.store.touch_live(cid))  # not again before the next round
            task = asyncio.create_task(self._end_orphan(cid, record), name=f"orphan-{cid}")
            self.orphans[cid] = task
            task.add_done_callback(lambda _: self.orphans.pop(cid, None))

    async def _end_orphan(self, cid: str, record: dict[str, str]) -> None:
        """Many at once (:data:`ORPHANS_AT_ONCE`): a dead node's calls all end within
        about one apology, not one after another."""
        assert self.orphan is not None
        async with self._orphan_slots:
            try:
                await self.orphan(cid, record)
            except Exception:
                log.exception("call %s: ending the orphaned call failed", cid)
