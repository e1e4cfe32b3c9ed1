"""Waits and lookups the cluster scenarios share. Every wait is bounded (liveness only):
no assertion here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from voicebridge.sim.cluster import Cluster
from voicebridge.sim.fake_acs import FakeCall

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout_s: float, what: str
) -> T:
    """Call ``probe`` until ``ok(result)``; the result, or AssertionError naming ``what``
    and the last result after ``timeout_s`` wall seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s; last: {result!r}")
        await asyncio.sleep(0.1)


async def mid_call(calls: Iterable[FakeCall], call_s: float, timeout_s: float = 30.0) -> None:
    """Until every call has streamed ``call_s`` seconds of caller audio (or ended)."""
    calls = list(calls)

    async def progress() -> list[float]:
        return [c.frames_sent * 0.02 if not c.ended.is_set() else 1e9 for c in calls]

    await eventually(progress, lambda p: min(p) >= call_s, timeout_s, f"calls {call_s} s in")


def requests_of(cluster: Cluster, call: FakeCall) -> list[dict[str, Any]]:
    """The Call Automation requests the bridges made for ``call``, in order."""
    return [
        r for r in cluster.acs.requests if r.get("call_connection_id") == call.call_connection_id
    ]


def actions_of(cluster: Cluster, call: FakeCall) -> list[str]:
    """``call``'s requests as short names: ``get``, ``hangup`` (DELETE), ``terminate``,
    ``play``, ``startMediaStreaming``, ...; answers are not included."""
    out = []
    for r in requests_of(cluster, call):
        path = str(r["path"])
        if ":" in path.rsplit("/", 1)[-1]:
            out.append(path.rsplit(":", 1)[-1])
        elif r["method"] == "DELETE":
            out.append("hangup")
        elif r["method"] == "GET":
            out.append("get")
    return out


def hung_up_by_bridge(cluster: Cluster, call: FakeCall) -> bool:
    """Whether a bridge asked ACS to end ``call`` (DELETE or ``:terminate``)."""
    return any(a in ("hangup", "terminate") for a in actions_of(cluster, call))


def answer_requests_for(cluster: Cluster, calls: Iterable[FakeCall]) -> int:
    """``callConnections:answer`` requests that name one of ``calls``."""
    contexts = {c.incoming_call_context for c in calls}
    return sum(
        1
        for r in cluster.acs.requests
        if str(r["path"]).endswith("callConnections:answer")
        and isinstance(r.get("json"), dict)
        and r["json"].get("incomingCallContext") in contexts
    )


def callback_nodes(call: FakeCall) -> set[str]:
    """The nodes that answered ``call``'s callbacks (the fake's ``callbacks_by``)."""
    return {str(cb["node"]) for cb in call.callbacks_by if cb.get("node")}


def media_nodes(call: FakeCall) -> list[str]:
    """The node of each media socket of ``call``, in order (the fake's ``media_by``)."""
    return [str(n) for n in call.media_by if n is not None]


async def owners_by_node(cluster: Cluster, calls: Iterable[FakeCall]) -> dict[str, list[FakeCall]]:
    """Node -> the calls it owns now (every call must have an owner: bounded wait)."""
    calls = list(calls)
    owned = await cluster.wait_owned(calls)
    out: dict[str, list[FakeCall]] = {}
    for call in calls:
        out.setdefault(owned[call.correlation_id], []).append(call)
    return out


async def ended(cluster: Cluster, calls: Iterable[FakeCall], timeout_s: float) -> dict[str, Any]:
    """Wait until every call ended at the fake and has the bridge's final outcome;
    correlation id -> outcome."""
    calls = list(calls)
    await cluster.wait_ended(calls, timeout_s)
    return await cluster.wait_outcomes(calls, 15.0)


def assert_outcomes(
    cluster: Cluster, outcomes: dict[str, Any], expected: tuple[str, ...] = ("caller_hung_up",)
) -> None:
    """Every call in ``outcomes`` (correlation id -> final outcome) ended as one of
    ``expected``; otherwise AssertionError describing each call that did not."""
    by_id = {c.correlation_id: c for c in cluster.calls}
    bad = []
    for corr, outcome in outcomes.items():
        if outcome in expected:
            continue
        call = by_id.get(corr)
        bad.append(
            {
                "call": corr[:8],
                "outcome": outcome,
                "fake_end": call.end_reason if call else None,
                "answered_by": call.answered_by if call else None,
                "media_by": call.media_by if call else None,
                "requests": actions_of(cluster, call) if call else None,
            }
        )
    assert not bad, f"{len(bad)} of {len(outcomes)} calls did not end as {expected}: {bad}"
