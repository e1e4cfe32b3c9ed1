"""The bridge's side of the media socket dying (no close frame, 1006): the default media
failure, ``acs-redial-on-drop``, ``acs-silent-on-drop``; what is *not* a drop; the media
subscription state seen through the SDK; ``acs-disconnect-before-media``.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import jwt
import numpy as np
import pytest

from tests.unit.sim.fake_acs.bridgelet import (
    FRAME,
    Bridgelet,
    connected_call,
    tone_frame,
    until,
)
from voicebridge.core import acs
from voicebridge.sim.fake_acs import FakeAcs, FakeCall, flow

INF = {"hangup_after_audio_s": math.inf}


def ramp_pcm(frames: int) -> bytes:
    """Caller audio whose frame ``i`` holds the value ``i + 1``."""
    return np.repeat(np.arange(1, frames + 1, dtype="<i2"), FRAME).tobytes()


async def queue_agent_audio(bridge: Bridgelet, call: FakeCall, seconds: float) -> None:
    """Send ``seconds`` of agent audio (1 s a message) and wait until the fake has it all:
    far more than plays out before the test kills the socket, even on a loaded machine."""
    before = call.received_samples
    second = tone_frame(1000, 50 * FRAME)
    for _ in range(round(seconds)):
        await bridge.send(acs.audio_data(base64.b64encode(second).decode()))
    await until(lambda: call.received_samples == before + round(seconds) * 50 * FRAME)


async def kill(bridge: Bridgelet, call: FakeCall, fault: str | None) -> None:
    """Kill the bridge's side of the current media socket; wait until the fake saw it."""
    drops = call.media_drops
    bridge.abort_media()
    await until(lambda: call.media_drops == drops + 1)
    if fault is not None:
        await until(lambda: [n for _, n in call.faults_fired].count(fault) == drops + 1)


def conserved(call: FakeCall) -> bool:
    """Every sample of bridge audio is heard, flushed, dropped or still queued."""
    flushed = sum(n for _, n in call.stop_audio)
    accounted = call.samples_heard + flushed + call.samples_flushed_by_drop + call.queued_samples
    return accounted == call.received_samples


def media_state(props: Any) -> str:
    return str(props.media_streaming_subscription.state)


async def test_a_drop_without_fault_is_a_media_failure(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow, "MEDIA_FAILURE_GRACE_S", 0.05)
    monkeypatch.setattr(flow, "MEDIA_FAILED_END_S", 0.05)
    fake, bridge = await harness(fake_kwargs=INF)
    call = await connected_call(fake, bridge)
    await kill(bridge, call, None)
    await call.wait_ended(5)
    assert call.end_reason == "media_failed" and call.media_close_code == 1006
    assert call.media_sockets == 1 and call.faults_fired == []
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    failed = next(ev for _, ev in bridge.callbacks if ev["type"].endswith("MediaStreamingFailed"))
    assert failed["data"]["mediaStreamingUpdate"]["mediaStreamingStatusDetails"] == (
        "streamConnectionInterrupted"
    )


