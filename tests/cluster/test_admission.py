"""S9 (scale-out.md §6.4): global admission. Three nodes of two calls each, and the app at
its maximum size (``MAX_NODES`` = 3): of 7 overlapping calls, 6 are answered and one is
rejected busy, whichever node its IncomingCall reached."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cluster.conftest import running
from tests.cluster.helpers import answer_requests_for

pytestmark = pytest.mark.asyncio


async def test_s9_the_seventh_call_is_rejected_busy(short_pcm: np.ndarray) -> None:
    env = {"MAX_CONCURRENT_CALLS": "2", "MAX_NODES": "3"}
    async with running("admission", replicas=3, env=env) as cluster:
        calls = await cluster.place_calls(7, short_pcm, stagger_s=0.3)
        await cluster.wait_ended(calls, 90)
        rejects = [
            r for r in cluster.acs.requests if str(r["path"]).endswith("callConnections:reject")
        ]
        assert answer_requests_for(cluster, calls) == 6
        assert len(rejects) == 1
        assert str(rejects[0]["json"].get("callRejectReason", "")).lower() == "busy"
        assert sorted(c.end_reason for c in calls).count("rejected_busy") == 1
