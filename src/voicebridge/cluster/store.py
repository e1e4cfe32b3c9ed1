"""The shared call state in Redis: one class, one method per thing a node asks.

Every command is single-key (or a pub/sub publish, or keys sharing one hash tag), so
any clustering policy works, Azure Managed Redis' EnterpriseCluster included. The keys
(design: shared/reviews scale-out.md §3.3; every one carries a TTL or is trimmed):

* ``vb:eg:{event id}``, ``vb:incoming:{server call id}``: Event Grid de-duplication
  (``SET NX``, 15 minutes).
* ``vb:call:{cid}``: the call record, a hash — the source of truth. ``state``
  (``answering`` → ``live`` → ``ended``), ``owner`` and ``gen`` (who holds the media
  socket, and how many sockets have claimed it), ``ccid``/``corr``/``scid``/``caller``,
  ``answered_by``, ``conversation_id``, ``outcome`` (first write wins),
  ``we_hung_up``.
* ``vb:call:{cid}:tx``: the model-mode transcript (role, text) a takeover replays.
* ``vb:live``: sorted set, call id → last heartbeat of its owner (or of its answer):
  the global active-call count, and the janitor's work list.
* ``vb:node:{node}``: each node's heartbeat (ready, calls, capacity); expires by itself.
  ``vb:nodes``: sorted set of node → last heartbeat, to list them without ``SCAN``.
* ``vb:lock:janitor``: one janitor at a time.
* ``vb:idem:{hash}``: an outbound call's ``Idempotency-Key`` -> ``call id|fingerprint``
  (``SET NX``, 24 hours).
* ``vb:{ob}:bucket`` (hash: tokens, ts), ``vb:{ob}:live`` (sorted set, outbound call id
  → dial time) and ``vb:{ob}:profile`` (hash, outbound call id → profile): the outbound
  rate and concurrency limits every node shares. The ``{ob}`` hash tag puts the three in
  one slot, so one script may use them together.
* channel ``vb:call:{cid}``: wakes the call's owner (forwarded callbacks, takeover).

Errors are not handled here: callers catch :data:`REDIS_ERRORS` and fall back to
per-node behaviour (:mod:`voicebridge.cluster.node`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

#: What a Redis outage raises (connection refused, timeouts, a restart mid-command).
REDIS_ERRORS = (RedisError, OSError, TimeoutError)

DEDUP_TTL_S = 900
TRANSCRIPT_MAX = 80

#: Claim the call for this node: refuse an unknown or ended call, otherwise bump the
#: generation and take ownership. Returns {gen, previous owner} or {-1} / {-2}.
_CLAIM = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {-1, ''} end
if st == 'ended' then return {-2, redis.call('HGET', KEYS[1], 'outcome') or ''} end
local prev = redis.call('HGET', KEYS[1], 'owner') or ''
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', 'live')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {gen, prev}
"""

#: End the call: the first outcome wins; returns the outcome that stands.
_END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return '' end
redis.call('HSETNX', KEYS[1], 'outcome', ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'ended')
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'we_hung_up', '1') end
return redis.call('HGET', KEYS[1], 'outcome')
"""

#: Admit a new call: refuse only when the live count has reached the capacity of the
#: ready nodes and no more nodes can come (ARGV: cid, now, capacity, at_max 0/1).
_ADMIT = """
if ARGV[4] == '1' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

#: Update fields of a record that still exists (a late callback must not resurrect it).
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


#: Outbound keys (one hash slot: the ``{ob}`` tag).
OUTBOUND_KEYS = ["vb:{ob}:bucket", "vb:{ob}:live", "vb:{ob}:profile"]

#: Take an outbound slot and a rate token, or say why not. ARGV: now, call id, profile,
#: rate per minute (a token bucket of that many, refilled at that rate), the limit of
#: live outbound calls, the profile's limit (0: none), the dial time before which a
#: slot is stale (its call's end was never recorded). Returns {'ok'|'busy'|'busy_profile'
#: |'rate', seconds until a token}.
_OUTBOUND_ADMIT = """
local now, rate = tonumber(ARGV[1]), tonumber(ARGV[4])
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[7])) do
  redis.call('ZREM', KEYS[2], c)
  redis.call('HDEL', KEYS[3], c)
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return {'busy', '0'} end
local most = tonumber(ARGV[6])
if most > 0 then
  local n = 0
  for _, p in ipairs(redis.call('HVALS', KEYS[3])) do
    if p == ARGV[3] then n = n + 1 end
  end
  if n >= most then return {'busy_profile', '0'} end
end
local cap, per_s = math.max(1, rate), rate / 60
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or cap)
local ts = tonumber(redis.call('HGET', KEYS[1], 'ts') or now)
tokens = math.min(cap, tokens + math.max(0, now - ts) * per_s)
if tokens < 1 then return {'rate', tostring((1 - tokens) / per_s)} end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', tostring(now))
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], 86400) end
return {'ok', '0'}
"""

