"""``GET /metrics``: the service's metrics in the Prometheus text format.

What is exported, and how histograms are folded into ``le`` buckets, is documented once
in :mod:`voicebridge.metrics`. Like ``/api/stats`` it carries no call data (no ids,
numbers or transcripts) — only counts by outcome, direction, error code and guard reason.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from voicebridge import metrics
from voicebridge.deps import CtxDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def prometheus(ctx: CtxDep) -> Response:
    """Prometheus scrape target (text exposition format 0.0.4)."""
    body = metrics.render(ctx.stats, ctx.registry.active)
    return Response(body, media_type=metrics.CONTENT_TYPE)
