"""A call's life after the answer going wrong: hang-ups while ringing, failed answers and media,
the bridge closing media, stopping the fake mid-call.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from tests.unit.sim.fake_acs.bridgelet import (
    connected_call,
    tone_frame,
    until,
)
from voicebridge.core import acs
from voicebridge.sim.fake_acs import flow


async def test_caller_hangs_up_while_ringing(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    await call.hang_up()
    assert call.end_reason == "caller_hung_up" and call.callbacks_posted == []
    await bridge.answer_call(call.incoming_call_context)
    assert isinstance(bridge.answer_error, HttpResponseError)
    assert bridge.answer_error.status_code == 404


async def test_fail_answer_posts_answer_failed(harness: Any) -> None:
    fake, bridge = await harness()
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"", fail_answer=True)
    await call.wait_ended(5)
    assert call.end_reason == "answer_failed"
    assert bridge.callback_types() == ["AnswerFailed"]
    assert not call.media_connected.is_set()


async def test_media_rejected_posts_media_streaming_failed(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow, "MEDIA_FAILURE_GRACE_S", 0.05)
    monkeypatch.setattr(flow, "MEDIA_FAILED_END_S", 0.05)
    fake, bridge = await harness(media_status=401)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    await call.wait_ended(5)
    assert call.end_reason == "media_failed"
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    failed = next(ev for _, ev in bridge.callbacks if ev["type"].endswith("MediaStreamingFailed"))
    assert failed["data"]["resultInformation"]["subCode"] == 8581
    update = failed["data"]["mediaStreamingUpdate"]
    assert update["mediaStreamingStatusDetails"] == "authenticationFailure"


async def test_bridge_closing_media_then_hanging_up_is_a_clean_hang_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: bridge.ws is not None)
    assert bridge.ws is not None and call.call_connection_id is not None
    await bridge.ws.close()
    await until(lambda: any(w == "media_closed_by_bridge" for _, w, _ in call.timeline))
    await bridge.client.get_call_connection(call.call_connection_id).hang_up(True)
    await call.wait_ended(5)
    assert call.end_reason == "bridge_hung_up"
    assert call.media_close_code == 1000
    assert "MediaStreamingFailed" not in bridge.callback_types()


async def test_bridge_closing_media_and_staying_on_is_a_media_failure(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow, "MEDIA_FAILURE_GRACE_S", 0.05)
    monkeypatch.setattr(flow, "MEDIA_FAILED_END_S", 0.05)
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge)
    await until(lambda: bridge.ws is not None)
    assert bridge.ws is not None
    await bridge.ws.close(code=1011)
    await call.wait_ended(5)
    assert call.end_reason == "media_failed" and call.media_close_code == 1011
    await until(lambda: "CallDisconnected" in bridge.callback_types())
    assert bridge.callback_types()[-2:] == ["MediaStreamingFailed", "CallDisconnected"]


async def test_stop_during_a_live_call_cleans_up(harness: Any) -> None:
    fake, bridge = await harness(fake_kwargs={"hangup_after_audio_s": math.inf})
    call = await connected_call(fake, bridge, tone_frame(5) * 500)
    await bridge.send(acs.audio_data(base64.b64encode(tone_frame(1) * 50).decode()))
    await until(lambda: call.samples_heard > 0)
    await fake.stop()
    assert call.ended.is_set() and call.end_reason == "fake_stopped"
    await until(lambda: bridge.ws_close_code is not None)
    assert bridge.ws_close_code == 1001
    await fake.stop()  # idempotent