async def test_redial_on_drop_opens_a_new_socket(harness: Any) -> None:
    fake, bridge = await harness(
        fake_kwargs={"faults": {"acs-redial-on-drop": None}, "speed": 10.0}, node="n1"
    )
    call = await connected_call(fake, bridge, ramp_pcm(400))  # 8 s of caller audio
    assert call.call_connection_id is not None
    await queue_agent_audio(bridge, call, 30.0)
    await until(lambda: call.frames_sent >= 10)
    first_headers = dict(bridge.media_headers)
    bridge.node = "n2"  # the load balancer sends the re-dial to another node
    await kill(bridge, call, "acs-redial-on-drop")
    conn = bridge.client.get_call_connection(call.call_connection_id)
    await until(lambda: call.media_sockets == 2)
    for key in ("x-ms-call-connection-id", "x-ms-call-correlation-id"):
        assert bridge.media_headers[key] == first_headers[key]
    token = bridge.media_headers["Authorization"].removeprefix("Bearer ")  # signed anew
    jwt.decode(token, fake._key.public_key(), algorithms=["RS256"], audience=fake.resource_id)
    assert media_state(await conn.get_call_properties()) == "active"
    await call.wait_ended(20)
    assert call.end_reason == "caller_hung_up"
    assert call.media_by == ["n1", "n2"] and call.media_drops == 1
    metadata = [m for m in bridge.media_messages if isinstance(acs.parse(m), acs.AudioMetadata)]
    assert len(metadata) == 2
    # The caller kept talking in the gap (0.5 s = 25 frames at least): lost, never sent.
    assert call.caller_samples_lost_in_gap >= 25 * FRAME
    assert call.caller_samples_sent + call.caller_samples_lost_in_gap == 400 * FRAME
    assert call.samples_flushed_by_drop > 0 and conserved(call)
    timeline = call.timeline
    dropped = next(t for t, what, d in timeline if what == "media_dropped")
    redialled = [t for t, what, _ in timeline if what == "media_connected"][1]
    assert redialled - dropped >= flow.RECONNECT_GAP_S - 0.05
    assert bridge.callback_types().count("MediaStreamingStarted") == 1
    assert "MediaStreamingFailed" not in bridge.callback_types()


async def test_redial_on_drop_every_time(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={**INF, "faults": {"acs-redial-on-drop": None}})
    call = await connected_call(fake, bridge, ramp_pcm(500))
    for sockets in (2, 3):
        await until(lambda: call.frames_sent > 0)
        await kill(bridge, call, "acs-redial-on-drop")
        await until(lambda sockets=sockets: call.media_sockets == sockets)  # type: ignore[misc]
    assert call.media_drops == 2 and not call.ended.is_set()
    await call.hang_up()
    assert call.end_reason == "caller_hung_up"
    assert call.caller_samples_sent + call.caller_samples_lost_in_gap <= 500 * FRAME
    assert conserved(call)


async def test_redial_on_drop_gives_up_after_three_dials(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow, "MEDIA_FAILURE_GRACE_S", 0.05)
    monkeypatch.setattr(flow, "MEDIA_FAILED_END_S", 0.05)
    fake, bridge = await harness(
        fake_kwargs={**INF, "faults": {"acs-redial-on-drop": None}}, node="n1"
    )
    call = await connected_call(fake, bridge)
    bridge.media_status = 503  # every node refuses the upgrade from now on
    await kill(bridge, call, "acs-redial-on-drop")
    await call.wait_ended(5)
    assert call.end_reason == "media_failed"
    assert [d["status"] for d in call.media_dials] == [101, 503, 503, 503]
    assert call.media_by == ["n1"] and call.media_sockets == 1
    redials = [d["attempt"] for _, what, d in call.timeline if what == "media_redial"]
    assert redials == [1, 2, 3]
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    failed = next(ev for _, ev in bridge.callbacks if ev["type"].endswith("MediaStreamingFailed"))
    assert failed["data"]["mediaStreamingUpdate"]["mediaStreamingStatusDetails"] == (
        "streamConnectionUnsuccessful"
    )


async def test_a_close_frame_or_a_stop_is_not_a_drop(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow, "MEDIA_FAILURE_GRACE_S", 0.05)
    monkeypatch.setattr(flow, "MEDIA_FAILED_END_S", 0.05)
    faults = {"acs-redial-on-drop": None}
    fake, bridge = await harness(fake_kwargs={**INF, "faults": faults})
    stopped = await connected_call(fake, bridge)
    assert stopped.call_connection_id is not None
    conn = bridge.client.get_call_connection(stopped.call_connection_id)
    await until(lambda: "MediaStreamingStarted" in bridge.callback_types())
    await conn.stop_media_streaming()
    await until(lambda: "MediaStreamingStopped" in bridge.callback_types())
    assert stopped.media_close_code == 1000
    assert media_state(await conn.get_call_properties()) == "inactive"
    closed = await connected_call(fake, bridge)
    assert bridge.ws is not None
    await bridge.ws.close(code=1001)  # a node shutting down cleanly sends a close frame
    await closed.wait_ended(5)
    assert closed.end_reason == "media_failed" and closed.media_close_code == 1001
    await stopped.hang_up()
    for call in (stopped, closed):
        assert call.media_sockets == 1 and call.media_drops == 0 and call.faults_fired == []