#: An outbound call is over (or was refused after its slot was taken: ARGV[2] = rate
#: per minute gives its token back). ARGV: call id, rate to refund (0: none).
_OUTBOUND_DONE = """
local had = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local rate = tonumber(ARGV[2])
if had == 1 and rate > 0 then
  local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
  redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(math.max(1, rate), tokens + 1)))
end
return had
"""


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def call_key(cid: str) -> str:
    return f"vb:call:{cid}"


def idempotency_key(key: str) -> str:
    """``vb:idem:{sha256 of the key}``: an outbound call's Idempotency-Key (24 h)."""
    return "vb:idem:" + hashlib.sha256(key.encode()).hexdigest()[:40]


def channel(cid: str) -> str:
    return f"vb:call:{cid}"


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of claiming a call's media: ``gen`` > 0 on success."""

    gen: int
    previous_owner: str  # "" for the first claim; the outcome when refused as ended
    refused: str | None = None  # "unknown" or "ended"


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The nodes' heartbeats, summed: what admission and the scale metric read."""

    active_calls: int
    ready_nodes: int
    nodes: int
    capacity: int

    def as_metric(self) -> dict[str, int]:
        return {
            "activeCalls": self.active_calls,
            "readyNodes": self.ready_nodes,
            "nodes": self.nodes,
            "capacity": self.capacity,
        }


