"""Debug routes for leak hunting: mounted only with ``DEBUG_ENDPOINTS=true``.

Off by default and never set by the shipped Bicep (``tests/infra/test_bicep.py``): the
object census walks every object of the process (tens to hundreds of ms with every live
call's audio held up), and the heap trim and allocator statistics are process-level
operations no caller of a public endpoint should be able to trigger. The load test's
leak check (``voicebridge loadtest --leak-check``, implied by ``--soak`` and ``--fault``)
turns them on in the bridge it starts.
"""

from __future__ import annotations

from fastapi import APIRouter

from voicebridge.deps import CtxDep
from voicebridge.diagnostics import object_census, process_snapshot

router = APIRouter(tags=["debug"])


@router.get("/debug/stats")
async def stats(ctx: CtxDep, trim: bool = False) -> dict[str, object]:
    """``process`` (as in ``/api/stats``) and ``census``: live objects by type, Python's
    allocator, and what the registry's bounded histories of ended calls keep alive
    (:func:`voicebridge.diagnostics.object_census`). ``?trim=1`` then returns the C
    heap's free memory to the OS and adds ``census.heap``: RSS before and after
    (:func:`voicebridge.diagnostics.trim_heap`)."""
    return {
        "process": process_snapshot(),
        "census": object_census(ctx.registry.retained(), trim=trim),
    }
