"""Which bridge node handled what: ``x-voicebridge-node`` on Event Grid deliveries, callbacks
and media handshakes; ``answered_by``; Event Grid redelivery and retries; ``answer_requests``;
the summary.
"""

from __future__ import annotations

import json
import math
import socket
from typing import Any

from tests.unit.sim.fake_acs.bridgelet import connected_call, until


def closed_port_url() -> str:
    """A loopback URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/incoming-call"


async def test_nodes_of_deliveries_media_and_callbacks(harness: Any) -> None:
    fake, bridge = await harness(
        fake_kwargs={"hangup_after_audio_s": math.inf}, node="node-a", answering=[1]
    )
    call = await connected_call(fake, bridge)
    await until(lambda: len(call.callbacks_by) == 3)
    assert call.incoming_deliveries == [{"node": "node-a", "status": 200, "answering": 1}]
    assert call.answered_by == "node-a"
    assert call.media_by == ["node-a"]
    assert call.media_dials == [{"node": "node-a", "status": 101}]
    assert sorted(c["type"] for c in call.callbacks_by) == [
        "CallConnected",
        "MediaStreamingStarted",
        "ParticipantsUpdated",
    ]
    assert all(c["node"] == "node-a" and c["status"] == 200 for c in call.callbacks_by)
    bridge.node = "node-b"  # another node takes the next request
    await call.hang_up()
    assert call.callbacks_by[-1] == {"type": "CallDisconnected", "node": "node-b", "status": 200}
    assert len(call.callbacks_by) == len(call.callbacks_posted)
    summary = call.summary()
    assert json.loads(json.dumps(summary)) == summary  # JSON-ready
    assert summary["answered_by"] == "node-a" and summary["media_by"] == ["node-a"]
    assert summary["incoming_deliveries"] == call.incoming_deliveries
    assert summary["callbacks_by"] == call.callbacks_by
    assert summary["end_reason"] == "caller_hung_up" and summary["media_drops"] == 0


async def test_without_the_header_nodes_are_none(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: len(call.callbacks_by) == 3)
    assert call.incoming_deliveries == [{"node": None, "status": 200, "answering": None}]
    assert call.answered_by is None and call.media_by == [None]
    assert {c["node"] for c in call.callbacks_by} == {None}
    await call.hang_up()


async def test_redelivery_same_event_answering_and_answer_requests(harness: Any) -> None:
    fake, bridge = await harness(answering=[0, 2, 1], node="a", inline_answer=True)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    assert fake.answer_requests == 1 and call.answered_by is None
    bridge.node = "b"
    assert await fake.redeliver_incoming_call(call) == 200  # to place_call's webhook
    bridge.node = "c"
    assert await fake.redeliver_incoming_call(call, times=2) == 200
    assert [(d["node"], d["answering"]) for d in call.incoming_deliveries] == [
        ("a", 0),
        ("b", 2),
        ("c", 1),
        ("c", 1),
    ]
    assert call.answered_by == "b"  # the first delivery whose reply said answering >= 1
    events = [body[0] for _, body in bridge.incoming]
    assert len({e["id"] for e in events}) == 1
    assert {e["data"]["incomingCallContext"] for e in events} == {call.incoming_call_context}
    counts = [headers["aeg-delivery-count"] for headers, _ in bridge.incoming]
    assert counts == ["0", "1", "2", "3"] and call.delivery_count == 4
    # Every delivery made the bridgelet answer: one answer won, three were refused.
    assert fake.answer_requests == 4
    statuses = [r["status"] for r in fake.requests if r["path"].endswith("callConnections:answer")]
    assert statuses == [200, 400, 400, 400]
    await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    assert fake.answer_requests == 5  # counted over every call

    assert await fake.redeliver_incoming_call(call, closed_port_url()) == 0
    assert call.incoming_deliveries[-1] == {"node": None, "status": 0, "answering": None}
    await call.hang_up()


async def test_event_grid_retries_a_delivery_refused_for_a_retry(harness: Any) -> None:
    """503 then 500: delivered again (same event, delivery count one higher) on Event
    Grid's schedule, until the webhook takes it and the call is answered."""
    fake, bridge = await harness(fake_kwargs={"speed": 50.0}, refuse=[503, 500])
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    assert call.incoming_call_status == 503
    await until(call.answered.is_set)
    assert [d["status"] for d in call.incoming_deliveries] == [503, 500, 200]
    counts = [headers["aeg-delivery-count"] for headers, _ in bridge.incoming]
    assert counts == ["0", "1", "2"]
    assert len({body[0]["id"] for _, body in bridge.incoming}) == 1
    await call.hang_up()


async def test_event_grid_does_not_retry_what_retrying_cannot_fix(harness: Any) -> None:
    """401 (like 400, 403, 413) is final: the call rings out unanswered."""
    fake, bridge = await harness(fake_kwargs={"speed": 50.0, "ring_timeout_s": 2.0}, refuse=[401])
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    await call.wait_ended(10)  # rang for 2 s: a retry would have come after 0.2 s
    assert [d["status"] for d in call.incoming_deliveries] == [401]
    assert call.end_reason == "not_answered"
