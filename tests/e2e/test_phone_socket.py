"""The phone's socket over real loopback sockets, without a browser: a hostile page.

Junk of every kind mid-call is logged and counted and the call goes on; the page's
hang-up ends it as the caller hanging up, and the bridge says so before it closes.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from voicebridge.core import acs
from voicebridge.phone.command import serving
from voicebridge.phone.socket import MAX_FRAME_CHARS, SUBPROTOCOL, TOKEN_PREFIX

pytestmark = pytest.mark.e2e

SILENCE = base64.b64encode(bytes(640)).decode()


async def test_junk_from_a_page_is_counted_and_the_call_goes_on(tmp_path: Path) -> None:
    async with serving(use_emulator=True, overrides={"log_dir": str(tmp_path)}) as phone:
        ctx = phone.app.state.ctx
        async with httpx.AsyncClient(base_url=phone.base_url) as client:
            r = await client.post(
                "/phone/calls", headers={"authorization": f"Bearer {phone.token}"}
            )
        body = r.json()
        url = phone.base_url.replace("http", "ws") + body["socket"]
        async with websockets.connect(
            url,
            subprotocols=[SUBPROTOCOL, TOKEN_PREFIX + phone.token],
            origin=phone.base_url,
        ) as ws:
            assert ws.subprotocol == SUBPROTOCOL  # the token is never echoed
            await ws.send(acs.audio_metadata_message(sample_rate=16000))
            junk: list[str | bytes] = [
                "not json",
                '{"kind":"phone.nope"}',
                '{"kind":"phone.',
                "x" * (MAX_FRAME_CHARS + 1),
                b"\x00\x01",
                '{"kind":"Weird"}',
                '{"kind":"AudioData","audioData":{"data":"@@@"}}',
            ]
            for message in junk:
                await ws.send(message)
            for _ in range(50):  # a second of silence after it: the call is alive
                await ws.send(acs.audio_data_message(SILENCE))
                await asyncio.sleep(0.02)
            assert ctx.registry.active == 1
            await ws.send('{"kind":"phone.hangup"}')
            received: list[dict[str, Any]] = []
            async for text in ws:
                received.append(json.loads(text))
            assert ws.close_code == 1000 and ws.close_reason == "caller_hung_up"
        for _ in range(100):
            if ctx.registry.finished:
                break
            await asyncio.sleep(0.05)
        summary = ctx.registry.finished[-1]
    kinds = [m.get("kind") or m.get("Kind") for m in received]
    assert kinds[-1] == "phone.ended" and received[-1]["outcome"] == "caller_hung_up"
    assert "phone.call" in kinds  # the side channel said hello
    assert summary["outcome"] == "caller_hung_up"
    counters = ctx.stats.counters
    assert counters["phone_unknown_kinds"] == 1 and counters["phone_malformed"] == 1
    assert counters["phone_oversized"] == 1
    report = summary["report"]["counters"]
    # the rest reached the core, which counted what it could not use
    assert report["acs_malformed"] == 3 and report["acs_unknown_kinds"] == 1
    assert report["acs_frames_in"] == 50