async def test_silent_on_drop_keeps_the_call_until_the_bridge_hangs_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={**INF, "faults": {"acs-silent-on-drop": None}})
    call = await connected_call(fake, bridge, ramp_pcm(500))
    assert call.call_connection_id is not None
    await until(lambda: "MediaStreamingStarted" in [k for _, k, _ in call.callbacks_posted])
    await queue_agent_audio(bridge, call, 30.0)
    await kill(bridge, call, "acs-silent-on-drop")
    callbacks = len(bridge.callbacks)
    conn = bridge.client.get_call_connection(call.call_connection_id)
    props = await conn.get_call_properties()
    assert media_state(props) == "inactive" and props.call_connection_state == "connected"
    frames = call.frames_sent
    dropped_at = next(t for t, what, _ in call.timeline if what == "media_dropped")
    await until(lambda: call.now() > dropped_at + 4 * flow.RECONNECT_GAP_S)  # no re-dial
    assert call.media_sockets == 1 and call.frames_sent == frames and not call.ended.is_set()
    assert len(bridge.callbacks) == callbacks  # nothing posted for the drop
    await conn.hang_up(is_for_everyone=True)
    await call.wait_ended(5)
    assert call.end_reason == "bridge_hung_up"
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    assert bridge.callback_types()[callbacks:] == ["CallDisconnected"]
    assert call.samples_flushed_by_drop > 0 and conserved(call)


async def test_silent_on_drop_ends_as_media_dropped_eventually(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow, "SILENT_DROP_END_S", 2.0)
    fake, bridge = await harness(fake_kwargs={**INF, "faults": {"acs-silent-on-drop": None}})
    call = await connected_call(fake, bridge)
    await until(lambda: "MediaStreamingStarted" in [k for _, k, _ in call.callbacks_posted])
    callbacks = len(bridge.callbacks)
    await kill(bridge, call, "acs-silent-on-drop")
    await call.wait_ended(5)
    assert call.end_reason == "media_dropped"
    assert len(bridge.callbacks) == callbacks and call.media_sockets == 1


def test_redial_and_silent_cannot_be_combined() -> None:
    with pytest.raises(ValueError, match="cannot be combined"):
        FakeAcs(faults={"acs-redial-on-drop": None, "acs-silent-on-drop": None})


@pytest.mark.parametrize("refused", [410, None], ids=["refused", "accepted"])
async def test_disconnect_before_media(harness: Any, refused: int | None) -> None:
    faults = {"acs-disconnect-before-media": None}
    fake, bridge = await harness(fake_kwargs={**INF, "faults": faults}, media_status=refused)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=ramp_pcm(50))
    await call.wait_ended(5)
    assert call.end_reason == "caller_hung_up"
    assert bridge.callback_types() == ["CallConnected", "CallDisconnected"]
    _, disconnected = bridge.callbacks[1]
    assert "remote participant" in disconnected["data"]["resultInformation"]["message"]
    timeline = call.timeline
    posted = next(i for i, (_, w, d) in enumerate(timeline) if d.get("type") == "CallDisconnected")
    dialled = next(i for i, (_, what, _) in enumerate(timeline) if what == "media_connecting")
    assert posted < dialled and bridge.media_headers  # dialled anyway, after CallDisconnected
    assert call.media_refused is (refused is not None)
    assert call.media_refused_status == refused
    assert call.frames_sent == 0 and call.media_sockets == 0
    if refused is None:
        await until(lambda: bridge.ws_close_code is not None)
        assert bridge.ws_close_code == 1000 and bridge.media_messages == []
    assert [n for _, n in call.faults_fired] == ["acs-disconnect-before-media"]
