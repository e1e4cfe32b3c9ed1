"""Health and status: liveness, readiness, and a secret-free status summary."""

from __future__ import annotations

from fastapi import APIRouter, Response

from voicebridge import __version__
from voicebridge.deps import CtxDep, SettingsDep
from voicebridge.stats import object_census, process_snapshot

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
    }


#: Set to ``1`` (Settings.stats_census) to let ``GET /api/stats?objects=1`` add an object
#: census (:func:`voicebridge.stats.object_census`). Off by default: the census walks
#: every object of the process, which a public endpoint must not let anyone trigger.
CENSUS_ENV = "VOICEBRIDGE_STATS_CENSUS"


@router.get("/api/stats")
async def stats(ctx: CtxDep, objects: bool = False, trim: bool = False) -> dict[str, object]:
    """Relay latency, loop lag and counters summed over finished calls (no call data),
    and ``process``: this process's tasks, open descriptors and Python allocations
    (:func:`voicebridge.stats.process_snapshot`).

    ``?objects=1`` adds ``census`` (live objects by type, and what the registry's
    bounded history of ended calls keeps alive) when :data:`CENSUS_ENV` is ``1``, and
    ``&trim=1`` first returns the C heap's free memory to the OS and reports RSS before
    and after (:func:`voicebridge.stats.trim_heap`); otherwise both are ignored."""
    snapshot: dict[str, object] = ctx.stats.snapshot(ctx.registry.active)
    snapshot["process"] = process_snapshot()
    if objects and ctx.settings.stats_census:
        snapshot["census"] = object_census(ctx.registry.retained(), trim=trim)
    return snapshot
