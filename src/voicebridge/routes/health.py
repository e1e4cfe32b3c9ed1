"""Health and status: liveness, readiness, and a secret-free status summary."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from voicebridge import __version__
from voicebridge.deps import CtxDep, SettingsDep
from voicebridge.diagnostics import process_snapshot
from voicebridge.security import constant_time_equal

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: CtxDep, response: Response) -> dict[str, object]:
    """Readiness: clients are built and the replica takes new calls."""
    if not ctx.ready:
        response.status_code = 503
    return {"ready": ctx.ready, "active_calls": ctx.registry.active}


@router.get("/api/status")
async def status(ctx: CtxDep, s: SettingsDep) -> dict[str, object]:
    """What this replica is configured to do. Never includes secrets."""
    return {
        "version": __version__,
        "configured": {
            "voicelive": bool(s.voicelive_endpoint),
            "acs": s.acs_connection_string is not None or bool(s.acs_endpoint),
        },
        "mode": s.mode,
        "voicelive_endpoint_host": s.voicelive_host,
        "model": s.voicelive_model,
        "agent": {"name": s.agent_name, "project": s.project_name, "version": s.agent_version}
        if s.mode == "agent"
        else None,
        "auth": "api-key" if s.voicelive_api_key is not None else "entra-id",
        "acs_audio_rate": s.acs_audio_rate,
        "voicelive_audio_rate": s.voicelive_audio_rate,
        "active_calls": ctx.registry.active,
        "calls_by_outcome": dict(ctx.stats.outcomes),
        # Per-number profiles (PROFILES_FILE): numbers, mode, model or agent, voice,
        # language, tools, outbound rules. Never a secret.
        "profiles": [profile.public() for profile in ctx.profiles],
        "outbound": {
            "enabled": s.outbound_enabled,
            "auth": [
                name
                for name, on in (
                    ("api-key", s.outbound_api_keys is not None),
                    ("entra-id", bool(s.outbound_entra_tenant_id)),
                )
                if on
            ],
            "rate_per_min": s.outbound_rate_per_min,
            "max_concurrent": s.outbound_max_concurrent,
            "in_progress": ctx.outbound.book.live(),
        },
        "cluster": None
        if ctx.cluster is None
        else {
            "node": ctx.cluster.name,
            "redis": "up" if ctx.cluster.redis_up else "down",
            "calls_owned": len(ctx.cluster.owned),
            "view": ctx.cluster.view.as_metric() if ctx.cluster.view else None,
            "drain_mode": s.drain_mode,
        },
    }


@router.get("/api/stats")
async def stats(ctx: CtxDep) -> dict[str, object]:
    """Relay latency, loop lag and counters summed over finished calls (no call data),
    and ``process``: this process's tasks, open descriptors and Python allocations
    (:func:`voicebridge.diagnostics.process_snapshot`). The object census and the heap
    trim are not here: ``GET /debug/stats`` (:mod:`voicebridge.routes.debug`), only with
    ``DEBUG_ENDPOINTS=true``."""
    snapshot: dict[str, object] = ctx.stats.snapshot(ctx.registry.active)
    snapshot["process"] = process_snapshot()
    return snapshot


@router.get("/api/scale-metric")
async def scale_metric(ctx: CtxDep, request: Request, response: Response) -> dict[str, object]:
    """The scale rule's input (a KEDA ``metrics-api`` rule reads ``activeCalls``): live
    calls across every node, from the nodes' shared heartbeats (this node's own count
    without Redis, or the last value read while Redis is unreachable). Bearer
    ``SCALE_METRIC_TOKEN``; 404 while no token is configured."""
    token = ctx.settings.scale_metric_token
    if token is None:
        response.status_code = 404
        return {"error": "not found"}
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not constant_time_equal(value, token.get_secret_value()):
        response.status_code = 401
        return {"error": "unauthorized"}
    cluster = ctx.cluster
    if cluster is None or cluster.view is None:
        ready = 1 if ctx.ready else 0
        return {
            "activeCalls": ctx.registry.active,
            "readyNodes": ready,
            "nodes": 1,
            "capacity": ctx.settings.max_concurrent_calls * ready,
        }
    return dict(cluster.view.as_metric())