class CallStore:
    """Typed access to the keys above over one ``redis.asyncio.Redis``."""

    def __init__(self, redis: Redis, *, record_ttl_s: float) -> None:
        self.redis = redis
        self.record_ttl_ms = int(record_ttl_s * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._end = redis.register_script(_END)
        self._admit = redis.register_script(_ADMIT)
        self._update = redis.register_script(_UPDATE)
        self._outbound_admit = redis.register_script(_OUTBOUND_ADMIT)
        self._outbound_done = redis.register_script(_OUTBOUND_DONE)

    # ------------------------------------------------------------------ calls

    async def first_delivery(self, event_id: str, server_call_id: str) -> bool:
        """True for the first delivery of this IncomingCall on any node."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(f"vb:eg:{event_id}", "1", nx=True, ex=DEDUP_TTL_S)
            if server_call_id:
                pipe.set(f"vb:incoming:{server_call_id}", event_id, nx=True, ex=DEDUP_TTL_S)
            results = await pipe.execute()
        return all(bool(r) for r in results)

    async def remember(self, key: str, value: str, ttl_s: float) -> str:
        """Bind ``key`` (an outbound Idempotency-Key, hashed) to ``value`` unless it is
        bound already (``SET NX``); the value that stands."""
        name = idempotency_key(key)
        if await self.redis.set(name, value, nx=True, ex=int(ttl_s)):
            return value
        existing = await self.redis.get(name)
        return _s(existing) if existing is not None else value

    async def recall(self, key: str) -> str | None:
        existing = await self.redis.get(idempotency_key(key))
        return _s(existing) if existing is not None else None

    async def admit(self, cid: str, *, capacity: int, at_max: bool) -> bool:
        """Count the new call as live unless every node is full and no more can come."""
        admitted = await self._admit(
            keys=["vb:live"], args=[cid, time.time(), capacity, "1" if at_max else "0"]
        )
        return bool(admitted)

    async def create(self, cid: str, fields: dict[str, str]) -> None:
        key = call_key(cid)
        async with self.redis.pipeline(transaction=True) as pipe:
            record: dict[Any, Any] = {"state": "answering", "gen": "0"}
            record.update(fields)
            pipe.hset(key, mapping=record)
            pipe.pexpire(key, self.record_ttl_ms)
            pipe.zadd("vb:live", {cid: time.time()})
            await pipe.execute()

    async def restore(self, cid: str, fields: dict[str, str]) -> None:
        """Write a record Redis lost (a restart without persistence) from what a node
        knows; existing fields are kept."""
        key = call_key(cid)
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, value in fields.items():
                pipe.hsetnx(key, name, value)
            pipe.pexpire(key, self.record_ttl_ms)
            pipe.zadd("vb:live", {cid: time.time()})
            await pipe.execute()

    async def update(self, cid: str, **fields: str) -> None:
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        await self._update(keys=[call_key(cid)], args=flat)

    async def get(self, cid: str) -> dict[str, str] | None:
        raw: dict[Any, Any] = await self.redis.hgetall(call_key(cid))
        if not raw:
            return None
        return {_s(k): _s(v) for k, v in raw.items()}

    async def claim(self, cid: str, node: str) -> Claim:
        gen, other = await self._claim(keys=[call_key(cid)], args=[node, self.record_ttl_ms])
        other_s = other.decode() if isinstance(other, bytes) else str(other)
        if int(gen) == -1:
            return Claim(0, "", refused="unknown")
        if int(gen) == -2:
            return Claim(0, other_s, refused="ended")
        await self.redis.zadd("vb:live", {cid: time.time()})
        return Claim(int(gen), other_s)

    async def end(self, cid: str, outcome: str, *, we_hung_up: bool = False) -> str:
        """Mark the call ended (first outcome wins) and no longer live; the outcome
        that stands ("" for an unknown call)."""
        stood = await self._end(keys=[call_key(cid)], args=[outcome, "1" if we_hung_up else "0"])
        await self.redis.zrem("vb:live", cid)
        await self._outbound_done(keys=OUTBOUND_KEYS, args=[cid, 0])  # if it was one
        return stood.decode() if isinstance(stood, bytes) else str(stood or "")

    async def outbound_admit(
        self,
        cid: str,
        profile: str,
        *,
        rate_per_min: float,
        max_live: int,
        max_profile: int | None,
        stale_after_s: float,
    ) -> tuple[str, float]:
        """Take a slot and a rate token for outbound call ``cid`` on behalf of every
        node: ``("ok", 0)``, or the limit that refused it (``busy``, ``busy_profile``,
        ``rate`` with the seconds until a token)."""
        now = time.time()
        verdict, wait = await self._outbound_admit(
            keys=OUTBOUND_KEYS,
            args=[now, cid, profile, rate_per_min, max_live, max_profile or 0, now - stale_after_s],
        )
        return _s(verdict), float(_s(wait))

    async def outbound_release(self, cid: str, *, refund_rate_per_min: float) -> None:
        """A call admitted by :meth:`outbound_admit` was refused after all: its slot,
        and its rate token, go back."""
        await self._outbound_done(keys=OUTBOUND_KEYS, args=[cid, refund_rate_per_min])

    async def forget_live(self, cid: str) -> None:
        await self.redis.zrem("vb:live", cid)

    async def publish(self, cid: str, message: dict[str, Any]) -> int:
        """Send ``message`` to the call's owner; how many nodes received it."""
        return int(await self.redis.publish(channel(cid), json.dumps(message)))

    async def said(self, cid: str, role: str, text: str) -> None:
        key = f"{call_key(cid)}:tx"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, json.dumps([role, text]))
            pipe.ltrim(key, -TRANSCRIPT_MAX, -1)
            pipe.pexpire(key, self.record_ttl_ms)
            await pipe.execute()

    async def transcript(self, cid: str) -> list[tuple[str, str]]:
        items: list[Any] = await self.redis.lrange(f"{call_key(cid)}:tx", 0, -1)
        out: list[tuple[str, str]] = []
        for item in items:
            role, text = json.loads(item)
            out.append((str(role), str(text)))
        return out

    # ------------------------------------------------------------------ nodes

    async def heartbeat(
        self, node: str, info: dict[str, str], owned: list[str], *, ttl_s: float
    ) -> None:
        """This node is alive (``info``: ready, calls, cap) and still owns ``owned``."""
        now = time.time()
        key = f"vb:node:{node}"
        async with self.redis.pipeline(transaction=False) as pipe:
            beat: dict[Any, Any] = {"ts": str(now)}
            beat.update(info)
            pipe.hset(key, mapping=beat)
            pipe.pexpire(key, int(ttl_s * 1000))
            pipe.zadd("vb:nodes", {node: now})
            if owned:
                pipe.zadd("vb:live", dict.fromkeys(owned, now))
                for cid in owned:
                    pipe.pexpire(call_key(cid), self.record_ttl_ms)
            await pipe.execute()

    async def leave(self, node: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(f"vb:node:{node}")
            pipe.zrem("vb:nodes", node)
            await pipe.execute()

    async def node_alive(self, node: str) -> bool:
        return bool(node) and bool(await self.redis.exists(f"vb:node:{node}"))

    async def view(self, *, ttl_s: float) -> ClusterView:
        """Sum the live nodes' heartbeats; drop nodes silent for longer than ``ttl_s``."""
        now = time.time()
        await self.redis.zremrangebyscore("vb:nodes", "-inf", now - ttl_s)
        names: list[Any] = await self.redis.zrange("vb:nodes", 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(f"vb:node:{_s(name)}")
            pipe.zcard("vb:live")
            results = await pipe.execute()
        active = int(results[-1])
        ready = capacity = nodes = 0
        for raw in results[:-1]:
            if not raw:
                continue
            beat = {_s(k): _s(v) for k, v in raw.items()}
            nodes += 1
            if beat.get("ready") == "1":
                ready += 1
                capacity += int(beat.get("cap", "0"))
        return ClusterView(active_calls=active, ready_nodes=ready, nodes=nodes, capacity=capacity)

    async def stale_calls(self, older_than_s: float) -> list[str]:
        """Live calls whose owner has not heartbeated them for ``older_than_s``."""
        ids: list[Any] = await self.redis.zrangebyscore(
            "vb:live", "-inf", time.time() - older_than_s
        )
        return [_s(i) for i in ids]

    async def touch_live(self, cid: str) -> None:
        await self.redis.zadd("vb:live", {cid: time.time()})

    async def lock(self, name: str, node: str, ttl_s: float) -> bool:
        """Take (or keep) the lock ``name`` for ``ttl_s``; True if this node holds it."""
        key = f"vb:lock:{name}"
        if await self.redis.set(key, node, nx=True, px=int(ttl_s * 1000)):
            return True
        holder: Any = await self.redis.get(key)
        if holder is not None and _s(holder) == node:
            await self.redis.pexpire(key, int(ttl_s * 1000))
            return True
        return False
