"""What the app does with the cluster: end calls whose owner died, and move calls
away from a draining node (``DRAIN_MODE=migrate``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from voicebridge import logs
from voicebridge.acs import client as acs_client
from voicebridge.calls import Call, CallOutcome
from voicebridge.logs import CallIds

if TYPE_CHECKING:
    from voicebridge.app import AppContext

log = logging.getLogger(__name__)

#: How long the apology (assets/apology.wav, 4.9 s) may play before the hang-up.
APOLOGY_S = 5.0
#: Calls a draining node moves per second (each costs the next node a Voice Live connect).
MIGRATIONS_PER_S = 10.0
#: How long a migrating call waits for ACS to close its old socket before restarting.
MEDIA_STOP_WAIT_S = 5.0


async def end_orphan(
    ctx: AppContext, cid: str, record: dict[str, str], *, media_gone: bool = False
) -> None:
    """End a call no node holds: its owner died (or it never got media). ACS is asked
    first — a call whose media is still active is someone's, and stays — then the
    caller hears the apology and the call is hung up. ``media_gone``: ACS already said
    so (``MediaStreamingFailed`` that no owner received)."""
    assert ctx.cluster is not None
    ccid = record.get("ccid") or ""
    outcome = CallOutcome.OWNER_LOST if record.get("owner") else CallOutcome.MEDIA_FAILED
    with logs.call_context(CallIds(record.get("corr", ""), ccid or None)):
        state = "media_inactive" if media_gone else "unknown"
        if ccid and ctx.acs is not None and not media_gone:
            state = await acs_client.media_streaming_state(ctx.acs, ccid)
        if state in ("media_active", "unknown") and not media_gone:
            log.info(
                "call %s: owner %s silent, ACS says %s: left alone", cid, record.get("owner"), state
            )
            return
        if state == "media_inactive" and ccid and ctx.acs is not None:
            log.warning(
                "call %s: its node %s is gone and so is its media: apology, then hang-up",
                ccid,
                record.get("owner") or "(none)",
            )
            url = f"{ctx.settings.public_base_url}/assets/apology.wav"
            if await acs_client.play_file(ctx.acs, ccid, url):
                await asyncio.sleep(APOLOGY_S)
            if await _taken_meanwhile(ctx, cid, record):
                return  # ACS re-dialled the media late and a node took the call over
            await acs_client.hang_up(ctx.acs, ccid)
        await ctx.cluster.ended(cid, outcome, we_hung_up=True)
        ctx.stats.call_ended(outcome)


async def _taken_meanwhile(ctx: AppContext, cid: str, record: dict[str, str]) -> bool:
    assert ctx.cluster is not None
    now = await ctx.cluster.record(cid)
    if now is None or int(now.get("gen", "0")) <= int(record.get("gen", "0")):
        return False
    log.warning("call %s: taken over by %s during the apology: not hanging up", cid, now["owner"])
    return True


async def migrate_calls(ctx: AppContext) -> None:
    """``DRAIN_MODE=migrate``: once the ingress has stopped sending this node new sockets
    (``DRAIN_ROUTE_SETTLE_S``), restart each live call's media streaming at a quiet
    moment, so that ACS dials the media URL again and another node takes the call over.
    Calls still here at ``DRAIN_MIGRATE_DEADLINE_S`` stay for the normal drain."""
    s = ctx.settings
    calls = [c for c in ctx.registry.by_id.values() if c.call_connection_id]
    if not calls:
        return
    log.warning(
        "draining: moving %d call(s) to other nodes after %.0f s",
        len(calls),
        s.drain_route_settle_s,
    )
    await asyncio.sleep(s.drain_route_settle_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + s.drain_migrate_deadline_s
    moving = []
    for call in calls:
        if call.ended.is_set():
            continue
        moving.append(ctx.spawn(_migrate(ctx, call, deadline), name=f"migrate-{call.id}"))
        await asyncio.sleep(1.0 / MIGRATIONS_PER_S)
    if moving:
        await asyncio.wait(moving, timeout=max(0.0, deadline - loop.time()) + 1.0)
    left = ctx.registry.active
    log.warning("draining: migration over, %d call(s) left here", left)


async def _migrate(ctx: AppContext, call: Call, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    with logs.call_context(call):
        relay = call.relay
        while relay is not None and loop.time() < deadline and not call.ended.is_set():
            bridge = relay.bridge
            if bridge.responses.is_idle and bridge.played_out(ctx.clock.media_now()):
                break  # nobody is speaking: the gap will fall in a pause
            await asyncio.sleep(0.05)
            relay = call.relay
        if call.ended.is_set() or loop.time() >= deadline or ctx.acs is None:
            return
        assert call.call_connection_id is not None
        call.migrating = True
        call.log.write("migrating")
        assert ctx.cluster is not None
        await ctx.cluster.update(call.id, migrating=ctx.cluster.name)
        connection = ctx.acs.get_call_connection(call.call_connection_id)
        try:
            await connection.stop_media_streaming(operation_context="voicebridge-migrate")
            # ACS closes this node's socket; only then ask for a new one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.media_closed.wait(), MEDIA_STOP_WAIT_S)
            await connection.start_media_streaming(operation_context="voicebridge-migrate")
        except Exception as exc:
            log.warning("call %s: media restart failed: %s", call.label, type(exc).__name__)
            call.migrating = False
            return
        log.info("call %s: media streaming restarted for another node", call.label)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), max(0.0, deadline - loop.time()))
